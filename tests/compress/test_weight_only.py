"""Torch weight-only int8/int4 quantization: close to the float model, saved and reloaded exactly,
and a base PEFT can put LoRA adapters on (QLoRA-style)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kecil.compress.weight_only import QuantizedLinear, load_quantized, quantize_weights, save_quantized
from kecil.errors import ConfigError

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 77, 8, 19, 300]])


def load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def logits(model):
    with torch.no_grad():
        return model(IDS).logits[0]


@pytest.mark.parametrize(("bits", "group_size", "tolerance"), [(8, 64, 0.01), (8, 32, 0.01), (8, 128, 0.01), (4, 32, 0.15), (4, 64, 0.2), (4, 128, 0.25)])
def test_close_to_the_float_model(tiny_hf_model, bits, group_size, tolerance):
    folder = tiny_hf_model("llama")
    expected = logits(load(folder))
    model = quantize_weights(load(folder), bits=bits, group_size=group_size)
    # q k v o gate up down per layer; with groups of 128 only down_proj (128 inputs, the others 64) splits into groups
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == (2 * 7 if group_size <= 64 else 2)
    got = logits(model)
    relative = float((got - expected).norm() / expected.norm())
    assert relative < tolerance, relative


def test_save_and_load_round_trip(tiny_hf_model, tmp_path):
    model = quantize_weights(load(tiny_hf_model("gemma3")), bits=4, group_size=32)
    before = logits(model)
    save_quantized(model, tmp_path / "q")
    again = load_quantized(tmp_path / "q")
    torch.testing.assert_close(logits(again), before)
    float_bytes = sum(p.numel() * 4 for p in load(tiny_hf_model("gemma3")).model.layers.parameters())
    codes = sum(m.codes.numel() for m in again.modules() if isinstance(m, QuantizedLinear))
    assert codes < float_bytes / 6  # int4 codes: a byte per two weights


def test_generates(tiny_hf_model):
    model = quantize_weights(load(tiny_hf_model("qwen2")), bits=8, group_size=64)
    out = model.generate(IDS, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape[1] == IDS.shape[1] + 5


def test_lora_on_a_quantized_base(tiny_hf_model):
    from peft import LoraConfig, get_peft_model

    model = quantize_weights(load(tiny_hf_model("llama")), bits=4, group_size=64)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    loss = peft_model(IDS, labels=IDS).loss
    loss.backward()
    trained = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)


def test_bad_settings(tiny_hf_model):
    with pytest.raises(ConfigError, match="pick"):
        quantize_weights(load(tiny_hf_model("llama")), bits=3)
    with pytest.raises(ConfigError, match="pick"):
        quantize_weights(load(tiny_hf_model("llama")), group_size=48)


def test_quantize_folder_runs_in_the_torch_backend(tiny_hf_model, tmp_path):
    # The user's path: `kecil quantize MODEL --to int4 --group-size 64 -o DIR`, then load_model(DIR) / `kecil generate DIR`.
    from kecil.compress.quantize import QuantizeConfig, quantize
    from kecil.infer.generation import GenerationConfig
    from kecil.infer.load import load_model

    folder = tiny_hf_model("llama")
    out = tmp_path / "int4"
    result = quantize(QuantizeConfig(model=str(folder), to="int4", group_size=64, output=out, report=False))
    assert result.output == out and result.type == "int4-g64" and out.is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name != "int4"]  # the temporary folder is gone
    expected = logits(load(folder))
    with load_model(str(out)) as model:
        assert model.name == "torch"  # a folder runs through transformers
        got = model.logits(IDS[0].tolist())
        reply = model.generate("The cat sat on the", GenerationConfig(temperature=0, max_tokens=6))
    assert reply.usage.completion_tokens == 6
    relative = float(np.linalg.norm(got - expected.numpy()) / np.linalg.norm(expected.numpy()))
    assert relative < 0.2, relative


def test_cli_writes_and_generates_a_weight_only_folder(tiny_hf_model, tmp_path):
    from tests.compress.test_quantize import kecil

    out = tmp_path / "int8"
    done = kecil("quantize", str(tiny_hf_model("qwen2")), "--to", "int8", "--group-size", "32", "-o", str(out), "--no-report", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["type"] == "int8-g32"
    done = kecil("generate", str(out), "The cat sat", "--backend", "torch", "--max-tokens", "5", "--temperature", "0", "--raw")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_weight_only_settings_are_checked(tiny_hf_model, tmp_path):
    from kecil.compress.quantize import QuantizeConfig, quantize

    with pytest.raises(ConfigError, match="folder"):
        QuantizeConfig(model="smollm2-135m", to="int4", output=tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match="calibration"):
        QuantizeConfig(model="smollm2-135m", to="int4", output=tmp_path / "x", method="gptq")
    with pytest.raises(ConfigError, match="48"):
        quantize(QuantizeConfig(model=str(tiny_hf_model("qwen2")), to="int4", group_size=48, output=tmp_path / "y", report=False))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        quantize(QuantizeConfig(model=str(tiny_hf_model("qwen2")), to="int8", output=tmp_path / "full", report=False))
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
