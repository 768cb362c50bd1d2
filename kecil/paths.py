"""Where kecil keeps its own files on this machine (assembled built-in models, caches)."""

from __future__ import annotations

import os
from pathlib import Path

from kecil.errors import ConfigError


def kecil_home() -> Path:
    """kecil's data folder: $KECIL_HOME if set, else ~/.cache/kecil; created on first call."""
    configured = os.environ.get("KECIL_HOME", "").strip()
    home = Path(configured).expanduser() if configured else Path.home() / ".cache" / "kecil"
    return _ensure_dir(home.absolute(), "KECIL_HOME")


def models_cache_dir() -> Path:
    """The folder for model files kecil builds itself (e.g. a built-in assembled from chunks)."""
    return _ensure_dir(kecil_home() / "models", "KECIL_HOME")


def _ensure_dir(path: Path, setting: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create kecil's data folder {path} ({error.strerror or error}): "
            f"set {setting} to a writable folder"
        ) from None
    return path
