"""How benchmark results leave a script: one JSON line per number on stdout, a table on stderr."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence


def emit(**record) -> dict:
    """Print one result as a JSON line (keys in the order given) and return it."""
    print(json.dumps(record), flush=True)
    return record


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned text table on stderr, for people; stdout stays machine-readable."""
    cells = [list(map(str, header))] + [["-" if c is None else _cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    print("\n".join(lines), file=sys.stderr, flush=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)
