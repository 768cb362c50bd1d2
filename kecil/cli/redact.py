"""`kecil redact`: show what would leave the machine when a route escalates (kecil/route/redact.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from kecil.cli.common import AsJson
from kecil.cli.options import config_options
from kecil.errors import DataMissingError
from kecil.route.redact import RedactConfig


def _read(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataMissingError(f"{what} {path} does not exist: give a text file, or - to read standard input") from None
    except UnicodeDecodeError:
        raise DataMissingError(f"{what} {path} is not UTF-8 text: convert it first (e.g. iconv -t UTF-8)") from None
    except OSError as exc:
        raise DataMissingError(f"cannot read {what} {path}: {exc.strerror}") from None


def _entries(path: Optional[Path]) -> tuple[str, ...]:
    if path is None:
        return ()
    return tuple(line.strip() for line in _read(str(path), "list").splitlines() if line.strip() and not line.startswith("#"))


@config_options(RedactConfig, into="options", build=False)
def redact(
    options: dict,
    file: Annotated[str, typer.Argument(help="The text to redact: a UTF-8 file, or - (the default) for standard input.")] = "-",
    names_file: Annotated[Optional[Path], typer.Option("--names", help="A file of names to redact, one a line (any script; # starts a comment).")] = None,
    terms_file: Annotated[Optional[Path], typer.Option("--terms", help="A file of other terms to redact, one a line.")] = None,
    as_json: AsJson = False,
) -> None:
    """Print a text with its private values replaced by placeholders (<PERSON_1>, <NRIC_1> …), as a route
    sends it to a remote model; --json prints the spans found too. Nothing leaves the machine."""
    from kecil.route.redact import redact as run_redact

    config = RedactConfig(**{**options, "names": options["names"] + _entries(names_file),
                             "terms": options["terms"] + _entries(terms_file)})
    result = run_redact(_read(file, "file"), config)
    if as_json:
        print(json.dumps({"text": result.text, "spans": [s.as_dict() for s in result.spans], "counts": result.counts()},
                         ensure_ascii=False))
    else:
        sys.stdout.write(result.text if result.text.endswith("\n") else result.text + "\n")


def register(app: typer.Typer) -> None:
    app.command()(redact)
