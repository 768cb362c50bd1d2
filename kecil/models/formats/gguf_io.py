"""Small pieces shared by everything that writes GGUF: float encodings and all-or-nothing output files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, quants

from kecil.errors import ConfigError
from kecil.scratch import owned_prefix


def encode_tensor(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Float values as the bytes of a float or q8_0 GGUF tensor (pure numpy, via gguf-py)."""
    values = np.asarray(values, dtype=np.float32)
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(values).view(np.uint8)
    if qtype == GGMLQuantizationType.F16:
        return np.ascontiguousarray(values.astype(np.float16)).view(np.uint8)
    return np.ascontiguousarray(quants.quantize(values, qtype)).view(np.uint8)


@contextlib.contextmanager
def atomic_output(output: Path) -> Iterator[Path]:
    """Yield a temporary path beside `output`; rename it to `output` only if the block succeeds.

    An interrupted or failed write leaves nothing at `output` (and removes the temporary file),
    so a half-written model can never be mistaken for a finished one.
    """
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"the output folder {parent} does not exist: create it or pick another -o path")
    if output.is_dir():
        raise ConfigError(f"{output} is a folder: give -o a file name such as {output / 'model.gguf'}")
    # the pid in the name lets a later run sweep this file if the process is killed (kecil.scratch)
    fd, name = tempfile.mkstemp(dir=parent, prefix=owned_prefix(output.name), suffix=".part")
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, 0o644)
        os.replace(temp, output)
    finally:
        temp.unlink(missing_ok=True)
