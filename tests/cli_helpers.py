"""Running the `kecil` command as a user does (a subprocess) and checking that an error is one clean line."""

from __future__ import annotations

import os
import re
import subprocess
import sys


PROGRESS_LINE = re.compile(r"[^:\n]+: \d+/\d+")


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
    # Before the error, a command may have written progress lines ("stage: done/total", what its
    # bars become when stderr is not a terminal); nothing else.
    *progress, last = done.stderr.strip().splitlines() or [""]
    assert all(PROGRESS_LINE.fullmatch(line) for line in progress), done.stderr
    assert last.startswith("kecil: error:"), last
    for word in words:
        assert word.lower() in last.lower(), (word, last)
