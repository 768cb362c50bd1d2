"""How a LoRA run spends its data, chosen from the data: rows, batches, epochs, optimizer steps,
learning rate and the validation hold-out, decided before training and printed for the user.

A fixed recipe (4 rows of 512 tokens per step, 3 epochs, lr 2e-4) is right for a few thousand
examples and wrong for a few dozen: 36 short facts pack into a handful of rows, which made one
optimizer step per epoch, and ten such steps at 2e-4 left the model as it was. Recipes that
work on small data (Unsloth's notebooks, LLaMA-Factory's examples) fix the number of optimizer
steps rather than the epochs; so here the settings the user did not give are chosen to reach at
least MIN_STEPS optimizer steps, first by making steps smaller (fewer, shorter rows per step:
free, the same tokens are trained on), then by more passes over the data. Every setting the user
gives is kept as given; a plan that is still too short to change the model says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# At least this many optimizer steps when the data allows it (measured: on 36-48 short facts,
# SmolLM2-135M answered most held-out rephrasings after ~150 single-example steps at 1e-3).
MIN_STEPS = 150
DEFAULT_EPOCHS = 3
MAX_EPOCHS = 12  # more passes than this over a small set mostly teaches it by rote
DEFAULT_ROWS = 4  # rows per micro-batch on data large enough for MIN_STEPS at full batches
DEFAULT_LR = 2e-4  # the usual LoRA rate, for runs of many full batches
SMALL_BATCH_LR = 1e-3  # steps of one short row carry less gradient: a higher rate (measured, above)
SHORT_PLAN_STEPS = 30  # below this many steps a run barely moves the adapter: warn
# Validation is held out only from data that can spare it: on a few dozen examples a 10% split
# removes whole facts from training and its loss, over 3-4 examples, is noise.
VAL_MIN_EXAMPLES = 100
VAL_SHARE = 0.1
VAL_MAX_EXAMPLES = 200
SHOWN_LINES = 12  # held-out line numbers listed in full up to this many
# Validations per run when --eval-every is not given: about ten, so the best adapter is picked from
# ten points of the run and patience (counted in validations) means a tenth of it each. Never
# rarer than every MAX_EVAL_EVERY steps (validation costs a tenth of the data's forward passes).
EVALS_PER_RUN = 10
MAX_EVAL_EVERY = 50


@dataclass(frozen=True)
class TrainingPlan:
    """What a run will do, fixed before its first step; `chosen` names the settings picked from the data."""

    examples: int  # training examples (after any held out)
    tokens: int  # tokens in one pass over them
    val_examples: int
    val_source: str  # "split", "file" or "none"
    val_lines: tuple[int, ...]  # data-file line numbers of the held-out examples ("split" only)
    row_length: int  # tokens per packed row (a longer example gets a row of its own)
    rows_per_epoch: int
    batch_size: int  # rows per micro-batch
    grad_accum: int
    processes: int
    epochs: int
    steps_per_epoch: float  # optimizer steps per pass (a pass need not end on a step)
    total_steps: int
    lr: float
    warmup_steps: int
    eval_every: int = MAX_EVAL_EVERY  # steps between validations (with a validation set)
    patience: int = 0  # validations without a new lowest loss before the run stops; 0 = never
    replay_examples: int = 0  # of `examples`, the base model's own answers to general prompts (kecil/tune/replay.py)
    chosen: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # how the plan was chosen, one sentence each
    warnings: tuple[str, ...] = field(default=())  # the plan is unlikely to do what the user wants
    # Every micro-batch of the run, in order (packing.plan_batches over the training examples' indices).
    batches: tuple = field(default=(), repr=False, compare=False)

    def describe(self) -> list[str]:
        """The plan as lines for a person, printed before training starts."""
        auto = set(self.chosen)

        def mark(name: str) -> str:
            return " (chosen from the data)" if name in auto else ""

        if self.val_source == "file":
            held = f"{self.val_examples} from the validation file"
        elif self.val_source == "split":
            lines = ", ".join(map(str, self.val_lines[:SHOWN_LINES])) + (" ..." if len(self.val_lines) > SHOWN_LINES else "")
            held = f"{self.val_examples} held out for validation{mark('val_split')} (lines {lines})"
        else:
            held = f"none{mark('val_split')}"
        per_step = self.batch_size * self.grad_accum * self.processes
        replay = (f", {self.replay_examples} of them general replay (the base model's own answers)"
                  if self.replay_examples else "")
        lines = [
            f"plan: {self.examples} training examples{replay} ({self.tokens} tokens) in {self.rows_per_epoch} rows of up to "
            f"{self.row_length} tokens{mark('max_length')}",
            f"plan: {per_step} row(s) per optimizer step{mark('batch_size')}, {self.steps_per_epoch:g} steps per epoch, "
            f"{self.epochs} epochs{mark('epochs')} = {self.total_steps} optimizer steps at lr {self.lr:g}{mark('lr')}",
            f"plan: validation examples: {held}",
        ]
        if self.val_examples:
            stop = (f", stopping after {self.patience} without improvement" if self.patience else "")
            lines.append(f"plan: validation every {self.eval_every} steps{mark('eval_every')}; the adapter of the step with "
                         f"the lowest validation loss is kept{stop}")
        return lines + [f"plan: {n}" for n in self.notes] + [f"warning: {w}" for w in self.warnings]


def validation_share(examples: int, requested: float | None, has_val_file: bool) -> float:
    """The share of examples to hold out: as requested, else VAL_SHARE of data large enough to spare it."""
    if has_val_file:
        return 0.0
    if requested is not None:
        return requested
    if examples < VAL_MIN_EXAMPLES:
        return 0.0
    return min(VAL_SHARE, VAL_MAX_EXAMPLES / examples)


def plan_training(
    lengths: Sequence[int],
    *,
    max_length: int,
    epochs: int | None = None,
    batch_size: int | None = None,
    row_length: int | None = None,
    lr: float | None = None,
    grad_accum: int = 1,
    processes: int = 1,
    warmup: float = 0.05,
    max_steps: int | None = None,
    pack: bool = True,
    seed: int = 0,
    val_examples: int = 0,
    val_source: str = "none",
    val_lines: Sequence[int] = (),
    val_chosen: bool = False,
    eval_every: int | None = None,
    patience: int = 0,
    replay_examples: int = 0,
) -> TrainingPlan:
    """Choose what the caller left as None (epochs, batch_size, row_length, lr) so the run makes
    at least MIN_STEPS optimizer steps where the data allows. `lengths` are the training examples'
    token counts; the validation arguments (decided before, by validation_share) are only reported."""
    from kecil.tune.packing import plan_batches

    per_step = grad_accum * processes
    chosen, notes, warnings = [], [], []
    longest = max(lengths)
    tokens = sum(lengths)
    n_epochs = epochs or DEFAULT_EPOCHS
    rows_per_batch = batch_size or DEFAULT_ROWS
    width = row_length or max_length
    made: dict[tuple[int, int, int], list] = {}

    def batches(epochs_: int, rows_per_batch_: int, width_: int) -> list:
        """Every micro-batch of the run with these settings (packing is slow on large data: made once each)."""
        key = (epochs_, rows_per_batch_, width_)
        if key not in made:
            made[key] = plan_batches(lengths, epochs=epochs_, rows_per_batch=rows_per_batch_, max_length=width_, seed=seed, pack=pack)
        return made[key]

    def steps(epochs_: int, rows_per_batch_: int, width_: int) -> int:
        return len(batches(epochs_, rows_per_batch_, width_)) // per_step

    small = steps(n_epochs, rows_per_batch, width) < MIN_STEPS
    if small and batch_size is None:
        rows_per_batch = 1
        chosen.append("batch_size")
    if small and row_length is None and pack and steps(n_epochs, rows_per_batch, width) < MIN_STEPS:
        # Shorter rows make more, smaller steps over the same tokens; never shorter than the longest example.
        wanted_rows = math.ceil(MIN_STEPS * per_step * rows_per_batch / n_epochs)
        width = min(width, max(longest, tokens // max(1, wanted_rows)))
        chosen.append("max_length")
    if epochs is None and steps(n_epochs, rows_per_batch, width) < MIN_STEPS:
        while n_epochs < MAX_EPOCHS and steps(n_epochs, rows_per_batch, width) < MIN_STEPS:
            n_epochs += 1
        chosen.append("epochs")
    if small:
        notes.append(f"small data: steps made smaller so the run reaches {MIN_STEPS} optimizer steps where it can")
    if lr is None:
        lr = SMALL_BATCH_LR if small else DEFAULT_LR
        chosen.append("lr")
    run = batches(n_epochs, rows_per_batch, width)
    n_batches, n_rows = len(run), sum(len(b.rows) for b in run)
    total = max(1, n_batches // per_step)
    if max_steps:
        total = min(total, max_steps)
    if total < SHORT_PLAN_STEPS:
        warnings.append(
            f"only {total} optimizer steps: too few to change the model much. Leave --epochs, --batch-size and "
            "--max-steps to be chosen from the data, or give more examples"
        )
    if eval_every is None:
        eval_every = max(1, min(MAX_EVAL_EVERY, math.ceil(total / EVALS_PER_RUN)))
        if val_examples:  # without a validation set there is nothing to choose
            chosen.append("eval_every")
    if val_chosen:
        chosen.append("val_split")
    if val_chosen and val_source == "none":
        notes.append(f"no validation split: {len(lengths) - replay_examples} examples are too few to spare some (kecil holds out "
                     f"{VAL_SHARE:.0%} from {VAL_MIN_EXAMPLES} examples up); pass --val-data to measure one")
    return TrainingPlan(
        examples=len(lengths), tokens=tokens, val_examples=val_examples, val_source=val_source, val_lines=tuple(val_lines),
        row_length=width, rows_per_epoch=round(n_rows / n_epochs), batch_size=rows_per_batch,
        grad_accum=grad_accum, processes=processes, epochs=n_epochs, steps_per_epoch=round(n_batches / n_epochs / per_step, 1),
        total_steps=total, lr=lr, warmup_steps=int(warmup * total), eval_every=eval_every, patience=patience,
        replay_examples=replay_examples, chosen=tuple(chosen), notes=tuple(notes),
        warnings=tuple(warnings), batches=tuple(run[: total * per_step]),
    )
