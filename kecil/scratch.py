"""Temporary files and folders a run writes beside its output, named after the run's process id so
that a later run can sweep what a killed one left behind without touching a live run's.

A name looks like `.model.gguf.kecil-4242-x1y2.part` (a file renamed into place when whole) or
`.kecil-quantize-4242-x1y2` (a working folder); 4242 is the writer's pid.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from pathlib import Path

_OWNED = re.compile(r"^\.(?:.+\.)?kecil-(?:[a-z]+-)?(?P<pid>\d+)-")
# A process whose start is later than a file's last change cannot have written it: its pid was
# reused after the owner died. The slack absorbs clock granularity.
_START_SLACK_SECONDS = 2.0
# Names kecil used before they carried a pid: no owner to ask, so removed once a day old (no run
# of kecil takes that long to write one file).
_LEGACY = re.compile(r"^\.(?:kecil-quantize-[a-z0-9_]{8}|.+\.gguf\.[a-z0-9_]{8}\.part)$")
LEGACY_AGE_SECONDS = 24 * 3600
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def owned_prefix(label: str = "") -> str:
    """A mkstemp/mkdtemp prefix that records this process as the owner: `.{label}.kecil-{pid}-`,
    or `.kecil-{label}-{pid}-` for a bare word such as "quantize"."""
    if label and "." not in label:
        return f".kecil-{label}-{os.getpid()}-"
    return f".{label}.kecil-{os.getpid()}-" if label else f".kecil-{os.getpid()}-"


def sweep_stale(folder: Path) -> list[Path]:
    """Remove the owned temporaries directly in `folder` whose owner process is gone; return them."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED.match(entry.name)
        if not match and not _LEGACY.match(entry.name):
            continue
        try:
            changed = entry.lstat().st_mtime
        except OSError:
            continue  # gone meanwhile
        if _alive(int(match["pid"]), changed) if match else time.time() - changed < LEGACY_AGE_SECONDS:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            continue  # not ours to remove (permissions): leave it
        removed.append(entry)
    return removed


def _alive(pid: int, changed: float) -> bool:
    """Whether process `pid` may still be writing a file last changed at `changed` (epoch seconds)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # killed, waiting for its parent to reap it
        return process.create_time() <= changed + _START_SLACK_SECONDS
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # access denied: keep the file
        return True


def is_disk_full(error: OSError) -> bool:
    """Whether a failed write ran out of space: ENOSPC or a quota, or the short write numpy's
    `tofile` reports without an errno ("34816 requested and 17184 written")."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return error.errno is None and _SHORT_WRITE.search(str(error)) is not None


def disk_full(folder: Path, needed: int | None, what: str):
    """The error for ENOSPC while writing `what` into `folder`: where, how much was needed, what to do."""
    from kecil.errors import KecilError

    try:
        free = f"{format_bytes(shutil.disk_usage(folder).free)} is free there"
    except OSError:
        free = "its free space could not be read"
    need = f"needs about {format_bytes(needed)}" if needed else "needs more space"
    return KecilError(
        f"the disk is full: writing {what} into {folder} {need} and {free}; nothing was left behind. "
        "Free some space or write to another disk (-o elsewhere, or KECIL_HOME on a bigger disk)"
    )


def format_bytes(n: int) -> str:
    """98362432 -> '93.8 MiB' (as kecil.models.info writes sizes; this module sits below models)."""
    for scale, suffix in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n} B"
