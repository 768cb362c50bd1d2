"""QLoRA: LoRA trained on kecil's int4/int8 weight-only base learns, and its adapter works on the float base."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kecil.errors import ConfigError
from kecil.infer.quantized_linear import QuantizedLinear
from kecil.infer.load import load_model
from kecil.tune.lora import LINEAR_TARGETS, TuneConfig, quantize_base, tune
from tests.tune.helpers import memorisable_chat, write_jsonl


def test_the_quantized_base_keeps_no_float_weight_for_backward(tiny_hf_model):
    """Autograd must not hold each layer's dequantized weight until backward (that would be the
    whole float model again); the input gradient is still exact."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = quantize_base(AutoModelForCausalLM.from_pretrained(tiny_hf_model("llama")), 4, 32)
    shapes = {(m.out_features, m.in_features) for m in model.modules() if isinstance(m, QuantizedLinear)}
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=list(LINEAR_TARGETS)))
    saved = []
    ids = torch.tensor([[5, 40, 77, 120, 33, 250]])
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert saved and not shapes & set(saved)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)  # A has none while B is 0

    layer = next(m for m in model.modules() if isinstance(m, QuantizedLinear))
    x = torch.randn(2, 3, layer.in_features, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    recomputed = x.grad.clone()
    x.grad = None
    (torch.nn.functional.linear(x, layer.weight.detach(), layer.bias) ** 2).sum().backward()
    assert torch.allclose(recomputed, x.grad, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_learns_and_its_adapter_works_on_the_float_base(tiny_hf_model, tmp_path, bits):
    records = memorisable_chat(8)
    data = write_jsonl(tmp_path / "facts.jsonl", records)
    base = str(tiny_hf_model("llama"))
    result = tune(
        TuneConfig(model=base, data=data, output=tmp_path / "out", epochs=12, lr=1e-2, batch_size=1, max_length=64,
                   val_split=0, dropout=0.0, save_every=1000, target_modules=LINEAR_TARGETS + ("lm_head",),
                   base_bits=bits, base_group_size=32, threads=1),
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert max(losses[-3:]) < 0.5 * losses[0], losses
    assert json.loads((tmp_path / "out" / "kecil_tune.json").read_text())["base_bits"] == bits

    def answer_logprob(**kw) -> float:
        """Mean log-probability of the trained answers after their questions, on the float base."""
        from kecil.infer.scoring import token_logprobs

        total, count = 0.0, 0
        with load_model(base, backend="torch", threads=1, **kw) as model:
            for r in records:
                prompt = model.chat_prompt_ids(r["messages"][:1])
                ids = prompt + model.tokenize(r["messages"][1]["content"], add_bos=False)
                scores = token_logprobs(model, ids)[len(prompt) - 1:]
                total, count = total + float(scores.sum()), count + len(scores)
        return total / count

    # The adapter trained against int weights lifts the answers' likelihood on the float model too,
    # as far as it lowered the training loss (loss = -mean log-probability).
    base_score, adapted_score = answer_logprob(), answer_logprob(adapter=tmp_path / "out")
    assert adapted_score - base_score > 0.5 * (losses[0] - losses[-1]), (base_score, adapted_score, losses)


def test_base_bits_and_group_size_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="4 or 8"):
        TuneConfig(model="x", data=tmp_path / "d.jsonl", output=tmp_path / "o", base_bits=3)
    with pytest.raises(ConfigError, match="32, 64 or 128"):
        TuneConfig(model="x", data=tmp_path / "d.jsonl", output=tmp_path / "o", base_bits=4, base_group_size=48)


def test_cli_base_bits(tiny_hf_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(4))
    done = subprocess.run([sys.executable, "-m", "kecil", "tune", str(tiny_hf_model("llama")), str(data), "-o", str(tmp_path / "o"),
                           "--epochs", "1", "--val-split", "0", "--base-bits", "8", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o" / "kecil_tune.json").read_text())["base_bits"] == 8
