"""Sequence packing: several training examples share one row of tokens, none attending to another.

Padding short examples to a common length spends compute on tokens that teach nothing; packing
fills each row instead. Each example's position ids restart at 0 inside its row and the model
is called without an attention mask, which makes transformers build a block-diagonal causal
mask (its `find_packed_sequence_indices`), so an example sees only its own earlier tokens — the
same loss as if it were alone (tests/tune/test_packing.py checks this).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from kecil.infer.embeddings import WIDTH_MULTIPLE, padded_width
from kecil.tune.data import Example


@dataclass(frozen=True)
class MicroBatch:
    """Rows of packed examples, as plain lists (tensors are made at the last moment)."""

    rows: list[list[int]]  # example indices per row

    def token_count(self, examples: Sequence[Example]) -> int:
        return sum(len(examples[i].ids) for row in self.rows for i in row)


def pack_rows(lengths: Sequence[int], order: Sequence[int], max_length: int) -> list[list[int]]:
    """Group example indices (taken in `order`) into rows of at most `max_length` tokens.

    First fit: each example goes into the first open row with room, so the data order is kept
    roughly while rows end up nearly full.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        need = lengths[index]
        for r, free in enumerate(room):
            if free >= need:
                rows[r].append(index)
                room[r] -= need
                break
        else:
            rows.append([index])
            room.append(max_length - need)
    return rows


def plan_epochs(
    examples: Sequence[Example], *, epochs: int, rows_per_batch: int, max_length: int, seed: int, pack: bool = True
) -> list[MicroBatch]:
    """Every micro-batch of the whole run, in order: a fixed function of (data, settings, seed),
    so a resumed run can skip exactly the batches it has already trained on."""
    lengths = [len(e.ids) for e in examples]
    return plan_batches(lengths, epochs=epochs, rows_per_batch=rows_per_batch, max_length=max_length, seed=seed, pack=pack)


def plan_batches(
    lengths: Sequence[int], *, epochs: int, rows_per_batch: int, max_length: int, seed: int, pack: bool = True
) -> list[MicroBatch]:
    """plan_epochs from the examples' token counts alone (what kecil/tune/plan.py sizes a run by)."""
    batches: list[MicroBatch] = []
    for epoch in range(epochs):
        order = list(range(len(lengths)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        rows = pack_rows(lengths, order, max_length) if pack else [[i] for i in order]
        random.Random(seed * 1_000_003 + epoch + 500_000).shuffle(rows)  # long rows are not all first
        for start in range(0, len(rows), rows_per_batch):
            batches.append(MicroBatch(rows[start : start + rows_per_batch]))
    return batches


def collate(batch: MicroBatch, examples: Sequence[Example], pad_id: int, width_multiple: int = WIDTH_MULTIPLE):
    """Tensors for one micro-batch: (input_ids, position_ids, predict, targets).

    `predict` is a boolean (rows, length) mask of the positions whose next token carries loss;
    `targets` holds those next tokens in the same order as `hidden_states[predict]`. Rows are
    padded to the longest, rounded up to a multiple of `width_multiple`.
    """
    import torch

    # Rounded up to a fixed set of widths (WIDTH_MULTIPLE says why); at most 15 padding tokens a row.
    width = padded_width(max(sum(len(examples[i].ids) for i in row) for row in batch.rows), width_multiple)
    input_ids = torch.full((len(batch.rows), width), pad_id, dtype=torch.long)
    # Padding continues as one more "example" counting from 0, which keeps it in a block of its own.
    position_ids = torch.zeros((len(batch.rows), width), dtype=torch.long)
    predict = torch.zeros((len(batch.rows), width), dtype=torch.bool)
    targets = []
    for r, row in enumerate(batch.rows):
        at = 0
        for i in row:
            example = examples[i]
            n = len(example.ids)
            input_ids[r, at : at + n] = torch.tensor(example.ids)
            position_ids[r, at : at + n] = torch.arange(n)
            for t in range(n - 1):
                if example.trained[t + 1]:
                    predict[r, at + t] = True
                    targets.append(example.ids[t + 1])
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    return input_ids, position_ids, predict, torch.tensor(targets, dtype=torch.long)
