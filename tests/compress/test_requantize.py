"""Without calibration, kecil's GGUF is llama.cpp's: the same tensor types, the same file size and the
same tensor bytes as `llama_model_quantize` (llama-quantize's library call) writes for the same source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from kecil.compress.quant_types import QUANT_TYPES, quant_type
from kecil.compress.requantize import requantize
from kecil.infer.llamacpp_runtime import import_llama_cpp
from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf


def llama_cpp_quantize(source: Path, output: Path, name: str) -> Path:
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(quant_type(name).file_type)
    params.nthread = 2
    params.allow_requantize = True
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), params) == 0
    return output


def assert_same_file(ours: Path, theirs: Path, *, same_bytes: bool) -> None:
    a, b = GGUFReader(ours), GGUFReader(theirs)
    assert [(t.name, t.tensor_type) for t in a.tensors] == [(t.name, t.tensor_type) for t in b.tensors]
    assert ours.stat().st_size == theirs.stat().st_size
    if same_bytes:
        for x, y in zip(a.tensors, b.tensors):
            np.testing.assert_array_equal(np.asarray(x.data), np.asarray(y.data), err_msg=x.name)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_hf_model, tmp_path_factory) -> Path:
    return convert_hf_to_gguf(tiny_hf_model("llama"), tmp_path_factory.mktemp("src") / "tiny.gguf", out_type="f32")


@pytest.mark.parametrize("name", list(QUANT_TYPES))
def test_tiny_model_matches_llama_quantize(tiny_gguf, tmp_path, name):
    requantize(tiny_gguf, tmp_path / "ours.gguf", quant_type(name), method="none")
    llama_cpp_quantize(tiny_gguf, tmp_path / "theirs.gguf", name)
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", same_bytes=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["q4_k_m"])
def test_bundled_model_layout_matches_llama_quantize(tmp_path, name):
    # SmolLM2's 576-wide rows do not split into 256-blocks: this exercises the fallbacks and the
    # layer-dependent mixes (30 layers) on a real model.
    from kecil.models.reference import resolve

    source = resolve("smollm2-135m").path
    requantize(source, tmp_path / "ours.gguf", quant_type(name), method="none", threads=2)
    llama_cpp_quantize(source, tmp_path / "theirs.gguf", name)
    assert_same_file(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", same_bytes=False)


def test_metadata_is_carried_over(tiny_gguf, tmp_path):
    requantize(tiny_gguf, tmp_path / "q.gguf", quant_type("q4_0"), method="none")
    source, result = GGUFReader(tiny_gguf), GGUFReader(tmp_path / "q.gguf")
    for key in ("tokenizer.chat_template", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "llama.block_count"):
        assert result.get_field(key).contents() == source.get_field(key).contents(), key
    assert result.get_field("general.file_type").contents() == int(quant_type("q4_0").file_type)
