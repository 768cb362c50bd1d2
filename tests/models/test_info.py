"""inspect_model() against independent truth, and the memory estimate's arithmetic."""

from __future__ import annotations

import pytest

from kecil.errors import ConfigError
from kecil.models.info import ModelInfo, describe, estimate_memory, format_bytes, format_count, inspect_model
from kecil.models.reference import resolve
from tests.models.helpers import assert_helpful


@pytest.fixture(scope="module")
def smol() -> ModelInfo:
    return inspect_model(resolve())


@pytest.fixture(scope="module")
def smol_reader(smol):
    """gguf-py's own reader over the same file: slow (~2 s) but an independent source of truth."""
    import gguf

    return gguf.GGUFReader(smol.ref.path)


def test_default_model_facts(smol):
    assert smol.architecture == "llama"
    assert smol.quantization == "Q4_1"
    assert (smol.context_length, smol.n_layers, smol.n_kv_heads) == (8192, 30, 3)
    assert (smol.hidden_size, smol.n_heads, smol.head_dim, smol.vocab_size) == (576, 9, 64, 49152)
    assert "<|im_start|>" in smol.chat_template
    assert smol.file_size == smol.ref.path.stat().st_size


def test_default_model_parameters_match_gguf_reader(smol, smol_reader):
    truth = sum(int(t.n_elements) for t in smol_reader.tensors)
    assert abs(smol.parameters - truth) <= 0.01 * truth
    assert smol.parameters == pytest.approx(134.5e6, rel=0.01)


def test_special_tokens_match_gguf_reader(smol, smol_reader):
    tokens = smol_reader.fields["tokenizer.ggml.tokens"]
    def token(key):
        index = int(smol_reader.fields[key].contents())
        return tokens.contents(index)
    assert smol.bos_token == token("tokenizer.ggml.bos_token_id") == "<|im_start|>"
    assert smol.eos_token == token("tokenizer.ggml.eos_token_id") == "<|im_end|>"
    assert smol.add_bos is bool(smol_reader.fields["tokenizer.ggml.add_bos_token"].contents())


def test_kv_cache_follows_the_formula(smol):
    estimate = estimate_memory(smol, 8192, "llamacpp")
    # 2 (K and V) × layers × context × kv heads × head dim × 2 bytes (f16)
    assert estimate.kv_cache_bytes == 2 * 30 * 8192 * 3 * 64 * 2
    torch_estimate = estimate_memory(smol, 8192, "torch")
    assert torch_estimate.kv_cache_bytes == 2 * estimate.kv_cache_bytes  # float32
    assert torch_estimate.weights_bytes == smol.parameters * 4
    assert estimate.weights_bytes == smol.file_size


@pytest.mark.parametrize("backend", ["llamacpp", "torch"])
def test_memory_grows_with_context_and_adds_up(smol, backend):
    estimates = [estimate_memory(smol, n, backend) for n in (256, 2048, 4096, 8192)]
    totals = [e.total_bytes for e in estimates]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    for e in estimates:
        assert e.total_bytes == e.weights_bytes + e.kv_cache_bytes + e.compute_bytes + e.overhead_bytes
        assert min(e.weights_bytes, e.kv_cache_bytes, e.compute_bytes, e.overhead_bytes) > 0
        assert e.backend == backend


@pytest.mark.parametrize("context", [0, -5])
def test_context_below_one_is_a_config_error(smol, context):
    with pytest.raises(ConfigError) as caught:
        estimate_memory(smol, context, "llamacpp")
    assert_helpful(caught.value, "context length", str(context))


def test_unknown_backend_and_llamacpp_on_a_folder_are_config_errors(smol, tiny_hf_model):
    with pytest.raises(ConfigError) as caught:
        estimate_memory(smol, 512, "onnx")
    assert "llamacpp, torch" in str(caught.value)
    folder = inspect_model(resolve(str(tiny_hf_model("llama"))))
    with pytest.raises(ConfigError) as caught:
        estimate_memory(folder, 512, "llamacpp")
    assert_helpful(caught.value, "GGUF", "torch backend")


def test_describe_rows(smol):
    rows = dict(describe(smol, estimate_memory(smol, 4096, "llamacpp")))
    assert rows["Architecture"] == "llama"
    assert rows["Parameters"] == "134.5M"
    assert rows["File size"] == "93.8 MiB"
    assert rows["Quantization"] == "Q4_1"
    assert rows["Context length"] == "8192 tokens"
    assert rows["RAM needed at 4096 tokens (llamacpp)"].endswith("an estimate)")
    assert "RAM needed" not in " ".join(label for label, _ in describe(smol))


@pytest.mark.parametrize(("n", "text"), [(134_515_008, "134.5M"), (1_234_567_890, "1.2B"), (107_136, "107.1K"), (12, "12")])
def test_format_count(n, text):
    assert format_count(n) == text


def test_format_bytes():
    assert (format_bytes(98_362_432), format_bytes(2048), format_bytes(3 * 1024**3), format_bytes(5)) == (
        "93.8 MiB", "2.0 KiB", "3.0 GiB", "5 B",
    )


def tiny_hf_folder_facts(arch, tiny_hf_model, tmp_path):  # a row of tests/test_architectures.py
    built = tiny_hf_model.get(arch)
    info = inspect_model(resolve(str(built.path)))
    assert info.architecture == arch
    assert info.parameters == built.parameters  # sum(p.numel() for p in model.parameters())
    assert (info.n_layers, info.hidden_size, info.n_heads, info.n_kv_heads, info.head_dim) == (2, 64, 4, 2, 16)
    assert (info.vocab_size, info.context_length, info.quantization) == (512, 512, "float32")
    assert info.file_size == (built.path / "model.safetensors").stat().st_size
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert (info.bos_token, info.eos_token, info.add_bos) == ("<|im_start|>", "<|im_end|>", False)
    torch_estimate = estimate_memory(info, 512, "torch")
    assert torch_estimate.weights_bytes == built.parameters * 4
    assert torch_estimate.kv_cache_bytes == 2 * 2 * 512 * 2 * 16 * 4


def _tied_state_dict(folder):
    """The gemma3 tiny weights with lm_head.weight written out as well, sharing the embedding."""
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def test_tied_lm_head_written_twice_is_counted_once(tiny_hf_model, tmp_path):
    import shutil

    from safetensors.torch import save_file

    built = tiny_hf_model.get("gemma3")
    folder = shutil.copytree(built.path, tmp_path / "gemma3")
    state = _tied_state_dict(folder)
    state["lm_head.weight"] = state["lm_head.weight"].clone()  # safetensors refuses shared memory
    save_file(state, folder / "model.safetensors")
    assert inspect_model(resolve(str(folder))).parameters == built.parameters


def test_pytorch_bin_weights_are_counted_with_shared_tensors_once(tiny_hf_model, tmp_path):
    import shutil

    import torch

    built = tiny_hf_model.get("gemma3")
    folder = shutil.copytree(built.path, tmp_path / "gemma3-bin")
    torch.save(_tied_state_dict(folder), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    info = inspect_model(resolve(str(folder)))
    assert info.parameters == built.parameters
    assert info.file_size == (folder / "pytorch_model.bin").stat().st_size


def test_multimodal_gemma3_config_with_defaults_left_out(tiny_hf_model, tmp_path):
    """Gemma 3 checkpoints nest a text_config that omits default values; transformers fills them in."""
    import json
    import shutil

    folder = shutil.copytree(tiny_hf_model("gemma3"), tmp_path / "gemma3-mm")
    text = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "max_position_embeddings"}
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text}))
    info = inspect_model(resolve(str(folder)))
    assert info.architecture == "gemma3"
    assert info.context_length == 131_072  # Gemma3TextConfig's default
    assert (info.n_layers, info.hidden_size, info.head_dim) == (2, 64, 16)


def test_special_tokens_fall_back_to_config_ids(tiny_hf_model, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(tiny_hf_model("qwen2"), tmp_path / "qwen2")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("bos_token", "eos_token"):
        tokenizer_config.pop(key)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    info = inspect_model(resolve(str(folder)))
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")
