"""What a LoRA run reports while it trains, and a plain-line reporter for when no one watches a terminal.

A progress bar draws nothing into a log file: a run with stderr redirected showed no line for 12
minutes. `ProgressLines` writes one line every few seconds instead (step, loss, tokens/s, ETA),
plus the first and the last step, so a log shows the run is alive and how far it has got.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class TuneProgress:
    """One report to the progress callback, after every optimizer step."""

    step: int
    total_steps: int
    loss: float  # mean token loss of this step
    val_loss: float | None  # the latest validation loss, if any
    tokens_per_second: float
    eta_seconds: float


def clock_time(seconds: float) -> str:
    """`1h02m03s`, `2m05s` or `7s`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe(p: TuneProgress) -> str:
    """`loss 1.234 val 1.100 | 850 tok/s | ETA 1m02s`: what a bar shows beside its count."""
    val = f" val {p.val_loss:.3f}" if p.val_loss is not None else ""
    return f"loss {p.loss:.3f}{val} | {p.tokens_per_second:.0f} tok/s | ETA {clock_time(p.eta_seconds)}"


class ProgressLines:
    """A progress callback that writes `tune: step 40/150 loss 1.234 | 850 tok/s | ETA 1m02s` lines
    to `stream`, at most one every `every` seconds (and always the first and last step).

    `kecil tune` uses it in place of its bar when stderr is not a terminal:
    `progress = ProgressLines(sys.stderr) if not sys.stderr.isatty() else bar_callback`.
    """

    def __init__(self, stream: TextIO | None = None, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.every = every
        self.clock = clock
        self._last: float | None = None

    def __call__(self, p: TuneProgress) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.every and p.step < p.total_steps:
            return
        self._last = now
        stream = self.stream or sys.stderr
        print(f"tune: step {p.step}/{p.total_steps} {describe(p)}", file=stream, flush=True)


def progress_for(stream: TextIO | None, bar: Callable[[TuneProgress], None], every: float = 10.0) -> Callable[[TuneProgress], None]:
    """`bar` when `stream` is a terminal, else a ProgressLines writing to it: one call for the CLI."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bar if isatty is not None and isatty() else ProgressLines(stream, every)
