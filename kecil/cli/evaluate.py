"""`kecil eval` (quality and system figures of models, side by side) and `kecil fit` (which quantization fits) (kecil/eval)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Annotated, Optional

import typer

from kecil.cli.common import Backend, Threads, err, on_device, stage_bars
from kecil.models.info import SIZE_HELP

# Options are written here rather than made from EvalConfig's and FitConfig's fields: importing
# kecil.eval at start-up loads numpy (through kecil.infer.scoring), and `kecil --help` must stay instant.


def _eval_lines():
    """The callback of `_eval_progress` for a log: a line per (model, task) at its start, every
    10 s and at its end (stage_lines)."""
    from kecil.cli.common import stage_lines

    lines = stage_lines({})

    def progress(model: str, task: str, done: int, total: int) -> None:
        lines(f"{model} {task}", done, total)

    return progress


def _eval_progress(bar):
    """A callback for kecil.eval that drives one rich progress bar per (model, task)."""
    bars: dict[tuple[str, str], int] = {}

    def progress(model: str, task: str, done: int, total: int) -> None:
        if (model, task) not in bars:
            bars[(model, task)] = bar.add_task(f"{model} {task}", total=total)
        bar.update(bars[(model, task)], completed=done, total=total)

    return progress


@on_device
def eval_(
    load: dict,
    models: Annotated[list[str], typer.Argument(metavar="MODEL...", help="Models to compare: built-in names, .gguf files or Hugging Face folders.")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated: mmlu, arc_easy, arc_challenge, hellaswag, piqa, boolq, gsm8k, squad, humaneval, mbpp, xcopa_id, xcopa_th, xcopa_vi, xcopa_zh, xcopa_ta, gk_hi, mcq_ms, wikitext-like-perplexity, perplexity (with --text), or a --task-file's name. Tasks in other languages add the tokenizer's fertility in them.")] = "mmlu",
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most N items per task: a fixed random subset (see --seed); for perplexity, the first N chunks.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the subset and the few-shot examples.")] = 1234,
    shots: Annotated[Optional[int], typer.Option("--shots", help="Few-shot examples per prompt (default: each task's own; 0 = zero-shot).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Text file for --tasks perplexity.")] = None,
    context: Annotated[int, typer.Option("--context", "-c", help="Perplexity window in tokens.")] = 512,
    task_file: Annotated[Optional[list[str]], typer.Option("--task-file", help="YAML spec of your own task (repeatable).")] = None,
    backend: Backend = None,
    threads: Threads = None,
    system: Annotated[bool, typer.Option("--system/--no-system", help="Measure size, peak RAM, load time and speed.")] = True,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse per-item results from an earlier (or interrupted) run.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line, one per (model, task).")] = False,
    html: Annotated[Optional[str], typer.Option("--html", help="Also write an HTML report with plots to this file.")] = None,
) -> None:
    """Evaluate models on quality tasks and system figures, side by side, offline."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from kecil.eval.report import json_lines, table
    from kecil.eval.run import EvalConfig, EvalInterrupted, evaluate

    config = EvalConfig(
        models=tuple(models), tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), limit=limit, seed=seed,
        shots=shots, text=Path(text) if text else None, context=context,
        task_files=tuple(Path(f) for f in task_file or ()), backend=backend, threads=threads, system=system, cache=cache,
        **load,
    )
    console = Console(stderr=True)
    # Items of a generation task take seconds each: rich's default 30 s speed window would often hold
    # too few of them to estimate, and the ETA would read -:--:--. The whole task's pace is the estimate.
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    interrupted = False
    if console.is_terminal:
        bars = Progress(*columns, console=console, transient=True, speed_estimate_period=3600)
    else:  # a log or CI: a bar draws nothing there, and a run sat silent for minutes; a line per task instead
        bars = nullcontext()
    with bars as bar:
        try:
            report = evaluate(config, progress=_eval_progress(bar) if bar is not None else _eval_lines())
        except EvalInterrupted as stopped:
            report, interrupted = stopped.report, True
    if interrupted:
        err(f"kecil eval: interrupted; {len(report.results)} finished task result(s) below. Every finished item is cached: "
            "run the same command again to resume where it stopped.")
    if html and report.results:
        from kecil.eval.html import write_html

        written = write_html(report, Path(html))
        err(f"wrote {written}")
    if as_json:
        for line in json_lines(report):
            print(line)
    elif report.results or report.systems:
        Console().print(table(report))
    if interrupted:
        raise typer.Exit(130)


def fit(
    model: Annotated[str, typer.Argument(help="Built-in name, .gguf file or Hugging Face folder.")],
    memory: Annotated[str, typer.Option("--memory", "-m", help=f"Memory the model may use, e.g. 4GB, 300MB, 3.5GiB ({SIZE_HELP}).")],
    context: Annotated[int, typer.Option("--context", "-c", help="Context window the model must hold, in tokens.")] = 4096,
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated quality tasks (as in kecil eval).")] = "wikitext-like-perplexity",
    types: Annotated[Optional[str], typer.Option("--types", help="Comma-separated quantization types to try (default: all eight).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Items per task (perplexity: 512-token chunks).")] = 20,
    threads: Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per variant, then the recommendation.")] = False,
) -> None:
    """Which quantization of MODEL fits in --memory at --context, and which of those is best: measured, not estimated."""
    from rich.console import Console
    from rich.table import Table

    from kecil.build.fit import DEFAULT_TYPES, FitConfig, fit as run_fit
    from kecil.infer.measure import energy_unreadable_reason
    from kecil.models.info import format_bytes, parse_bytes

    config = FitConfig(
        model=model, memory=parse_bytes(memory), context=context, tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
        types=tuple(t.strip() for t in types.split(",")) if types else DEFAULT_TYPES, limit=limit, threads=threads,
    )
    console = Console(stderr=True)
    stages = {"quantize": "quantizing", "memory": "measuring peak memory", "evaluate": "evaluating quality"}
    with stage_bars(stages, width=24, console=console, transient=True) as progress:
        result = run_fit(config, progress=progress)
    if as_json:
        for v in result.variants:
            print(json.dumps({"type": v.type, "size_bytes": v.size_bytes, "peak_rss_bytes": v.peak_rss_bytes, "fits": v.fits(config.memory),
                              "joules_per_token": v.joules_per_token, "quality": v.quality, "error": v.error}))
        print(json.dumps({"recommended": result.recommended.type if result.recommended else None, "command": result.command, "message": result.message}))
        return
    grid = Table(title=f"kecil fit {model} --memory {memory} --context {context}")
    for column in ("type", "size", "peak RAM", "energy/token", "fits", *config.tasks):
        grid.add_column(column, justify="left" if column == "type" else "right")
    for v in result.variants:
        quality = [("" if v.quality.get(t) is None else f"{v.quality[t]:.3f}" if v.metrics.get(t) == "perplexity" else f"{100 * v.quality[t]:.1f}%") for t in config.tasks]
        mark = "yes" if v.fits(config.memory) else ("error" if v.error else "no")
        name = f"[bold]{v.type}[/bold]" if v is result.recommended else v.type
        energy = "" if v.joules_per_token is None else f"{v.joules_per_token:.3g} J"
        grid.add_row(name, format_bytes(v.size_bytes) if v.size_bytes else "", format_bytes(v.peak_rss_bytes) if v.peak_rss_bytes else (v.error or ""),
                     energy, mark, *quality)
    Console().print(grid)
    unreadable = energy_unreadable_reason()
    if unreadable:
        print(f"energy per token: {unreadable}")
    print(result.message)
    if result.command:
        print(f"\n  {result.command}")


def register(app: typer.Typer) -> None:
    app.command(name="eval")(eval_)
    app.command()(fit)
