"""Loading llama.cpp with the right CPU kernels for this machine, chosen at run time.

kecil builds llama-cpp-python with every x86 CPU variant of ggml as a loadable library
(GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS, see the Makefile): one install runs on any x86-64
CPU and still uses AVX2/AVX-512 where present. scikit-build installs those variant libraries
into site-packages/bin, where ggml's own search (next to the python executable, or the working
directory) does not look, so kecil points ggml at them before llama-cpp-python initialises.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

from kecil.errors import BackendError

_ready = False


def _variant_dirs(package_dir: Path) -> list[Path]:
    site = package_dir.parent
    return [package_dir / "lib", site / "bin"]


def cpu_variants(package_dir: Path) -> list[Path]:
    """The CPU-variant libraries of the installed build (libggml-cpu-haswell.so, ...)."""
    return sorted(p for d in _variant_dirs(package_dir) for p in d.glob("libggml-cpu-*.so"))


# ggml's AMX kernels died with SIGILL (`tilezero` in an OpenMP worker) on every prompt longer
# than one token on a Sapphire Rapids VM that advertises AMX: the CPU flag alone does not prove
# the tiles work. The AVX-512 variants run there at the same decode speed, so AMX variants are
# only used when asked for by name.
UNSAFE_BY_DEFAULT = frozenset({"sapphirerapids"})
VARIANT_ENV = "KECIL_LLAMA_CPU_VARIANT"


def variant_name(path: Path) -> str:
    return path.name[len("libggml-cpu-") : -len(".so")]


def variant_score(path: Path) -> int:
    """ggml's own verdict on a variant: 0 if this CPU lacks a feature it needs, higher is better."""
    import _ctypes

    lib = ctypes.CDLL(str(path))
    try:
        score = getattr(lib, "ggml_backend_score", None)
        if score is None:
            return 0
        score.restype = ctypes.c_int
        return score()
    finally:
        _ctypes.dlclose(lib._handle)


def choose_cpu_variant(paths: list[Path]) -> Path:
    """The best variant this CPU supports (ggml's score), skipping AMX unless KECIL_LLAMA_CPU_VARIANT names it."""
    if not paths:
        raise BackendError("llama.cpp was built without CPU variant libraries (libggml-cpu-*.so); reinstall it with `make setup`")
    wanted = os.environ.get(VARIANT_ENV)
    if wanted:
        chosen = [p for p in paths if variant_name(p) == wanted]
        if not chosen:
            names = ", ".join(variant_name(p) for p in paths)
            raise BackendError(f"{VARIANT_ENV}={wanted} is not a built CPU variant; choose one of: {names}")
        return chosen[0]
    scored = [(variant_score(p), p) for p in paths if variant_name(p) not in UNSAFE_BY_DEFAULT]
    best_score, best = max(scored, default=(0, None))
    if not best_score:
        raise BackendError(
            "none of llama.cpp's CPU variants supports this CPU; use --backend torch, or set "
            f"{VARIANT_ENV} to one of: {', '.join(variant_name(p) for p in paths)}"
        )
    return best


_log = logging.getLogger("kecil.llamacpp")
_log_callback = None  # kept referenced: llama.cpp calls it from C for the life of the process


def _route_logs(llama_cpp) -> None:
    """Send llama.cpp's own log lines to the `kecil.llamacpp` logger at debug level.

    llama.cpp writes to stderr even for events that are not errors for kecil (it logs Gemma 3's
    sliding-window cache choice at error level); real failures reach the user as KecilErrors,
    so its lines are only shown when asked for (`logging.getLogger("kecil.llamacpp")`).
    """
    global _log_callback

    @llama_cpp.llama_log_callback
    def forward(level, text, user_data):
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(text.decode("utf-8", errors="replace").rstrip("\n"))

    _log_callback = forward
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


def import_llama_cpp():
    """Import llama_cpp with a CPU backend registered; a clear error if that is impossible."""
    global _ready
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        raise BackendError(
            f"llama-cpp-python is not usable here ({exc}); run `make setup` to build it, or use --backend torch"
        ) from None
    if _ready:
        return llama_cpp
    _route_logs(llama_cpp)
    package_dir = Path(llama_cpp.__file__).parent
    # The wheel holds copies (not symlinks) of libggml.so*: open the very file libllama links
    # against (its NEEDED soname), or ggml would be loaded twice and libllama see no backend.
    ggml = ctypes.CDLL(str(package_dir / "lib" / "libggml.so.0"))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    if ggml.ggml_backend_reg_count() == 0:  # a build with the CPU backend linked in needs nothing
        variant = choose_cpu_variant(cpu_variants(package_dir))
        if not ggml.ggml_backend_load(os.fsencode(variant)):
            raise BackendError(f"llama.cpp could not load its CPU library {variant}; reinstall it with `make setup`")
    _ready = True
    return llama_cpp


def loaded_cpu_variant() -> str | None:
    """Which CPU variant the running process loaded (e.g. 'haswell'), from the process map."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        name = line.rsplit("/", 1)[-1]
        if name.startswith("libggml-cpu-") and name.endswith(".so"):
            return name[len("libggml-cpu-") : -len(".so")]
    return None
