"""`kecil prune` and `kecil distill`: a smaller model by structured pruning, and teaching a student
from a teacher's logits (kecil/compress/prune.py, kecil/compress/distill.py)."""

from __future__ import annotations

import json
import sys

import typer

from kecil.cli.common import AsJson, err, stage_bars
from kecil.cli.options import config_options
from kecil.compress.distill import DistillConfig
from kecil.compress.prune import PruneConfig

_STAGES = {"load": "loading the model", "calibrate": "measuring importance", "prune": "pruning", "save": "writing",
           "teacher": "teacher logits (once)", "distill": "distilling"}  # fmt: skip


@config_options(PruneConfig, arguments=("model",))
def prune(config: PruneConfig, as_json: AsJson = False) -> None:
    """Remove the least important attention heads, MLP neurons, hidden channels or layers of MODEL
    and write a smaller Hugging Face folder (`kecil quantize` turns it into a GGUF)."""
    from kecil.compress.prune import prune as run_prune

    with stage_bars(_STAGES, width=24, transient=as_json) as progress:
        result = run_prune(config, progress=progress)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    for line in result.removed:
        err(line)
    change = result.params_after / result.params_before - 1
    err(f"parameters: {result.params_before:,} -> {result.params_after:,} ({change:+.1%})")
    if result.heal:
        err(_heal_line(result.heal))
    print(result.output)


@config_options(DistillConfig, arguments=("student", "data"))
def distill(config: DistillConfig) -> None:
    """Train STUDENT to predict what --teacher predicts (their top-k logits, stored once) on DATA,
    and write it as a Hugging Face folder."""
    from kecil.compress.distill import distill as run_distill

    with stage_bars(_STAGES, width=24) as progress:
        result = run_distill(config, progress=progress, on_step=_step_lines())
    err(_heal_line(result.to_dict()))
    print(result.output)


def _step_lines(every: float = 10.0):
    """`distill: step 40/150 loss 1.234 (kl 1.1, ce 2.3) | 850 tok/s | ETA 1m02s` on stderr, at most every few seconds."""
    import time

    last = {"at": None}

    def show(p) -> None:
        now = time.monotonic()
        if last["at"] is not None and now - last["at"] < every and p.step != p.total_steps:
            return
        last["at"] = now
        total = f"/{p.total_steps}" if p.total_steps else ""
        minutes, seconds = divmod(int(p.eta_seconds), 60)
        sys.stderr.write(f"distill: step {p.step}{total} loss {p.loss:.3f} (kl {p.kl:.3f}, ce {p.ce:.3f}) | "
                         f"{p.tokens_per_second:.0f} tok/s | ETA {minutes}m{seconds:02d}s\n")  # fmt: skip
        sys.stderr.flush()

    return show


def _heal_line(run: dict) -> str:
    resumed = f", resumed from step {run['resumed_from']}" if run.get("resumed_from") else ""
    loss = f", loss {run['first_loss']:.3f} -> {run['last_loss']:.3f}" if run.get("first_loss") is not None else ""
    return f"distilled {run['steps']} steps, {run['tokens']:,} tokens in {run['seconds']:.0f}s{loss}{resumed}"


def register(app: typer.Typer) -> None:
    app.command()(prune)
    app.command()(distill)
