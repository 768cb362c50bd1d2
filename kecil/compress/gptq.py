"""GPTQ error compensation on top of llama.cpp's own block quantizers (https://arxiv.org/abs/2210.17323).

GPTQ quantizes a weight matrix a few columns at a time and moves each step's rounding error
onto the columns not yet quantized, in the direction that least changes the layer's output on
the calibration activations (using the inverse of H = mean(x x^T)). Here a "step" is one ggml
quantization block (32 columns for q4_0/q5_0/q8_0, a 256-column super-block for k-quants): the
block is quantized by `ggml_quantize_chunk` exactly as llama.cpp would, with an importance
vector, so the file stays a plain llama.cpp GGUF; only the weights it rounds have been adjusted.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType

from kecil.compress import ggml_kernels


def inverse_hessian_factor(hessian: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The upper Cholesky factor U of H^-1 (H^-1 = U^T U) after dampening, and the columns never active."""
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    for _ in range(6):  # a near-singular H (few calibration tokens) gets more damping until it factors
        try:
            lower = np.linalg.cholesky(h)
            break
        except np.linalg.LinAlgError:
            h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    else:
        raise np.linalg.LinAlgError("the calibration Hessian is not positive definite even after damping")
    inv_lower = np.linalg.inv(lower)
    h_inv = inv_lower.T @ inv_lower
    upper = np.linalg.cholesky(h_inv).T
    return upper, dead


def quantize_gptq(
    weight: np.ndarray, hessian: np.ndarray, qtype: GGMLQuantizationType, importance: np.ndarray | None, *, damp: float = 0.01,
    factor: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Quantize `weight` (rows, cols) block by block with error compensation; returns ggml bytes (rows, row_bytes).

    `factor` is `inverse_hessian_factor(hessian, damp)` when the caller already has it (matrices
    that share an input, like q/k/v, share it)."""
    w = np.array(weight, dtype=np.float32)
    rows, cols = w.shape
    block = ggml_kernels.block_size(qtype)
    upper, dead = factor if factor is not None else inverse_hessian_factor(hessian, damp)
    w[:, dead] = 0.0
    upper32 = upper.astype(np.float32)
    block_bytes = ggml_kernels.row_size(qtype, block)
    out = np.empty((rows, cols // block * block_bytes), dtype=np.uint8)
    for start in range(0, cols, block):
        stop = start + block
        chunk = np.ascontiguousarray(w[:, start:stop])
        weights = None if importance is None else importance[start:stop]
        raw = ggml_kernels.quantize(chunk, qtype, weights)
        out[:, start // block * block_bytes : stop // block * block_bytes] = raw
        if stop < cols:
            error = chunk - ggml_kernels.dequantize(raw, qtype, block)
            # Solve error = E @ U_bb for E, then spread E over the later columns through U.
            scaled = np.linalg.solve(upper[start:stop, start:stop].T, error.T.astype(np.float64)).T.astype(np.float32)
            w[:, stop:] -= scaled @ upper32[start:stop, stop:]
    return out
