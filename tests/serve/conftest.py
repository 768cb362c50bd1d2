"""Fixtures of the serve tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def qwen05_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), the smallest built-in whose chat template offers
    tools (`make setup` pulls it)."""
    from kecil.models.builtins import builtin_path

    return builtin_path("qwen2.5-coder-0.5b")
