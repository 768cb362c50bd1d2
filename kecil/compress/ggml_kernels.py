"""llama.cpp's own quantizers and dequantizers (ggml's C kernels), called through ctypes.

kecil never re-implements a k-quant encoder: the bytes it writes come from the very function
`llama-quantize` calls (`ggml_quantize_chunk`, with an optional per-column importance vector),
loaded from the libggml-base that llama-cpp-python ships, so a kecil GGUF is bit-compatible
with llama.cpp by construction. Dequantization uses ggml's `to_float` for the same reason.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType

from kecil.errors import BackendError

_lock = threading.Lock()
_initialised: set[int] = set()


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits in ggml.h (field order matters; only the leading fields are read)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def _library_path() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("llama-cpp-python is not installed, and kecil quantizes with its ggml library: run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libggml-base.so.0"
    if not path.exists():
        path = path.with_name("libggml-base.so")
    if not path.exists():
        raise BackendError(f"ggml's base library is missing from {path.parent}: reinstall llama-cpp-python with `make setup`")
    return path


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_library_path()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]  # fmt: skip
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_validate_row_data.restype = ctypes.c_bool
    lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def _ensure_init(qtype: GGMLQuantizationType) -> None:
    # ggml_quantize_init fills shared lookup tables on first use of a type; after that,
    # ggml_quantize_chunk is thread-safe and ctypes releases the GIL around it.
    with _lock:
        if int(qtype) not in _initialised:
            _lib().ggml_quantize_init(int(qtype))
            _initialised.add(int(qtype))


def row_size(qtype: GGMLQuantizationType, n_per_row: int) -> int:
    """Bytes one row of `n_per_row` values takes in `qtype`."""
    return int(_lib().ggml_row_size(int(qtype), n_per_row))


def block_size(qtype: GGMLQuantizationType) -> int:
    """Values per quantization block (32 for q4_0/q8_0, 256 for the k-quants, 1 for floats)."""
    return int(_lib().ggml_blck_size(int(qtype)))


def requires_imatrix(qtype: GGMLQuantizationType) -> bool:
    return bool(_lib().ggml_quantize_requires_imatrix(int(qtype)))


def quantize(
    values: np.ndarray, qtype: GGMLQuantizationType, importance: np.ndarray | None = None, *, threads: int = 1
) -> np.ndarray:
    """Quantize a 2-D float array row by row into `qtype`; returns the raw bytes as (rows, row_bytes) uint8.

    `importance` (one weight per column, e.g. the mean squared activation from an imatrix) tells
    ggml which columns' errors matter most, exactly as `llama-quantize --imatrix` passes it.
    """
    src = np.ascontiguousarray(values, dtype=np.float32)
    if src.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {src.shape}")
    n_rows, n_per_row = src.shape
    if n_per_row % block_size(qtype):
        raise ValueError(f"rows of {n_per_row} values do not split into {qtype.name} blocks of {block_size(qtype)}")
    imatrix = None
    if importance is not None:
        imatrix = np.ascontiguousarray(importance, dtype=np.float32)
        if imatrix.shape != (n_per_row,):
            raise ValueError(f"importance has shape {imatrix.shape}, expected ({n_per_row},)")
    out = np.empty((n_rows, row_size(qtype, n_per_row)), dtype=np.uint8)
    _ensure_init(qtype)
    weights = None if imatrix is None else imatrix.ctypes.data

    def run(start: int, stop: int) -> None:
        if stop > start:
            _lib().ggml_quantize_chunk(
                int(qtype), src[start:stop].ctypes.data, out[start:stop].ctypes.data, 0, stop - start, n_per_row, weights
            )

    threads = max(1, min(threads, n_rows // 64))
    if threads == 1:
        run(0, n_rows)
    else:
        from concurrent.futures import ThreadPoolExecutor

        bounds = np.linspace(0, n_rows, threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, bounds[:-1], bounds[1:]))
    if not _lib().ggml_validate_row_data(int(qtype), out.ctypes.data, out.nbytes):
        raise BackendError(f"ggml produced invalid {qtype.name} data (NaN or Inf in the weights?)")
    return out


def dequantize(data: np.ndarray, qtype: GGMLQuantizationType, n_per_row: int) -> np.ndarray:
    """Raw `qtype` bytes (rows of `row_size(qtype, n_per_row)`) back to float32, shape (rows, n_per_row)."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    n_rows = raw.size // row_size(qtype, n_per_row)
    if qtype == GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(n_rows, n_per_row).copy()
    if qtype == GGMLQuantizationType.F16:
        return raw.view(np.float16).reshape(n_rows, n_per_row).astype(np.float32)
    traits = _lib().ggml_get_type_traits(int(qtype)).contents
    if not traits.to_float:
        raise BackendError(f"ggml cannot dequantize type {qtype.name}")
    out = np.empty((n_rows, n_per_row), dtype=np.float32)
    _TO_FLOAT(traits.to_float)(raw.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out
