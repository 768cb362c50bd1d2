"""Packed attention (one sequence per example) gives transformers' block-diagonal SDPA results."""

from __future__ import annotations

import pytest
import torch

from kecil.tune.data import Example
from kecil.tune.packed_attention import ATTENTION_NAME, use_packed_attention
from kecil.tune.packing import MicroBatch, collate, pack_rows


def _examples(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [Example(torch.randint(10, 400, (n,), generator=generator).tolist(), [False] * (n // 3) + [True] * (n - n // 3)) for n in lengths]


def _loss_and_grads(model, batch, examples):
    model.zero_grad(set_to_none=True)
    input_ids, position_ids, predict, targets = collate(batch, examples, pad_id=0)
    out = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=predict, use_cache=False)
    loss = torch.nn.functional.cross_entropy(out.logits.float(), targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("lengths", [(12, 7, 20, 5, 9, 15, 3), (40, 4, 3)], ids=["many-short", "one-long"])
def test_packed_attention_equals_masked_sdpa(tiny_hf_model, arch, lengths):
    from transformers import AutoModelForCausalLM

    examples = _examples(lengths)
    rows = pack_rows([len(e.ids) for e in examples], range(len(examples)), max_length=48)
    batch = MicroBatch(rows)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model(arch), attn_implementation="sdpa", dtype=torch.float32)
    expected, expected_grads = _loss_and_grads(model, batch, examples)
    assert use_packed_attention(model, max_length=48)
    assert model.config._attn_implementation == ATTENTION_NAME
    loss, grads = _loss_and_grads(model, batch, examples)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6)


def test_the_comparison_would_catch_attention_across_examples(tiny_hf_model):
    """The same rows with the example boundaries removed give another loss: the test above can fail."""
    from transformers import AutoModelForCausalLM

    examples = _examples((12, 7, 20, 5))
    batch = MicroBatch(pack_rows([len(e.ids) for e in examples], range(4), max_length=48))
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model("llama"), dtype=torch.float32)
    use_packed_attention(model, max_length=48)
    packed, _ = _loss_and_grads(model, batch, examples)
    joined = [Example([t for e in examples for t in e.ids], [f for e in examples for f in e.trained])]
    whole, _ = _loss_and_grads(model, MicroBatch([[0]]), joined)
    assert packed.item() != pytest.approx(whole.item(), rel=1e-5)  # the tolerance of the test above


def test_bfloat16_base_computes_attention_in_float32_close_to_float32(tiny_hf_model):
    from transformers import AutoModelForCausalLM

    examples = _examples((12, 7, 20, 5, 9))
    batch = MicroBatch(pack_rows([len(e.ids) for e in examples], range(5), max_length=32))
    losses = []
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(tiny_hf_model("llama"), dtype=dtype)
        use_packed_attention(model, max_length=32)
        losses.append(_loss_and_grads(model, batch, examples)[0].item())
    assert losses[1] == pytest.approx(losses[0], rel=0.02)


def test_attention_it_cannot_express_is_left_alone(tiny_hf_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model("gemma3"), attn_implementation="sdpa")
    window = model.config.get_text_config().sliding_window
    assert not use_packed_attention(model, max_length=window + 1)  # rows longer than the window
    assert model.config._attn_implementation == "sdpa"
