"""The build report: report.json for machines and report.html for people, written whether the gate passed or not.

Both hold every stage's time and peak RAM (and whether it came from the cache), the base and the
result side by side on every task, their size and speed, and the gate's checks with their numbers.
Nothing of the user's data is in it: task names and scores, never prompts or answers.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path


def _atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def evaluation_table(evaluation: dict) -> list[dict]:
    """One row per task: base, result and the change, in the order the recipe names them."""
    scores = {(r["model"], r["task"]): r for r in evaluation.get("results", [])}
    rows = []
    for task in [*evaluation.get("own_tasks", []), *evaluation.get("general_tasks", [])]:
        base, result = scores.get(("base", task), {}), scores.get(("result", task), {})
        b, r = base.get("value"), result.get("value")
        rows.append({"task": task, "yours": task in evaluation.get("own_tasks", []), "metric": (result or base).get("metric"),
                     "base": b, "result": r, "change": (r - b) if b is not None and r is not None else None,
                     "n": result.get("n") or base.get("n"), "error": result.get("error") or base.get("error")})
    return rows


def write_reports(folder: Path, report: dict) -> tuple[Path, Path]:
    """report.json and report.html in `folder`, each written whole then renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic(folder / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    _atomic(folder / "report.html", render_html(report))
    return folder / "report.json", folder / "report.html"


def _cell(value, percent: bool = True) -> str:
    if value is None:
        return "&ndash;"
    return f"{100 * value:+.1f}" if percent == "signed" else (f"{100 * value:.1f}%" if percent else html.escape(str(value)))


def _mib(n) -> str:
    return "&ndash;" if not n else f"{n / 2**20:.0f} MiB"


def _joules(value, none: str = "not readable here") -> str:
    return none if value is None else f"{value:.3g} J"


def _plot(points: list[tuple[str, float, float]], x_label: str, y_label: str) -> str:
    """A small SVG scatter of (name, x, y): the result against the base, quality against size or speed."""
    if len(points) < 2:
        return ""
    width, height, pad = 320, 200, 40
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    x0, x1 = min(xs) * 0.9, max(xs) * 1.1 or 1
    y0, y1 = 0.0, max(1.0, max(ys))

    def at(x: float, y: float) -> tuple[float, float]:
        return (pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad), height - pad - (y - y0) / ((y1 - y0) or 1) * (height - 2 * pad))

    marks = "".join(f'<circle cx="{at(x, y)[0]:.0f}" cy="{at(x, y)[1]:.0f}" r="5"/><text x="{at(x, y)[0] + 8:.0f}" '
                    f'y="{at(x, y)[1] + 4:.0f}">{html.escape(name)} ({100 * y:.0f}%)</text>' for name, x, y in points)
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(y_label)} against {html.escape(x_label)}" '
            f'style="font-size:11px"><line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>{marks}'
            f'<text x="{width / 2 - 30:.0f}" y="{height - 10}">{html.escape(x_label)}</text>'
            f'<text x="4" y="{pad - 12}">{html.escape(y_label)}</text></svg>')


def plots(report: dict) -> str:
    """Quality on the user's tasks (their mean) against size on disk and against decode speed, base and result."""
    own = [r for r in report["evaluation"] if r["yours"]]
    systems = report.get("systems") or {}
    figures = []
    for axis, key, scale in (("size (MiB)", "size_bytes", 2**-20), ("decode tokens/s", "decode_tokens_per_second", 1.0)):
        points = []
        for model in ("base", "result"):
            scores = [r[model] for r in own if r[model] is not None]
            figure = (systems.get(model) or {}).get(key)
            if scores and figure:
                points.append((model, figure * scale, sum(scores) / len(scores)))
        figures.append(_plot(points, axis, "your tasks"))
    return "".join(figures)


def render_html(report: dict) -> str:
    e = html.escape
    verdict = report["gate"]
    stages = "".join(
        f"<tr><td>{e(s['name'])}</td><td>{'cached' if s['cached'] else 'ran'}</td><td>{s['seconds']:.1f} s</td>"
        f"<td>{_mib(s.get('peak_rss_bytes'))}</td><td>{_joules(s.get('joules'), '&ndash;')}</td>"
        f"<td><code>{e(s['key'])}</code></td></tr>" for s in report["stages"])
    tasks = "".join(
        f"<tr><td>{e(r['task'])}{' (yours)' if r['yours'] else ''}</td><td>{e(str(r['metric']))}</td><td>{_cell(r['base'])}</td>"
        f"<td>{_cell(r['result'])}</td><td>{_cell(r['change'], 'signed')}</td><td>{r['n'] or ''}</td>"
        f"<td>{e(r['error'] or '')}</td></tr>" for r in report["evaluation"])
    systems = "".join(
        f"<tr><td>{e(name)}</td><td>{_mib(s.get('file_size_bytes') or s.get('size_bytes'))}</td>"
        f"<td>{_mib(s.get('peak_rss_bytes'))}</td><td>{(s.get('decode_tokens_per_second') or 0):.1f}</td>"
        f"<td>{(s.get('prompt_tokens_per_second') or 0):.1f}</td><td>{_joules(s.get('joules_per_token'))}</td></tr>"
        for name, s in report.get("systems", {}).items() if s)
    checks = "".join(f"<li class={'pass' if c['passed'] else 'fail'}>{'passed' if c['passed'] else 'MISSED'}: {e(c['text'])}</li>"
                     for c in verdict["checks"])
    energy = e(report.get("energy", ""))
    title = f"kecil build {e(report['name'])}: {'passed' if verdict['passed'] else 'gate missed'}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}
td:first-child,th:first-child{{text-align:left}}.pass{{color:#060}}.fail{{color:#a00;font-weight:bold}}</style></head>
<body><h1>{title}</h1>
<p>Base <code>{e(report['base'])}</code>, result <code>{e(report.get('result_gguf') or 'not exported')}</code>,
built {e(report['finished'])} in {report['seconds']:.1f} s.</p>
<h2>Gate</h2><ul>{checks}</ul>
<h2>Base and result</h2>
<table><tr><th>task</th><th>metric</th><th>base</th><th>result</th><th>change (points)</th><th>items</th><th>error</th></tr>{tasks}</table>
<table><tr><th>model</th><th>size</th><th>peak RAM</th><th>decode tok/s</th><th>prompt tok/s</th><th>energy per token</th></tr>{systems}</table>
{plots(report)}
<p>Energy of the build: {energy}</p>
<h2>Stages</h2>
<table><tr><th>stage</th><th></th><th>time</th><th>peak RAM</th><th>energy</th><th>key</th></tr>{stages}</table>
</body></html>
"""
