"""What knowledge bases and the files in them are called, and where the SQLite engine keeps a
base: one file under $KECIL_HOME/kb named after it (store_sqlite.py; store.py picks the engine)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from kecil.errors import ConfigError
from kecil.paths import kecil_home, private_dir

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def display_path(path: str) -> str:
    """`path` as text any encoder takes: bytes of the name that are not UTF-8 (surrogates in a
    Python str) are written as \\xNN."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def raw_path(path: str) -> bytes | None:
    """The name's bytes when its display form is not the name itself, else None."""
    return None if display_path(path) == path else os.fsencode(path)


def kb_dir() -> Path:
    return private_dir(kecil_home() / "kb")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"knowledge base name {name!r} is not allowed: use letters, digits, '.', '_' or '-' (at most 64)")
    return name


def kb_path(name: str) -> Path:
    return kb_dir() / f"{check_name(name)}.sqlite"
