"""The training plan is chosen from the data: small sets get enough optimizer steps, large ones the usual recipe."""

from __future__ import annotations

import pytest

from kecil.tune.plan import (
    DEFAULT_LR,
    MIN_STEPS,
    SMALL_BATCH_LR,
    VAL_MAX_EXAMPLES,
    VAL_MIN_EXAMPLES,
    plan_training,
    validation_share,
)


def test_a_small_set_gets_enough_small_steps():
    """The issue's case: 36 short facts at the old fixed recipe made ~1 optimizer step per epoch."""
    lengths = [55] * 36
    plan = plan_training(lengths, max_length=512, val_chosen=True)
    assert plan.total_steps >= MIN_STEPS
    assert plan.batch_size == 1 and plan.row_length < 512 and plan.lr == SMALL_BATCH_LR
    assert {"batch_size", "max_length", "epochs", "lr", "val_split"} <= set(plan.chosen)
    assert plan.val_examples == 0 and plan.val_source == "none" and not plan.warnings
    text = "\n".join(plan.describe())
    assert f"= {plan.total_steps} optimizer steps" in text and "36 training examples" in text
    assert "no validation split" in text


def test_what_the_user_gives_is_kept_and_a_short_plan_is_warned_about():
    lengths = [55] * 36
    old = plan_training(lengths, max_length=512, row_length=512, epochs=10, batch_size=4, lr=2e-4)
    assert (old.row_length, old.batch_size, old.epochs, old.lr) == (512, 4, 10, 2e-4)
    assert old.total_steps == 10 and not old.chosen  # 36 examples fill one batch of 4 rows: one step an epoch
    assert old.warnings and "too few" in old.warnings[0]
    assert "too few" in old.describe()[-1] and old.describe()[-1].startswith("warning:")
    # Only --epochs 10 given, as in the issue: the rest is chosen and the run gets its steps.
    given_epochs = plan_training(lengths, max_length=512, epochs=10)
    assert given_epochs.epochs == 10 and given_epochs.total_steps >= MIN_STEPS and not given_epochs.warnings


def test_a_large_set_keeps_the_usual_recipe():
    lengths = [120] * 3_000
    plan = plan_training(lengths, max_length=512)
    assert (plan.batch_size, plan.row_length, plan.epochs, plan.lr) == (4, 512, 3, DEFAULT_LR)
    assert plan.total_steps >= MIN_STEPS and "batch_size" not in plan.chosen


def test_steps_count_accumulation_and_processes_and_max_steps():
    lengths = [40] * 300
    one = plan_training(lengths, max_length=64, row_length=64, batch_size=1, epochs=1)
    two = plan_training(lengths, max_length=64, row_length=64, batch_size=1, epochs=1, grad_accum=2, processes=2)
    assert two.total_steps == one.total_steps // 4
    assert plan_training(lengths, max_length=64, max_steps=7).total_steps == 7


def test_validation_is_held_out_only_from_data_that_can_spare_it():
    assert validation_share(VAL_MIN_EXAMPLES - 1, None, False) == 0
    assert validation_share(VAL_MIN_EXAMPLES, None, False) == pytest.approx(0.1)
    assert validation_share(10_000, None, False) * 10_000 == pytest.approx(VAL_MAX_EXAMPLES)
    assert validation_share(20, 0.2, False) == 0.2  # asked for: as asked
    assert validation_share(5_000, None, True) == 0  # a validation file instead
    plan = plan_training([30] * 90, max_length=64, val_examples=10, val_source="split", val_lines=[3, 9], val_chosen=True)
    assert "10 held out for validation (chosen from the data) (lines 3, 9)" in plan.describe()[2]
