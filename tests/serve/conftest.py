"""Fixtures of the serve tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def qwen05_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), the smallest built-in whose chat template offers
    tools; KECIL_QWEN05_GGUF names another copy of the file."""
    if os.environ.get("KECIL_QWEN05_GGUF"):
        return Path(os.environ["KECIL_QWEN05_GGUF"])
    from kecil.models.builtins import builtin_path

    return builtin_path("qwen2.5-coder-0.5b")
