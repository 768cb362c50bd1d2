"""Packing: several examples in one row must give each the loss it has alone (no attention leak)."""

from __future__ import annotations

import pytest

from kecil.tune.data import Example
from kecil.tune.packing import MicroBatch, collate, pack_rows, plan_epochs


def test_rows_never_overflow_and_keep_every_example_once():
    lengths = [5, 9, 3, 7, 7, 2, 10, 1]
    rows = pack_rows(lengths, range(len(lengths)), max_length=10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 5  # 44 tokens need at least 5 rows of 10


def test_plan_is_a_fixed_function_of_the_seed():
    examples = [Example(list(range(n)), [False] + [True] * (n - 1)) for n in (4, 6, 3, 8, 5, 2, 7)]
    one = plan_epochs(examples, epochs=3, rows_per_batch=2, max_length=10, seed=1)
    assert one == plan_epochs(examples, epochs=3, rows_per_batch=2, max_length=10, seed=1)
    assert one != plan_epochs(examples, epochs=3, rows_per_batch=2, max_length=10, seed=2)
    seen = [i for batch in one for row in batch.rows for i in row]
    assert sorted(seen) == sorted(list(range(7)) * 3)


def test_rows_are_padded_to_a_multiple_of_16_that_carries_no_loss():
    examples = [Example(list(range(1, n + 1)), [False] + [True] * (n - 1)) for n in (5, 13)]
    input_ids, position_ids, predict, targets = collate(MicroBatch([[0, 1]]), examples, pad_id=0)
    assert input_ids.shape == (1, 32)
    assert input_ids[0, 18:].eq(0).all() and not predict[0, 17:].any()
    assert len(targets) == 4 + 12 == int(predict.sum())
    assert position_ids[0, 18:].tolist() == list(range(14))  # the padding is a block of its own
    assert collate(MicroBatch([[0, 1]]), examples, pad_id=0, width_multiple=1)[0].shape == (1, 18)


def _per_example_losses(model, examples, batch, pad_id):
    import torch
    import torch.nn.functional as F

    input_ids, position_ids, predict, targets = collate(batch, examples, pad_id)
    with torch.no_grad():
        out = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=predict, use_cache=False)
    losses = F.cross_entropy(out.logits, targets, reduction="none")
    # targets come row by row, example by example, in `batch` order
    counts = [sum(examples[i].trained[1:]) for row in batch.rows for i in row]
    return [float(chunk.mean()) for chunk in torch.split(losses, counts)]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(tiny_hf_model, arch, attention):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model(arch), attn_implementation=attention).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = (12, 7, 20, 5, 9, 15)
    examples = []
    for n in lengths:
        ids = torch.randint(10, 400, (n,), generator=generator).tolist()
        examples.append(Example(ids, [False] * (n // 3) + [True] * (n - n // 3)))
    alone = [_per_example_losses(model, examples, MicroBatch([[i]]), pad_id=0)[0] for i in range(len(examples))]
    rows = pack_rows(lengths, range(len(examples)), max_length=40)
    assert any(len(row) > 1 for row in rows)
    packed_batch = MicroBatch(rows)
    packed = _per_example_losses(model, examples, packed_batch, pad_id=0)
    order = [i for row in rows for i in row]
    for loss, i in zip(packed, order):
        assert loss == pytest.approx(alone[i], rel=1e-4, abs=1e-5), (i, loss, alone[i])


def test_the_check_would_catch_a_leak(tiny_hf_model):
    """Positions that run on across examples let them attend to each other: losses change."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model("llama")).eval()
    examples = [Example(list(range(20 + k, 40 + k)), [False] + [True] * 19) for k in (0, 100)]
    batch = MicroBatch([[0, 1]])
    input_ids, position_ids, predict, targets = collate(batch, examples, pad_id=0)
    with torch.no_grad():
        packed = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=predict, use_cache=False).logits
        leaky = model(input_ids=input_ids, logits_to_keep=predict, use_cache=False).logits
    second = slice(19, 38)
    assert not torch.allclose(F.cross_entropy(packed[second], targets[second]), F.cross_entropy(leaky[second], targets[second]))
