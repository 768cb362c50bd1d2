"""kecil's fused LoRA forward computes what peft's does: outputs, gradients, dropout statistics."""

from __future__ import annotations

import copy

import pytest
import torch

from kecil.tune.fused_lora import keep_mask, use_fused_lora

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_pair(tiny_hf_model, dropout: float, dtype=torch.float32):
    """The same tiny llama with the same LoRA twice: once with peft's forward, once fused."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_hf_model("llama"), dtype=dtype)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGETS, task_type="CAUSAL_LM"))
    with torch.no_grad():  # B starts at zero, which would hide a wrong B in the forward
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    fused = copy.deepcopy(model)
    assert use_fused_lora(fused) == 2 * len(TARGETS)  # the tiny llama has two layers
    return model, fused


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_forward_and_gradients_equal_peft_without_dropout(tiny_hf_model):
    model, fused = _peft_pair(tiny_hf_model, dropout=0.0)
    ids = torch.randint(3, 60, (2, 12))
    loss, grads = _loss_and_grads(model, ids)
    fused_loss, fused_grads = _loss_and_grads(fused, ids)
    assert fused_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert grads.keys() == fused_grads.keys() and len(grads) == 4 * len(TARGETS)
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_dropout_trains_and_evaluates_like_peft(tiny_hf_model):
    model, fused = _peft_pair(tiny_hf_model, dropout=0.3)
    ids = torch.randint(3, 60, (2, 12))
    model.eval(), fused.eval()  # eval: dropout off on both sides, outputs equal
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    fused.train()
    torch.manual_seed(1)
    first, grads = _loss_and_grads(fused, ids)
    torch.manual_seed(1)
    again, grads_again = _loss_and_grads(fused, ids)  # the mask comes from torch's seeded generator
    assert first.item() == again.item()
    assert all(torch.equal(grads[n], grads_again[n]) for n in grads)
    torch.manual_seed(2)
    other, _ = _loss_and_grads(fused, ids)
    assert other.item() != first.item()  # a different mask: dropout is really on
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_keep_mask_keeps_the_stated_share_and_keeps_the_expectation():
    torch.manual_seed(0)
    keep, share = keep_mask(torch.Size((512, 1000)), 0.05)
    assert keep.dtype == torch.uint8 and keep.shape == (512, 1000) and set(keep.unique().tolist()) == {0, 1}
    assert share == pytest.approx(0.95, abs=1 / 65536)
    assert keep.float().mean().item() == pytest.approx(share, abs=0.002)
    # Independent positions: neighbours are not dropped together more often than by chance.
    dropped = keep == 0
    both = (dropped[:, 1:] & dropped[:, :-1]).float().mean().item()
    assert both == pytest.approx((1 - share) ** 2, abs=0.0015)
    # Odd sizes (not a multiple of the four masks a 64-bit draw holds) work too.
    assert keep_mask(torch.Size((3, 7)), 0.5)[0].shape == (3, 7)


def test_a_bfloat16_base_gives_float32_gradients_close_to_float32(tiny_hf_model):
    model, _ = _peft_pair(tiny_hf_model, dropout=0.0)
    bf16, fused_bf16 = _peft_pair(tiny_hf_model, dropout=0.0, dtype=torch.bfloat16)
    for module in (bf16, fused_bf16):  # peft keeps adapters in float32 over a bfloat16 base
        assert all(p.dtype == torch.float32 for n, p in module.named_parameters() if "lora_" in n)
    ids = torch.randint(3, 60, (2, 12))
    _, grads = _loss_and_grads(model, ids)
    _, fused_grads = _loss_and_grads(fused_bf16, ids)
    for name in grads:
        assert fused_grads[name].dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(fused_grads[name].flatten(), grads[name].flatten(), dim=0)
        assert cosine > 0.98, name


def test_merged_or_disabled_adapters_fall_back_to_peft(tiny_hf_model):
    model, fused = _peft_pair(tiny_hf_model, dropout=0.0)
    ids = torch.randint(3, 60, (1, 8))
    model.eval(), fused.eval()
    with torch.no_grad():
        with fused.disable_adapter(), model.disable_adapter():
            torch.testing.assert_close(fused(input_ids=ids).logits, model(input_ids=ids).logits)
        adapted = model(input_ids=ids).logits
        fused.merge_adapter()
        torch.testing.assert_close(fused(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-5)
