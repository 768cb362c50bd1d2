"""Registering ggml's CPU backend for plain llama-cpp-python, the way kecil's runtime does.

kecil's llama-cpp-python build ships every x86 CPU variant as a loadable library, installed in
site-packages/bin where ggml's own search does not look: a bare `llama_cpp.Llama(...)` finds no
backend and fails to load any model. The baseline therefore loads the variant itself, chosen
by the same rule as kecil (ggml's score, AMX skipped unless KECIL_LLAMA_CPU_VARIANT names it),
so both engines run the same kernels.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

AMX_VARIANTS = frozenset({"sapphirerapids"})  # SIGILL on this VM's multi-token batches
VARIANT_ENV = "KECIL_LLAMA_CPU_VARIANT"


def _name(path: Path) -> str:
    return path.name[len("libggml-cpu-") : -len(".so")]


def _score(path: Path) -> int:
    import _ctypes

    lib = ctypes.CDLL(str(path))
    try:
        fn = getattr(lib, "ggml_backend_score", None)
        if fn is None:
            return 0
        fn.restype = ctypes.c_int
        return fn()
    finally:
        _ctypes.dlclose(lib._handle)


def register_cpu_backend(llama_cpp) -> None:
    """Load the best CPU variant into the libggml that `llama_cpp` uses, if none is registered."""
    package_dir = Path(llama_cpp.__file__).parent
    # The very file libllama links against (its soname), or ggml would be loaded twice.
    ggml = ctypes.CDLL(str(package_dir / "lib" / "libggml.so.0"))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    if ggml.ggml_backend_reg_count():
        return
    paths = sorted(p for d in (package_dir / "lib", package_dir.parent / "bin") for p in d.glob("libggml-cpu-*.so"))
    wanted = os.environ.get(VARIANT_ENV)
    if wanted:
        paths = [p for p in paths if _name(p) == wanted]
    else:
        paths = [p for p in paths if _name(p) not in AMX_VARIANTS]
    scored = [(_score(p), p) for p in paths]
    score, best = max(scored, default=(0, None))
    if not score or not ggml.ggml_backend_load(os.fsencode(best)):
        raise RuntimeError(f"no usable ggml CPU variant among {[p.name for p in paths]}")
