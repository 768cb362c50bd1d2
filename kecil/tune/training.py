"""A LoRA run's optimizer loop and its pieces: the loss over the answer tokens, validation loss,
keeping the best adapter by it (and stopping when it stops improving), the learning-rate
schedule, and handing freed memory back between steps.

A falling training loss and even a falling validation loss can hide a run that went too far:
on a few dozen facts, loss read 2.425 -> 0.089 while the model had started answering "Tarnholm"
to everything. With a validation set the run keeps the adapter of the step with the lowest
validation loss, not the last one, and stops once `patience` validations in a row have not beaten
it (early stopping; Prechelt, "Early Stopping - But When?", 1998).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace

from kecil.errors import Interrupted
from kecil.tune import checkpoint as ckpt
from kecil.tune.interrupt import stop_after_step
from kecil.tune.packing import MicroBatch, collate
from kecil.tune.progress import TuneProgress


def token_loss_sum(model, input_ids, position_ids, predict, targets):
    """Summed cross-entropy over the positions in `predict`, logits computed only there."""
    import torch.nn.functional as F

    # No attention mask and no cache: the restarting position ids mark the packed examples, for
    # packed_attention.py, or for transformers' own block-diagonal mask where that is not used.
    from kecil.tune.packed_attention import prepare_packed_rows

    device = next(model.parameters()).device
    host_position_ids = position_ids
    input_ids, position_ids, predict, targets = (t.to(device) for t in (input_ids, position_ids, predict, targets))
    prepare_packed_rows(model, host_position_ids, position_ids)
    out = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=predict, use_cache=False)
    return F.cross_entropy(out.logits.float(), targets, reduction="sum")


def validation_loss(model, examples, batches: list[MicroBatch], pad_id: int) -> float | None:
    import torch

    if not batches:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            input_ids, position_ids, predict, targets = collate(batch, examples, pad_id)
            total += float(token_loss_sum(model, input_ids, position_ids, predict, targets))
            count += len(targets)
    model.train(was_training)
    return total / count


def lr_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def release_freed_memory(slack_mib: int = 512) -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim) once the process has
    grown `slack_mib` past its size after the last trim; a no-op where there is no glibc.

    A step frees hundreds of MB of activations; glibc keeps such memory, and while every step had
    a new row width (before rows were padded to WIDTH_MULTIPLE) resident memory crept up by ~40 MiB
    a step.
    Trimming is a guard against such growth, not a routine: after a trim the next step faults
    its pages back in (100k page faults, ~10% of a step on SmolLM2-135M), and a slack of 128 MiB,
    smaller than one step's activations, had made it trim after every step. With 512 MiB a
    20-step run trimmed rarely and peaked 50 MiB above one never trimmed."""
    global _malloc_trim, _trimmed_size
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
            _malloc_trim = False
    if not _malloc_trim:
        return
    import psutil

    process = psutil.Process()
    if process.memory_info().rss > _trimmed_size + slack_mib * 2**20:
        _malloc_trim(0)
        _trimmed_size = process.memory_info().rss


_malloc_trim = None
_trimmed_size = 0  # resident bytes after the last trim


def collate_targets(batch: MicroBatch, examples) -> list[int]:
    """The target positions of a micro-batch, counted without building tensors."""
    return [t for row in batch.rows for i in row for t in range(1, len(examples[i].ids)) if examples[i].trained[t]]


def train_steps(run, progress: Callable[[TuneProgress], None] | None) -> None:
    """The optimizer loop from run.state to the plan's last step (or an early stop), checkpointing
    and reporting as it goes; `run` is kecil/tune/lora.py's _Run, whose state, history and losses
    it updates. With a validation set the best adapter is put back into the model at the end.
    A first Ctrl-C ends the run after the step under way, with a checkpoint of it (interrupt.py)."""
    if run.val_batches and run.state.step == 0:
        run.first_val = run.val_loss = validation_loss(run.model, run.val, run.val_batches, run.pad_id)
        run.state = replace(run.state, first_val_loss=run.val_loss)
        run.history.append({"step": 0, "val_loss": run.val_loss})
        keep_if_best(run, 0, run.val_loss)
    with stop_after_step() as interrupted:
        _loop(run, progress, interrupted)
    restore_best(run)


def _loop(run, progress, interrupted) -> None:
    config, accelerator, total = run.config, run.accelerator, run.plan.total_steps
    started = time.perf_counter()
    earlier_seconds = run.state.seconds  # spent before a resume
    while run.state.step < total and not run.state.stopped_early:
        step_loss, step_tokens, step_lr = optimizer_step(run)
        run.tokens += step_tokens
        run.train_loss = step_loss
        elapsed = time.perf_counter() - started
        state = run.state
        run.state = replace(state, step=state.step + 1, batches_done=(state.step + 1) * run.per_step,
                            tokens_seen=state.tokens_seen + step_tokens, seconds=earlier_seconds + elapsed)
        step = run.state.step
        entry = {"step": step, "loss": round(step_loss, 5), "lr": step_lr}
        if run.val_batches and (step % run.plan.eval_every == 0 or step == total):
            run.val_loss = validation_loss(run.model, run.val, run.val_batches, run.pad_id)
            entry["val_loss"] = run.val_loss
            keep_if_best(run, step, run.val_loss)
        run.history.append(entry)
        if step % config.save_every == 0 or step == total or run.state.stopped_early or interrupted.is_set():
            if accelerator.is_main_process:
                ckpt.save_checkpoint(run.output, run.state, run.inner, run.optimizer, run.scheduler, run.best)
            accelerator.wait_for_everyone()
        if interrupted.is_set() and step < total:
            raise Interrupted(f"stopped at step {step} of {total}; a checkpoint of it is in {run.output / 'checkpoints'}: "
                              "run the same command with --resume to go on from there")
        if progress is not None and accelerator.is_main_process:
            speed = run.tokens / elapsed if elapsed else 0.0
            eta = 0.0 if run.state.stopped_early else elapsed / max(1, step - (run.resumed_from or 0)) * (total - step)
            progress(TuneProgress(step, total, step_loss, run.val_loss, speed, eta))
    run.seconds = time.perf_counter() - started


def keep_if_best(run, step: int, val_loss: float) -> None:
    """Keep the adapter as it is at `step` when `val_loss` is the lowest yet; otherwise count one
    more validation without improvement and mark the run stopped once `patience` of them are spent.

    "Lowest" is strict: a tie keeps the earlier, smaller change to the model. The validation
    losses of a run are a fixed function of its data, settings and seed (as its steps are), so
    every process of a data-parallel run reaches the same decision, and so does a resumed one."""
    state, patience = run.state, run.config.patience
    if state.best_val_loss is None or val_loss < state.best_val_loss:
        run.best = adapter_weights(run.inner)
        run.state = replace(state, best_step=step, best_val_loss=val_loss, evals_since_best=0)
        return
    waited = state.evals_since_best + 1
    stop = bool(patience) and waited >= patience and step < run.plan.total_steps
    run.state = replace(state, evals_since_best=waited, stopped_early=stop)


def adapter_weights(model) -> dict:
    """A copy of the LoRA weights alone (a few MB), as peft saves and loads them."""
    from peft import get_peft_model_state_dict

    from kecil.tune.adapter_files import saves_embeddings

    state = get_peft_model_state_dict(model, save_embedding_layers=saves_embeddings(model))
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def restore_best(run) -> None:
    """Put the best adapter kept by keep_if_best back into the model, when it is not the last one."""
    from peft import set_peft_model_state_dict

    state = run.state
    if run.best is None or state.best_step is None or state.best_step == state.step:
        return
    set_peft_model_state_dict(run.inner, run.best)


def optimizer_step(run) -> tuple[float, int, float]:
    """One optimizer step over this process's share of the step's micro-batches: (loss, tokens, lr)."""
    import torch

    accelerator, model, world = run.accelerator, run.model, run.accelerator.num_processes
    group = run.batches[run.state.step * run.per_step : (run.state.step + 1) * run.per_step]
    step_targets = sum(len(collate_targets(b, run.train)) for b in group)
    mine = group[accelerator.process_index :: world]
    step_loss = 0.0
    step_tokens = 0
    for i, batch in enumerate(mine):
        input_ids, position_ids, predict, targets = collate(batch, run.train, run.pad_id)
        # Normalised by the whole step's target count: packing and accumulation then give the
        # gradient of the mean token loss, whatever the rows look like. × world undoes DDP's average.
        syncing = accelerator.no_sync(model) if (world > 1 and i < len(mine) - 1) else nullcontext()
        with syncing:
            loss = token_loss_sum(model, input_ids, position_ids, predict, targets) * (world / step_targets)
            accelerator.backward(loss)
        step_loss += float(loss.detach()) / world
        step_tokens += batch.token_count(run.train)
    torch.nn.utils.clip_grad_norm_(run.trainable, run.config.max_grad_norm)
    step_lr = run.scheduler.get_last_lr()[0]  # the rate this step trains with
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    release_freed_memory()
    step_loss = accelerator.reduce(torch.tensor(step_loss), reduction="sum").item()
    step_tokens = int(accelerator.reduce(torch.tensor(step_tokens), reduction="sum").item())
    return step_loss, step_tokens, step_lr
