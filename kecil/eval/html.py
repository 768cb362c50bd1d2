"""The HTML report of `kecil eval --html`: the results table and matplotlib plots of quality against
size and against decode speed, with the Pareto front (models nothing else beats on both) marked,
and, for tasks in other languages, each tokenizer's tokens per language against English.

Plots are PNGs embedded as data URIs, so the report is one file that opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kecil.eval.confidence import mean_interval
from kecil.eval.fertility import summary
from kecil.eval.report import LOWER_IS_BETTER, SYSTEM_METRICS, format_value
from kecil.eval.run import EvalReport


@dataclass(frozen=True)
class Point:
    model: str
    quality: float
    size_mb: float | None
    decode: float | None
    error: float = 0.0  # half-width of the quality's 95% interval (accuracies only)


def quality_points(report: EvalReport) -> tuple[list[Point], str, bool]:
    """One point per model: the mean of its accuracy-like scores (in %), or its perplexity when
    only perplexity was measured. Returns (points, axis label, higher_is_better)."""
    accuracy = [r for r in report.results if r.value is not None and r.metric not in LOWER_IS_BETTER]
    use = accuracy or [r for r in report.results if r.value is not None]
    higher = bool(accuracy)
    tasks = sorted({r.task for r in use})
    label = ("mean score (%) over " if higher else "perplexity on ") + ", ".join(tasks)
    points = []
    for model in dict.fromkeys(r.model for r in use):
        mine = [r for r in use if r.model == model]
        values = [r.value for r in mine]
        quality = 100 * sum(values) / len(values) if higher else sum(values) / len(values)
        error = 100 * mean_interval(values, [r.n for r in mine]) if higher else 0.0
        figures = report.systems.get(model)
        points.append(Point(model, quality, figures.size_bytes / 1e6 if figures else None,
                            figures.decode_tokens_per_second if figures else None, error))
    return points, label, higher


def pareto_front(points: list[tuple[float, float]], *, lower_x_better: bool, higher_y_better: bool) -> list[int]:
    """Indices of points no other point beats on both axes (at least as good on both, better on one)."""

    def at_least(a: float, b: float, lower: bool) -> bool:
        return a <= b if lower else a >= b

    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            at_least(ox, x, lower_x_better) and at_least(oy, y, not higher_y_better) and (ox, oy) != (x, y)
            for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _plot(points: list[Point], attr: str, xlabel: str, ylabel: str, lower_x_better: bool, higher_y: bool) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [p for p in points if getattr(p, attr) is not None]
    if not usable:
        return None
    xy = [(getattr(p, attr), p.quality) for p in usable]
    front = pareto_front(xy, lower_x_better=lower_x_better, higher_y_better=higher_y)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.errorbar([x for x, _ in xy], [y for _, y in xy], yerr=[p.error for p in usable], fmt="o", color="#4477aa",
                ecolor="#99aacc", capsize=3, zorder=3, label="model (95% interval)")
    for p, (x, y) in zip(usable, xy):
        ax.annotate(p.model, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    line = sorted(xy[i] for i in front)
    ax.plot([x for x, _ in line], [y for _, y in line], color="#cc3311", linestyle="--", zorder=2)
    ax.scatter([x for x, _ in line], [y for _, y in line], s=140, facecolors="none", edgecolors="#cc3311",
               zorder=4, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if higher_y:
        ax.set_ylim(0, 100)  # the whole scale: a zoomed axis makes a few items' noise look like a gap
    else:
        ax.invert_yaxis()  # better is up either way
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _fertility_plot(report: EvalReport) -> str | None:
    """Grouped bars: each model's tokens for the same sentences in each language, English = 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = {m: {f.language: f.vs_english for f in found if f.vs_english is not None} for m, found in report.fertility.items()}
    languages = list(dict.fromkeys(code for found in ratios.values() for code in found))
    if not languages:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    width = 0.8 / len(ratios)
    for k, (model, by_language) in enumerate(ratios.items()):
        xs = [i + k * width for i, code in enumerate(languages) if code in by_language]
        ax.bar(xs, [by_language[code] for code in languages if code in by_language], width, label=model)
    ax.set_xticks([i + width * (len(ratios) - 1) / 2 for i in range(len(languages))], languages)
    ax.axhline(1.0, color="#888888", linewidth=0.8)
    ax.set_ylabel("tokens against English (same sentences)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def render(report: EvalReport) -> str:
    points, label, higher = quality_points(report)
    models = list(dict.fromkeys([r.model for r in report.results] + list(report.systems)))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for task in dict.fromkeys(r.task for r in report.results):
        by_model = {r.model: r for r in report.results if r.task == task}
        metric = next(iter(by_model.values())).metric
        n = max(r.n for r in by_model.values())
        cells = "".join(f"<td>{html.escape(format_value(by_model[m])) if m in by_model else ''}</td>" for m in models)
        rows.append(f"<tr><td>{html.escape(task)}</td><td>{metric}</td><td>{n}</td>{cells}</tr>")
    for key, name, fmt in SYSTEM_METRICS:
        cells = "".join(f"<td>{fmt(getattr(report.systems[m], key)) if report.systems.get(m) else ''}</td>" for m in models)
        rows.append(f"<tr class=sys><td>system</td><td>{name}</td><td></td>{cells}</tr>")
    for code in dict.fromkeys(f.language for found in report.fertility.values() for f in found):
        by_model = {m: next((f for f in report.fertility.get(m, []) if f.language == code), None) for m in models}
        known = next(f for f in by_model.values() if f is not None)
        cells = "".join(f"<td>{html.escape(summary(f)) if f else ''}</td>" for f in by_model.values())
        rows.append(f"<tr class=fert><td>fertility</td><td>{html.escape(known.name)} ({code})</td><td>{known.sentences}</td>{cells}</tr>")
    axis = "mean score (%)" if higher else "perplexity (lower is better)"  # the task list is too long for an axis
    plots = [
        ("Quality against size on disk", _plot(points, "size_mb", "size on disk (MB)", axis, True, higher)),
        ("Quality against decode speed", _plot(points, "decode", "decode speed (tokens/s)", axis, False, higher)),
    ]
    figures = "".join(
        f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'><figcaption>{html.escape(title)}; "
        f"quality: {html.escape(label)}; circled: the Pareto front (no other model is better on both axes)</figcaption></figure>"
        for title, png in plots if png
    ) or "<p>No system figures were measured (run without --no-system to get the plots).</p>"
    tokens = _fertility_plot(report)
    if tokens:
        figures += (f"<figure><img alt='Tokens against English' src='data:image/png;base64,{tokens}'><figcaption>Tokens each "
                    "tokenizer spends on the same 100 sentences (COPA's premises, translated), against English: 3 means three "
                    "times slower to read and write, and a third of the context.</figcaption></figure>")
    config = report.config
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kecil eval report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
tr.sys td,tr.fert td{{background:#f6f6f6}}figure{{display:inline-block;margin:1em;max-width:40em}}</style></head><body>
<h1>kecil eval</h1>
<p>Seed {config.seed}; limit {config.limit or 'none'}; shots {'task default' if config.shots is None else config.shots}.
Each accuracy is shown with the half-width of its 95% confidence interval (Wilson); "(chance)" marks one that guessing could have scored.
Fertility rows: the tokenizer's tokens per word and per character on the same 100 sentences in each language, and against English
(Thai and Chinese words by dictionary segmentation; Vietnamese counts syllables).</p>
<table><tr><th>task</th><th>metric</th><th>n</th>{head}</tr>
{''.join(rows)}
</table>
{figures}
</body></html>
"""


def write_html(report: EvalReport, path: Path) -> Path:
    """Write the report atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)  # mkstemp makes it private; a report is an ordinary file
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(render(report))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
