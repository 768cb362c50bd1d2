"""Training checkpoints that survive a kill: everything a run needs to continue bit for bit.

A checkpoint holds the adapter weights, the optimizer and scheduler state, every random number
generator the run draws from, how many micro-batches were consumed, and the best adapter so far
by validation loss (the one the run will end with) with its step and loss. It is written into a
temporary folder and renamed into place, so a kill mid-write leaves the previous checkpoint
intact and never a half-written one. Only the newest few are kept. A checkpoint is read back whole
and checked before it is applied; a damaged one (cut short by a full disk, say) is passed over,
with a warning, for the newest one that is intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from kecil.errors import ConfigError

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
BEST_FILE = "best_adapter.safetensors"  # the adapter with the lowest validation loss so far
KEEP = 2


@dataclass(frozen=True)
class TrainState:
    """Where a run is: optimizer steps and micro-batches done, tokens seen, time spent."""

    step: int
    batches_done: int
    tokens_seen: int
    seconds: float
    fingerprint: dict  # settings and data hash: a resume must not change any of them
    # Keeping the best adapter (kecil/tune/training.py): each lives in the checkpoint, so a resumed
    # run compares and stops exactly as the uninterrupted one would.
    first_val_loss: float | None = None  # before the first step
    best_step: int | None = None  # the step whose adapter had the lowest validation loss so far
    best_val_loss: float | None = None
    evals_since_best: int = 0  # validations without improvement, for --patience
    stopped_early: bool = False  # the run ended at this step: patience ran out


def checkpoint_dirs(output: Path) -> list[Path]:
    """Complete checkpoints of the run in `output`, oldest first."""
    root = output / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(output: Path, state: TrainState, model, optimizer, scheduler, best: dict | None = None) -> Path:
    """Write a checkpoint of the run; `best` is the best adapter's weights so far (as
    get_peft_model_state_dict gives them), kept with it when the run measures a validation loss."""
    import torch
    from safetensors.torch import save_file

    from kecil.tune.adapter_files import saves_embeddings

    root = output / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:07d}"
    for stale in root.glob(".tmp-step-*"):  # half-written by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    temporary = root / f".tmp-step-{state.step:07d}-{os.getpid()}"
    temporary.mkdir()
    model.save_pretrained(str(temporary), save_embedding_layers=saves_embeddings(model))
    torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
    torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, temporary / "rng.pt")
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, str(temporary / BEST_FILE))
    # state.json last: a folder without it is not a checkpoint (see checkpoint_dirs).
    (temporary / STATE_FILE).write_text(json.dumps(state.__dict__, indent=1))
    _fsync_tree(temporary)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    for old in checkpoint_dirs(output)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class DamagedCheckpoint(Exception):
    """A checkpoint folder whose files cannot all be read back (truncated, corrupt or missing)."""


def read_checkpoint(directory: Path) -> dict:
    """Every file of a checkpoint, read whole and checked before any of it is applied: a truncated
    file (a full disk, a copy cut short) raises DamagedCheckpoint rather than half-restoring a run."""
    import torch
    from safetensors.torch import load_file

    try:
        best = directory / BEST_FILE
        return {
            "best": load_file(str(best)) if best.exists() else None,
            "state": json.loads((directory / STATE_FILE).read_text()),
            "weights": load_file(str(directory / "adapter_model.safetensors")),
            "optimizer": torch.load(directory / "optimizer.pt", weights_only=True),
            "scheduler": torch.load(directory / "scheduler.pt", weights_only=True),
            "rng": torch.load(directory / "rng.pt", weights_only=False),  # python's RNG state is a tuple
        }
    except Exception as exc:  # safetensors, torch's unpickler and json each fail their own way on a cut file
        raise DamagedCheckpoint(f"{directory.name} cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from exc


def load_checkpoint(directory: Path, model, optimizer, scheduler, files: dict | None = None) -> TrainState:
    """Restore adapter weights, optimizer, scheduler and RNGs from `directory` (or its `files`,
    already read by read_checkpoint); return its state."""
    import torch
    from peft import set_peft_model_state_dict

    files = files if files is not None else read_checkpoint(directory)
    set_peft_model_state_dict(model, files["weights"])
    optimizer.load_state_dict(files["optimizer"])
    scheduler.load_state_dict(files["scheduler"])
    torch.set_rng_state(files["rng"]["torch"])
    random.setstate(files["rng"]["python"])
    return TrainState(**files["state"])


def resume_latest(output: Path, fingerprint: dict, model, optimizer, scheduler, warn) -> tuple[TrainState, dict | None]:
    """Restore the newest checkpoint that reads back whole: (its state, the best adapter's weights
    so far or None). A damaged newer one is passed over, with `warn(message)` saying which and why.
    A good checkpoint of different settings is refused."""
    skipped = []
    for directory in reversed(checkpoint_dirs(output)):
        try:
            files = read_checkpoint(directory)
        except DamagedCheckpoint as exc:
            skipped.append(directory.name)
            warn(f"checkpoint {exc}; resuming from an earlier one")
            continue
        check_resumable(directory, fingerprint, files["state"])
        return load_checkpoint(directory, model, optimizer, scheduler, files), files["best"]
    raise ConfigError(
        f"no checkpoint in {output / CHECKPOINTS_DIR} can be read back (damaged: {', '.join(skipped)}): "
        "start a new run in another -o folder"
    )


def check_resumable(directory: Path, fingerprint: dict, state: dict | None = None) -> None:
    """Refuse a resume whose data or settings differ from the checkpointed run's."""
    saved = (state or json.loads((directory / STATE_FILE).read_text()))["fingerprint"]
    changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
        raise ConfigError(
            f"cannot resume from {directory}: the run was started with different settings or data ({detail}); "
            "resume with the original ones, or start a new run in another -o folder"
        )


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
