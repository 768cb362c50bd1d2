"""A LoRA training step keeps every tensor on the model's device: caught on a CPU-only machine by
running it with the model on PyTorch's meta device (tests/same_device.py), so a tensor made on the
CPU raises as it would on a GPU; the real GPU run is marked `gpu`."""

from __future__ import annotations

import pytest
import torch

from tests.same_device import same_device
from tests.tune.helpers import memorisable_chat, write_jsonl


def _lora_model(tiny_hf_model, dropout: float):
    """The tiny llama as kecil's tune sets it up: a bfloat16 base with its float32 head, LoRA on every linear, fused."""
    from kecil.infer.torch_backend import load_transformers
    from kecil.models.reference import resolve
    from kecil.tune.base_model import to_bfloat16_base
    from kecil.tune.lora import LINEAR_TARGETS, TuneConfig, _attach_lora
    from kecil.tune.packed_attention import use_packed_attention

    ref = resolve(str(tiny_hf_model("llama")))
    model, tokenizer = load_transformers(ref)
    model = to_bfloat16_base(model)
    assert use_packed_attention(model, 512)
    config = TuneConfig(model=str(ref.path), data="d.jsonl", output="o", dropout=dropout)
    return _attach_lora(model, config, list(LINEAR_TARGETS), ref.name), tokenizer


def _micro_batch(tokenizer):
    from kecil.tune.data import Example
    from kecil.tune.packing import MicroBatch, collate

    ids = [tokenizer(text)["input_ids"] for text in ("the cat sat on the mat", "a small dog ran")]
    examples = [Example(ids=i, trained=[True] * len(i), line=n) for n, i in enumerate(ids)]
    return collate(MicroBatch(rows=[[0, 1]]), examples, pad_id=0)


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_a_training_step_makes_no_tensor_off_the_models_device(tiny_hf_model, dropout):
    """Forward (fused LoRA with its dropout mask, the float32 vocabulary projection), loss and
    backward, with the model on meta: the dropout mask drawn on the CPU, or a float32 head weight
    left behind when the model moves, raises here (issue 18's two crashes on CUDA)."""
    from kecil.tune.training import token_loss_sum

    from torch.fx.experimental import _config as fx_config

    model, tokenizer = _lora_model(tiny_hf_model, dropout)
    input_ids, position_ids, predict, _ = _micro_batch(tokenizer)
    # Loss at every position: a boolean mask's selection has no size on meta unless it is all True.
    predict = torch.ones_like(predict)
    targets = torch.zeros(predict.numel(), dtype=torch.long)
    model.to("meta")
    with same_device(), fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        loss = token_loss_sum(model, input_ids, position_ids, predict, targets)
        loss.backward()
    assert loss.device.type == "meta"
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and p.grad.device.type == "meta" for p in trained)


def test_packed_attention_plans_each_forward_pass_once_from_the_cpu_position_ids(tiny_hf_model, monkeypatch):
    """Not once per layer, and not by reading the position ids back from the device (on a GPU,
    a wait per layer): the plan comes from the CPU copy the batch was built in."""
    from kecil.tune import packed_attention
    from kecil.tune.training import token_loss_sum

    model, tokenizer = _lora_model(tiny_hf_model, 0.05)
    plans, real = [], packed_attention._Plan
    monkeypatch.setattr(packed_attention, "_Plan", lambda ids: plans.append(ids) or real(ids))
    batch = _micro_batch(tokenizer)
    token_loss_sum(model, *batch)
    assert len(plans) == 1 and plans[0] is batch[1]  # the tiny llama has two layers


def test_the_float32_head_moves_with_the_model_and_is_not_saved(tiny_hf_model):
    model, _ = _lora_model(tiny_hf_model, 0.0)
    head = model.get_output_embeddings()
    assert head.float32_projection.weight.dtype == torch.float32 and head.weight.dtype == torch.bfloat16
    assert not any("float32_projection" in name for name in model.state_dict())
    model.to("meta")
    assert head.float32_projection.weight.device.type == "meta"


def test_tune_on_a_cuda_device_that_is_not_there_fails_in_one_line(tiny_hf_model, tmp_path):
    from tests.cli_helpers import assert_clean_error, kecil

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(4))
    done = kecil("tune", str(tiny_hf_model("llama")), str(data), "-o", str(tmp_path / "a"), "--device", "cuda")
    assert_clean_error(done, "--device cuda", "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "a" / "adapter_config.json").exists()


@pytest.mark.gpu
def test_tune_trains_on_the_gpu_in_bfloat16_with_default_settings(tiny_hf_model, tmp_path):
    import json

    from kecil.tune.lora import TuneConfig, tune

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(8))
    result = tune(TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "a", max_steps=5, device="cuda"))
    assert result.steps == 5 and result.train_loss is not None
    summary = json.loads((tmp_path / "a" / "kecil_tune.json").read_text())
    assert summary["precision"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
