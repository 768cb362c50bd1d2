"""`kecil tune` and `kecil merge`: LoRA fine-tuning and baking an adapter into its base (kecil/tune)."""

from __future__ import annotations

from typing import Any

import typer

from kecil.cli.common import err, stage_bars, stage_lines
from kecil.cli.options import config_options
from kecil.tune.lora import TuneConfig
from kecil.tune.merge import MergeConfig

# Help for TuneConfig's fields that do not declare their own yet (a field's metadata "help" wins):
# every field of TuneConfig is an option of `kecil tune`, so a new one appears here by itself.
TUNE_HELP = {
    "model": "Base model: built-in name, .gguf file (trained as float) or Hugging Face folder.",
    "data": "JSONL training data: chat ('messages'), instruction ('instruction'/'input'/'output') or plain 'text', one object per line.",
    "output": "Folder for the adapter (and its checkpoints).",
    "epochs": "Passes over the training data.",
    "rank": "LoRA rank.",
    "alpha": "LoRA alpha (default: 2 x rank).",
    "dropout": "LoRA dropout.",
    "target_modules": "Module names to adapt, comma-separated or repeated (default: every linear layer of the architecture).",
    "lr": "Peak learning rate.",
    "warmup": "Share of steps spent warming the learning rate up.",
    "weight_decay": "AdamW weight decay.",
    "max_grad_norm": "Gradients are clipped to this norm.",
    "batch_size": "Packed rows per micro-batch.",
    "grad_accum": "Micro-batches per optimizer step.",
    "max_length": "Tokens per packed row; longer examples are cut.",
    "pack": "Pack several short examples into each row.",
    "val_split": "Share of examples held out for validation loss.",
    "val_data": "A separate JSONL validation file (instead of --val-split).",
    "eval_every": "Steps between validation losses.",
    "save_every": "Steps between checkpoints.",
    "max_steps": "Stop after this many optimizer steps.",
    "seed": "Random seed: the same seed and data give the same adapter.",
    "resume": "Continue the run in --output from its latest checkpoint.",
    "threads": "CPU threads (default: physical cores).",
    "base_bits": "QLoRA: hold the frozen base as int4 or int8 weights (4 or 8) to cut memory; default float32.",
    "base_group_size": "With --base-bits: input columns per quantization scale (32, 64 or 128).",
    "precision": "The frozen base's dtype: float32, bfloat16, or auto (bfloat16 where the CPU/GPU computes it natively). The adapter weights are always float32.",
}


@config_options(TuneConfig, build=False, arguments=("model", "data"), help=TUNE_HELP, flags={"output": ("--output", "-o"), "threads": ("--threads", "-t")})
def tune(config: dict[str, Any]) -> None:
    """Fine-tune MODEL on DATA with LoRA and write a PEFT adapter folder.

    Use it with `kecil generate/chat MODEL --adapter OUT`, or bake it in with `kecil merge`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    import sys

    from kecil.tune.lora import tune as run_tune
    from kecil.tune.progress import describe, progress_for

    if config.get("target_modules"):  # `--target-modules q_proj,v_proj` as well as repeated
        config["target_modules"] = tuple(t.strip() for m in config["target_modules"] for t in m.split(",") if t.strip()) or None
    settings = TuneConfig(**config)
    columns = (TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"))
    # On a terminal a bar; in a log (stderr not a terminal) a plain progress line every few seconds.
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("tune", total=None, status="loading model and data")

        def draw(p) -> None:
            bar.update(task, total=p.total_steps, completed=p.step, status=describe(p))

        def draw_stage(stage: str, done: int, total: int) -> None:
            bar.update(task, total=total, completed=done, status=_STAGE_TEXT.get(stage, stage))

        # The work around training (replay answers, the general check) in the same bar, or as lines in a log.
        stage = draw_stage if sys.stderr.isatty() else stage_lines(_STAGE_TEXT)
        result = run_tune(settings, progress=progress_for(sys.stderr, draw),
                          on_plan=lambda plan: [err(line) for line in plan.describe()], on_stage=stage)
    if result.resumed_from_step is not None:
        err(f"resumed from step {result.resumed_from_step}")
    if result.cut_examples or result.dropped_examples:
        err(f"{result.cut_examples} examples were longer than {settings.cut_length} tokens and cut; {result.dropped_examples} had nothing left to learn and were skipped")
    for line in summary_lines(result):
        err(line)
    if result.general:
        from kecil.tune.forgetting import describe_check

        for line in describe_check(list(result.general)):
            err(line)
    print(result.output)


@config_options(MergeConfig, arguments=("model", "adapter"), flags={"output": ("--output", "-o")})
def merge(config: MergeConfig) -> None:
    """Bake a LoRA adapter into its base model and write a standalone Hugging Face model folder."""
    from pathlib import Path

    from kecil.tune.merge import merge as run_merge

    def quantizer(hf_dir: Path, out_type: str, target: Path, progress) -> Path:
        from kecil.compress.quantize import QuantizeConfig, quantize

        return quantize(QuantizeConfig(model=str(hf_dir), to=out_type, output=target, report=False), progress=progress).output

    with stage_bars(MERGE_STAGES, width=24) as progress:
        result = run_merge(config, quantizer=quantizer, progress=progress)
    print(result.output)
    if result.gguf is not None:
        print(result.gguf)


def summary_lines(result) -> list[str]:
    """What the run did, for a person: steps and examples, then which step's adapter was kept and why."""
    replay = f" ({result.replay_examples} of them general replay)" if result.replay_examples else ""
    lines = [f"trained {result.steps} steps on {result.train_examples} {result.format} examples{replay} "
             f"({result.tokens_per_second:.0f} tok/s)"]
    if result.best_step is not None:
        lines.append(f"kept the adapter of step {result.best_step}: validation loss {result.first_val_loss:.3f} -> "
                     f"{result.val_loss:.3f}, the lowest seen (at the last step, {result.steps}: {result.last_val_loss:.3f})")
        if result.best_step == 0:
            lines.append("no step improved on the model before training: the adapter changes nothing; "
                         "try a lower --lr or more data")
    if result.stopped_early:
        lines.append(f"stopped early at step {result.steps} of {result.plan.total_steps}: {result.plan.patience} validations "
                     "in a row without a lower validation loss (--patience)")
    return lines


_STAGE_TEXT = {"replay": "general replay: the base model answers general prompts (once per model)",
               "general": "general questions: asked without and with the adapter"}
# kecil merge's stages (kecil/tune/merge.py), then the GGUF export's (the quantizer's, as kecil quantize names them).
MERGE_STAGES = {"load": "loading the base model", "merge": "merging the adapter", "save": "writing the merged model",
                 "convert": "converting to GGUF", "calibrate": "calibrating", "scale": "searching AWQ scales",
                 "quantize": "quantizing"}


def register(app: typer.Typer) -> None:
    app.command()(tune)
    app.command()(merge)
