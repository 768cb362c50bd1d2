"""AWQ scaling: folded into the layer before, the model computes what it computed before (checked in
llama.cpp, grouped-query attention included); the search never makes a layer's output error worse."""

from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T

from kecil.compress import awq, ggml_kernels
from kecil.compress.calibration import LayerStats
from kecil.compress.quant_types import quant_type
from kecil.compress.quantize import QuantizeConfig, calibrate
from kecil.compress.requantize import requantize
from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf
from tests.models.formats.test_hf_to_gguf import llama_cpp_logits

IDS = [5, 17, 42, 99, 3, 250, 77, 8, 19, 300, 12, 64]


# llama: 4 query heads on 2 KV heads; qwen2: q/k/v biases; gemma3: norms stored as 1 + w, post-norms;
# phi3: fused qkv and gate_up, so only the norm-fed groups can be scaled.
GROUPS_PER_LAYER = {"llama": 4, "qwen2": 4, "gemma3": 4, "phi3": 2}


@pytest.fixture(scope="module", params=list(GROUPS_PER_LAYER))
def tiny_source(request, tiny_hf_model, tmp_path_factory):
    folder = tiny_hf_model(request.param)
    source = convert_hf_to_gguf(folder, tmp_path_factory.mktemp("awq") / "tiny.gguf", out_type="f32")
    statistics = calibrate(QuantizeConfig(model=str(folder), to="q8_0", output=source.parent / "unused.gguf", calib_chunks=1))
    return request.param, source, statistics


def test_folded_scales_keep_the_function(tiny_source, tmp_path, monkeypatch):
    arch, source, statistics = tiny_source
    # Force a strong scaling of every group (alpha 1 only, float groups searched too) and write
    # f16: the weights change a lot, the function must not. Any mistake in folding (a wrong head
    # order, a bias left unscaled, a norm stored as 1 + w) shows as a large change in the logits.
    monkeypatch.setitem(awq.SEARCHES, "awq", awq.Search(alphas=(1.0,)))
    monkeypatch.setattr(awq, "_searchable", lambda group, types, stats: stats.get(group.matrices[0]) is not None)
    seen = []
    requantize(source, tmp_path / "awq.gguf", quant_type("f16"), stats=statistics.stats, method="awq", scale_progress=lambda d, t: seen.append(t))
    assert seen and seen[-1] == 2 * GROUPS_PER_LAYER[arch]  # per layer: q/k/v, gate/up, down, output
    expected, _ = llama_cpp_logits(source, IDS)
    scaled, _ = llama_cpp_logits(tmp_path / "awq.gguf", IDS)
    assert np.abs(scaled - expected).max() < 5e-3 * max(1.0, np.abs(expected).max())
    from gguf import GGUFReader

    norm = next(t for t in GGUFReader(tmp_path / "awq.gguf").tensors if t.name == "blk.0.attn_norm.weight")
    original = next(t for t in GGUFReader(source).tensors if t.name == "blk.0.attn_norm.weight")
    assert not np.allclose(np.asarray(norm.data), np.asarray(original.data), rtol=0.05)  # the scales really were folded


def test_search_never_worsens_the_layer_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 256)).astype(np.float32) * rng.exponential(size=256).astype(np.float32) ** 2
    w = rng.standard_normal((64, 256)).astype(np.float32)
    stats = LayerStats((x * x).mean(0), (x.T @ x) / len(x), len(x))
    s = awq._search({"m": w}, {"m": T.Q4_K}, stats, stats.importance, None, threads=1)

    def error(column_s):
        raw = ggml_kernels.quantize(w * column_s, T.Q4_K, stats.importance / column_s**2)
        delta = w - ggml_kernels.dequantize(raw, T.Q4_K, 256) / column_s
        return float(np.sum((delta @ stats.hessian) * delta))

    assert s is not None  # with such skewed activations some scaling helps
    assert error(s) < error(np.ones(256, np.float32))


def test_bounded_search_keeps_the_scale_ratio_and_still_helps():
    # kecil's awq bounds s's spread (awq.SEARCHES): columns quiet on the calibration text
    # keep most of their precision for text whose activations differ (bench/quantize.py).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 256)).astype(np.float32) * rng.exponential(size=256).astype(np.float32) ** 2
    w = rng.standard_normal((64, 256)).astype(np.float32)
    stats = LayerStats((x * x).mean(0), (x.T @ x) / len(x), len(x))
    unbounded = awq._search({"m": w}, {"m": T.Q4_K}, stats, stats.importance, None, threads=1, search=awq.Search())
    bounded = awq._search({"m": w}, {"m": T.Q4_K}, stats, stats.importance, None, threads=1, search=awq.Search(max_ratio=4.0))
    assert unbounded is not None and unbounded.max() / unbounded.min() > 4.0  # the bound is not trivially met
    assert bounded is not None and bounded.max() / bounded.min() <= 4.0 * (1 + 1e-5)
