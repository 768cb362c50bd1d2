"""The `kecil` command tree: one Typer app that each command module registers its commands on.

Every command calls into the library; the modules here only parse flags, print, and turn a
KecilError into one clean line on stderr with a non-zero exit code. Heavy libraries (torch,
transformers, llama_cpp, numpy) are imported inside commands so `kecil --help` stays instant.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from kecil import __version__
from kecil.cli import build, evaluate, generate, models, prune, quantize, rag, redact, route, serve, tune
from kecil.cli.common import err
from kecil.errors import KecilError

app = typer.Typer(
    help="kecil: run small language models privately, offline, on the hardware you have.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The order here is the order of `kecil --help`.
for module in (generate, models, serve, tune, rag, route, redact, quantize, prune, evaluate, build):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        print(f"kecil {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False) -> None:
    pass


def main() -> None:
    """Entry point: library errors become one line on stderr, never a traceback."""
    try:
        app()
    except KecilError as exc:
        err(f"kecil: error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err("kecil: interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line; KECIL_DEBUG=1 shows the traceback
        if os.environ.get("KECIL_DEBUG"):
            raise
        err(f"kecil: internal error: {type(exc).__name__}: {exc} (rerun with KECIL_DEBUG=1 for the traceback, and please report it)")
        sys.exit(70)
