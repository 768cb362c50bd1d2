"""Showing an evaluation: a terminal table (models side by side) and JSON lines, one per (model, task),
then the system figures and, for tasks in other languages, the tokenizer's fertility per language."""

from __future__ import annotations

import json
from collections.abc import Iterator

from kecil.eval.fertility import summary
from kecil.eval.run import EvalReport, TaskResult
from kecil.scratch import format_bytes

LOWER_IS_BETTER = {"perplexity"}
SYSTEM_METRICS = (
    # The units `kecil models` and `kecil info` write sizes in: one file, one number everywhere.
    ("size_bytes", "size on disk", format_bytes),
    ("peak_rss_bytes", "peak RAM", format_bytes),
    ("load_seconds", "load time", lambda v: f"{v:.2f} s"),
    ("prompt_tokens_per_second", "prompt speed", lambda v: f"{v:,.1f} tok/s"),
    ("decode_tokens_per_second", "decode speed", lambda v: f"{v:,.1f} tok/s"),
    # from the machine's energy counters (kecil/infer/measure.py); where none is readable, it says so
    ("joules_per_token", "energy per token", lambda v: "not readable here" if v is None else f"{v:.3g} J"),
)


def format_value(result: TaskResult) -> str:
    """`45.0% ±9.7`: the value with the half-width of its 95% interval, and `(chance)` when
    guessing could have scored it."""
    if result.value is None:
        return f"error: {result.error}"
    if result.metric in LOWER_IS_BETTER:
        return f"{result.value:.3f}"
    text = f"{100 * result.value:.1f}%"
    if result.ci is not None:
        text += f" ±{100 * max(result.value - result.ci[0], result.ci[1] - result.value):.1f}"
    return text + (" (chance)" if result.at_chance else "")


def json_lines(report: EvalReport) -> Iterator[str]:
    """One JSON object per (model, task) with model, task, metric, value and n (and, for
    accuracies, the 95% interval ci_low/ci_high; for multiple choice, chance and at_chance);
    then one per system figure (task "system")."""
    for r in report.results:
        row = {"model": r.model, "task": r.task, "metric": r.metric, "value": r.value, "n": r.n,
               "shots": r.shots, "seed": report.config.seed, "seconds": round(r.seconds, 3)}
        row.update({k: v for k, v in r.extra.items()})
        if r.ci is not None:
            row.update(ci_low=round(r.ci[0], 4), ci_high=round(r.ci[1], 4))
        if r.chance is not None:
            row.update(chance=round(r.chance, 4), at_chance=r.at_chance)
        if r.error:
            row["error"] = r.error
        yield json.dumps(row)
    for model, figures in report.systems.items():
        if figures is None:
            yield json.dumps({"model": model, "task": "system", "metric": None, "value": None, "n": 0,
                              "error": report.system_errors.get(model)})
            continue
        for key, _, _ in SYSTEM_METRICS:
            row = {"model": model, "task": "system", "metric": key, "value": getattr(figures, key),
                   "n": 1, "backend": figures.backend, "context": figures.context}
            if key == "joules_per_token":
                row["energy_counters"] = figures.energy_counters  # None with the value: none was readable
            yield json.dumps(row)
    for model, languages in report.fertility.items():
        for f in languages:
            yield json.dumps({"model": model, "task": "fertility", "metric": "tokens_per_word", "value": round(f.tokens_per_word, 4),
                              "n": f.sentences, **f.as_dict()})
    for model, error in report.fertility_errors.items():
        yield json.dumps({"model": model, "task": "fertility", "metric": None, "value": None, "n": 0, "error": error})


def table(report: EvalReport):
    """A rich Table: a row per task metric and system figure, a column per model."""
    from rich.table import Table

    models = list(dict.fromkeys([r.model for r in report.results] + list(report.systems)))
    grid = Table(title="kecil eval", show_lines=False)
    grid.add_column("task", no_wrap=True)
    grid.add_column("metric", no_wrap=True)
    grid.add_column("n", justify="right")
    for model in models:
        grid.add_column(model, justify="right", overflow="fold")
    tasks = list(dict.fromkeys(r.task for r in report.results))
    for task in tasks:
        row = {r.model: r for r in report.results if r.task == task}
        any_result = next(iter(row.values()))
        counts = {r.n for r in row.values() if r.value is not None}
        cells = [format_value(row[m]) if m in row else "" for m in models]
        if any_result.metric not in LOWER_IS_BETTER:
            values = [row[m].value for m in models if m in row and row[m].value is not None and not row[m].at_chance]
            best = max(values) if len(values) > 1 else None
            cells = [f"[bold]{c}[/bold]" if best is not None and m in row and row[m].value == best else c for m, c in zip(models, cells)]
        shots = next((r.shots for r in row.values()), 0)
        label = task + (f" ({shots}-shot)" if shots else "")
        grid.add_row(label, any_result.metric, "/".join(str(c) for c in sorted(counts)) or "0", *cells)
    if report.systems:
        grid.add_section()
        for key, label, fmt in SYSTEM_METRICS:
            cells = []
            for model in models:
                figures = report.systems.get(model)
                cells.append(fmt(getattr(figures, key)) if figures else report.system_errors.get(model, ""))
            grid.add_row("system", label, "", *cells)
    languages = list(dict.fromkeys(f.language for found in report.fertility.values() for f in found))
    if languages:
        grid.add_section()
        for code in languages:
            by_model = {m: next((f for f in report.fertility.get(m, []) if f.language == code), None) for m in models}
            name = next(f.name for f in by_model.values() if f is not None)
            sentences = next(f.sentences for f in by_model.values() if f is not None)
            grid.add_row("fertility", f"{name} ({code})", str(sentences), *[summary(f) if f else "" for f in by_model.values()])
    return grid
