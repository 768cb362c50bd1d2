"""A float copy of a GGUF model, kept so transformers loads it in a second instead of minutes.

transformers reads a GGUF file slowly: it parses the whole file three times (tokenizer, config,
weights: the vocabulary's 49k-150k strings each time, through numpy views one at a time) and
rebuilds its tensor-name table for every tensor. The embedded 135M model took 15-20 s on a quiet
2-core machine and 80 s on a busy one, paid again by every `kecil tune`, `merge`, `prune`,
`distill` and torch-backend `generate`. The same weights written once as a safetensors folder
load in about a second. The copy holds only the model (no user data), lives in kecil's private
folder keyed by the GGUF file's fingerprint (a file changed in place gets a new copy), and is
skipped for models whose float32 weights are over KECIL_FLOAT_COPY_MAX_GB (default 2, about
0.5B parameters) so that a large model never fills a disk unasked; `0` turns the copy off.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from kecil.errors import ConfigError
from kecil.models.reference import ModelRef, model_fingerprint
from kecil.paths import kecil_home, private_dir
from kecil.scratch import owned_prefix, sweep_stale

log = logging.getLogger(__name__)

MARKER = "kecil_float_copy.json"  # written last: a folder without it is incomplete
DEFAULT_MAX_GB = 2.0


def max_copy_bytes() -> int:
    """The largest float32 model that is copied, from KECIL_FLOAT_COPY_MAX_GB."""
    raw = os.environ.get("KECIL_FLOAT_COPY_MAX_GB", "").strip()
    try:
        gigabytes = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        raise ConfigError(f"KECIL_FLOAT_COPY_MAX_GB must be a number of GB (got {raw!r}); 0 turns the float copy off") from None
    if gigabytes < 0:
        raise ConfigError(f"KECIL_FLOAT_COPY_MAX_GB must be 0 or more (got {raw!r})")
    return int(gigabytes * 1e9)


def copy_folder(ref: ModelRef) -> Path:
    """Where the float copy of GGUF model `ref` is (or would be) kept."""
    return kecil_home() / "float-copies" / f"{ref.path.stem}-{model_fingerprint(ref.path)}"


def find_float_copy(ref: ModelRef) -> Path | None:
    """The complete float copy of `ref`, or None when there is none (yet) or copies are off.
    What a killed writer left half-written (as large as the model) is swept here, on every lookup:
    once the copy exists nothing writes there again, so a sweep only before writing would never run."""
    if ref.format != "gguf" or max_copy_bytes() == 0:
        return None
    folder = copy_folder(ref)
    sweep_stale(folder.parent)
    return folder if (folder / MARKER).is_file() else None


def keep_float_copy(ref: ModelRef, model, tokenizer) -> Path | None:
    """Write `model` and `tokenizer` (just loaded from GGUF `ref`, float32, on the CPU) as its float
    copy; None when it is too large to keep or cannot be written. Never fails the caller: a full
    disk or a read-only home only means the next load is slow again."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if ref.format != "gguf" or size > max_copy_bytes():
        return None
    target = copy_folder(ref)
    try:
        parent = private_dir(target.parent)
        # Written beside the target and renamed into place: a kill or a second process writing
        # the same copy at once never leaves a half-written folder where a loader looks.
        # (a dotted label: owned_prefix's bare-word form is only for words without a hyphen)
        staging = Path(tempfile.mkdtemp(prefix=owned_prefix(f"{target.name}.float-copy"), dir=parent))
        try:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            (staging / MARKER).write_text(json.dumps({"source": str(ref.path), "bytes": size}) + "\n")
            try:
                staging.rename(target)
            except OSError:
                if not (target / MARKER).is_file():
                    raise
                # Another process finished the same copy first: keep theirs.
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except (OSError, ConfigError) as exc:
        log.debug("no float copy of %s kept: %s", ref.path.name, exc)
        return None
    return target

