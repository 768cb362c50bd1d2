"""Where kecil keeps its own files on this machine (assembled built-in models, caches, knowledge
bases, the audit log), private to the user who runs it: folders 0700, files 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kecil.errors import ConfigError


def kecil_home() -> Path:
    """kecil's data folder: $KECIL_HOME if set, else ~/.cache/kecil; created on first call."""
    configured = os.environ.get("KECIL_HOME", "").strip()
    home = Path(configured).expanduser() if configured else Path.home() / ".cache" / "kecil"
    return private_dir(home.absolute(), "KECIL_HOME")


def models_cache_dir() -> Path:
    """The folder for model files kecil builds itself (e.g. a built-in assembled from chunks)."""
    return private_dir(kecil_home() / "models", "KECIL_HOME")


def private_dir(path: Path, setting: str = "KECIL_HOME") -> Path:
    """`path`, created 0700 if missing. One that kecil's user owns and others can enter is closed
    to them: knowledge bases, the eval cache and the audit log hold documents and who asked what,
    and a 0700 folder keeps them private whatever mode a library gives the files inside."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        held = path.stat()
        if held.st_uid == os.geteuid() and stat.S_IMODE(held.st_mode) & 0o077:
            path.chmod(stat.S_IMODE(held.st_mode) & 0o700)
    except OSError as error:
        raise ConfigError(
            f"cannot create kecil's data folder {path} ({error.strerror or error}): "
            f"set {setting} to a writable folder"
        ) from None
    return path


def private_file(path: Path) -> Path:
    """Make an existing file of kecil's readable and writable by its user only (0600)."""
    try:
        if path.stat().st_uid == os.geteuid():
            path.chmod(0o600)
    except OSError:
        pass  # gone or not ours: nothing to tighten
    return path
