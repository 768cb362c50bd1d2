"""Running the `kecil` command as a user does (a subprocess) and checking that an error is one clean line."""

from __future__ import annotations

import os
import subprocess
import sys


def kecil(*args: str, stdin: str | None = None, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m kecil ARGS` with `stdin` as input (none: an empty, non-terminal stdin)."""
    return subprocess.run(
        [sys.executable, "-m", "kecil", *args], input=stdin if stdin is not None else "", capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "KECIL_DEBUG": "", **(env or {})},
    )


def assert_clean_error(done: subprocess.CompletedProcess, *words: str) -> None:
    """Failed with one line `kecil: error: ...` on stderr (no traceback) that names each of `words`."""
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kecil: error:"), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
