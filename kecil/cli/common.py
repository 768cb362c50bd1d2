"""What several commands share: the model-loading options, printing to stderr, progress bars, confirmation."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from kecil.cli.options import config_options
from kecil.errors import ConfigError
from kecil.infer.load import LoadOptions

# Options of every command that loads a model (infer/load.py's LoadOptions and load_model).
Backend = Annotated[Optional[str], typer.Option("--backend", "-b", help="llamacpp or torch (default: llamacpp for GGUF, torch for a Hugging Face folder).")]
Context = Annotated[Optional[int], typer.Option("--context", "-c", help="Context window in tokens (default: the model's, at most 4096).")]
Threads = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: physical cores).")]
Adapter = Annotated[Optional[str], typer.Option("--adapter", help="A LoRA adapter to apply: the -o folder of `kecil tune` (or a GGUF LoRA file with the llamacpp backend).")]
# --device, from LoadOptions' field: `@on_device` hands the command `load`, {"device": ...}, for load_model(**load).
on_device = config_options(LoadOptions, into="load", only=("device",), build=False)
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed when input is not a terminal).")]


def err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def limits_note(ref) -> str | None:
    """The one-line limits of a built-in model (resolved ModelRef), for the places a user first meets it."""
    from kecil.models.builtins import get_builtin

    builtin = get_builtin(ref.name) if ref.builtin else None
    return f"{ref.name}: {builtin.limits}" if builtin is not None and builtin.limits else None


def confirm(action: str, *, yes: bool) -> None:
    """Go ahead with `action` (which deletes something) only on --yes or the user's "y" on a terminal.

    Without a terminal (a script, a pasted pipeline) nothing is deleted unless --yes is given."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"will not {action} without confirmation: input is not a terminal, so pass --yes")
    if not typer.confirm(f"{action[0].upper()}{action[1:]}?", default=False, err=True):
        err("kecil: nothing was removed")
        raise typer.Exit(1)


def speed(timings) -> str:
    return (
        f"{timings.prompt_tokens} prompt tokens at {timings.prompt_tokens_per_second:.1f} tok/s, "
        f"{timings.decode_tokens + 1} generated at {timings.decode_tokens_per_second:.1f} tok/s"
    )


@contextmanager
def stage_bars(labels: dict[str, str], *, width: int, **options):
    """A `progress(stage, done, total)` callback drawing one rich bar per stage as it first reports;
    with stderr not a terminal (a log file, CI), plain lines instead (stage_lines)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = options.get("console")
    if not (console.is_terminal if console is not None else sys.stderr.isatty()):
        yield stage_lines(labels)
        return
    with Progress(TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), **options) as bar:
        bars: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(bars[stage], completed=done, total=total)

        yield progress


def stage_lines(labels: dict[str, str], every: float = 10.0):
    """A `progress(stage, done, total)` callback writing a line to stderr when a stage starts, every
    `every` seconds while it runs and when it ends: a bar draws nothing into a log, and a quantize
    report's measuring phase sat silent there for minutes."""
    import time

    last: dict[str, float] = {}
    finished: set[str] = set()

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage in finished:
            return
        if stage not in last or done >= total or now - last[stage] >= every:
            last[stage] = now
            if done >= total:
                finished.add(stage)
            err(f"{labels.get(stage, stage)}: {done}/{total}")

    return progress
