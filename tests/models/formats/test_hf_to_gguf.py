"""Every supported architecture converts from a Hugging Face folder to a GGUF that llama.cpp loads and
that computes what transformers computes on the folder: the same tokens, the same logits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from gguf import GGUFReader

from kecil.errors import ConfigError, InvalidModelError, UnsupportedArchitectureError
from kecil.infer.llamacpp_runtime import import_llama_cpp
from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf
from kecil.models.formats.hf_vocab import bpe_pre_tokenizer
from tests.models.helpers import assert_helpful

TEXT = "The cat sat on the warm mat by the door. Hello, how are you today? Two plus two is four."


def transformers_logits(folder, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_logits(path, ids):
    llama_cpp = import_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)]), llm.tokenize(TEXT.encode(), add_bos=False, special=True)
    finally:
        llm.close()


def converts_to_gguf_computing_what_transformers_computes(arch, tiny_hf_model, tmp_path):  # a row of tests/test_architectures.py
    from transformers import AutoTokenizer

    folder = tiny_hf_model(arch)
    path = convert_hf_to_gguf(folder, tmp_path / f"{arch}.gguf", out_type="f32")
    ids = AutoTokenizer.from_pretrained(folder)(TEXT, add_special_tokens=False)["input_ids"]
    expected = transformers_logits(folder, ids)
    got, llama_ids = llama_cpp_logits(path, ids)
    assert llama_ids == ids  # the vocabulary and pre-tokenizer came over
    assert np.abs(got - expected).max() < 2e-3 * max(1.0, np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).all()
    reader = GGUFReader(path)
    template = (folder / "chat_template.jinja").read_text()
    assert reader.get_field("tokenizer.chat_template").contents() == template
    assert not list(tmp_path.glob(".*.part"))


def test_f16_and_q8_0_outputs(tiny_hf_model, tmp_path):
    folder = tiny_hf_model("qwen2")
    for out_type, ggml_type in (("f16", "F16"), ("q8_0", "Q8_0"), ("bf16", "BF16")):
        reader = GGUFReader(convert_hf_to_gguf(folder, tmp_path / f"{out_type}.gguf", out_type=out_type))
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == ggml_type
        assert types["blk.0.attn_norm.weight"] == "F32"


def test_progress_is_reported(tiny_hf_model, tmp_path):
    seen = []
    convert_hf_to_gguf(tiny_hf_model("llama"), tmp_path / "x.gguf", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == len(seen)


def test_bpe_pre_tokenizer_names():
    assert bpe_pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]}
    assert bpe_pre_tokenizer({"pre_tokenizer": smollm}) == "smollm"


def test_unsupported_architecture(tiny_hf_model, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(tiny_hf_model("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(UnsupportedArchitectureError) as error:
        convert_hf_to_gguf(folder, tmp_path / "out.gguf")
    assert_helpful(error.value, "bert")
    assert not (tmp_path / "out.gguf").exists()


def test_corrupt_weights_leave_no_output(tiny_hf_model, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_hf_model("llama"), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InvalidModelError) as error:
        convert_hf_to_gguf(folder, tmp_path / "out.gguf")
    assert_helpful(error.value)
    assert not (tmp_path / "out.gguf").exists() and not list(tmp_path.glob(".*.part"))


def test_unknown_out_type(tiny_hf_model, tmp_path):
    with pytest.raises(ConfigError, match="choose one of"):
        convert_hf_to_gguf(tiny_hf_model("llama"), tmp_path / "x.gguf", out_type="q4_k_m")
