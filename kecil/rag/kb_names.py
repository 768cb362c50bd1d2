"""Where knowledge bases live and what they and the files in them are called: a base is one
SQLite file under $KECIL_HOME/kb named after it (store.py reads and writes it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from kecil.errors import ConfigError, KnowledgeBaseError
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


def list_kbs() -> list[str]:
    return sorted(p.stem for p in kb_dir().glob("*.sqlite"))


def remove_kb(name: str) -> Path:
    path = kb_path(name)
    if not path.exists():
        raise KnowledgeBaseError(missing_message(name))
    for extra in ("", "-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    return path


def missing_message(name: str) -> str:
    known = list_kbs()
    return (
        f"there is no knowledge base named {name!r} (known: {', '.join(known) or 'none'}): "
        f"create it with `kecil rag ingest DIR --kb {name}`"
    )
