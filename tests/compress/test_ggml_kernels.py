"""kecil's quantizers are ggml's own: the bytes decode the same through gguf-py's independent numpy
reference, match it bit for bit where gguf-py can also encode, and round-trip within each type's error."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGMLQuantizationType as T

from kecil.compress import ggml_kernels

# (type, largest acceptable RMS round-trip error for standard-normal weights)
TYPES = [(T.Q8_0, 0.01), (T.Q6_K, 0.03), (T.Q5_K, 0.05), (T.Q5_0, 0.06), (T.Q4_K, 0.1), (T.Q4_0, 0.12), (T.Q3_K, 0.2), (T.Q2_K, 0.4)]


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)


@pytest.mark.parametrize(("qtype", "max_rms"), TYPES, ids=[t.name for t, _ in TYPES])
def test_round_trip_matches_reference_decoder(weights, qtype, max_rms):
    raw = ggml_kernels.quantize(weights, qtype)
    assert raw.shape == (64, ggml_kernels.row_size(qtype, 512))
    ours = ggml_kernels.dequantize(raw, qtype, 512)
    reference = quants.dequantize(raw, qtype).reshape(weights.shape)  # gguf-py's numpy decoder
    np.testing.assert_array_equal(ours, reference)
    rms = float(np.sqrt(np.mean((ours - weights) ** 2)))
    assert rms < max_rms, f"{qtype.name} round-trip RMS {rms:.4f}"


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q5_0, T.BF16], ids=lambda t: t.name)
def test_bytes_equal_gguf_py_encoder(weights, qtype):
    np.testing.assert_array_equal(ggml_kernels.quantize(weights, qtype), quants.quantize(weights, qtype).reshape(64, -1))


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q3_K, T.Q2_K, T.Q4_0], ids=lambda t: t.name)
def test_importance_lowers_the_weighted_error(weights, qtype):
    # Columns with large importance should be rounded more carefully when ggml is told about them.
    importance = np.random.default_rng(1).exponential(size=512).astype(np.float32) ** 3
    plain = ggml_kernels.dequantize(ggml_kernels.quantize(weights, qtype), qtype, 512)
    weighted = ggml_kernels.dequantize(ggml_kernels.quantize(weights, qtype, importance), qtype, 512)
    error = lambda q: float(np.sum(importance * (q - weights) ** 2))  # noqa: E731
    assert error(weighted) < error(plain)


def test_threads_give_the_same_bytes():
    w = np.random.default_rng(2).standard_normal((512, 256)).astype(np.float32)
    np.testing.assert_array_equal(ggml_kernels.quantize(w, T.Q4_K, threads=2), ggml_kernels.quantize(w, T.Q4_K))


def test_rows_that_do_not_fit_blocks_are_refused():
    with pytest.raises(ValueError, match="blocks of 256"):
        ggml_kernels.quantize(np.zeros((2, 576), np.float32), T.Q4_K)
