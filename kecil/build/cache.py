"""Where a build keeps each stage's output: a folder named by the stage and a hash of its inputs and settings.

`BUILD/tune-3f9c0a1b2c4d/` is complete when its `stage.json` is there; a stage writes into
`BUILD/.work-tune-3f9c0a1b2c4d/` and renames it into place only at the end, so a kill loses at
most the stage in progress (and tune's own checkpoints in the work folder let it resume inside
the stage). A changed setting changes that stage's key, and every later stage's key includes
the keys before it, so those rerun too; an unchanged stage is found and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "stage.json"


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value (keys sorted, paths as text)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    """The content hash of a file: a recipe's data moved or touched but unchanged keeps its stages."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """The content hash of every file under `folder` (hidden ones left out, as ingest leaves them), with their names."""
    if folder.is_file():
        return file_digest(folder)
    parts = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            parts.append((str(relative), file_digest(path)))
    return digest(parts)


@dataclass(frozen=True)
class StageSlot:
    """One stage's place in the build folder."""

    name: str
    key: str
    root: Path

    @property
    def folder(self) -> Path:
        return self.root / f"{self.name}-{self.key}"

    @property
    def work(self) -> Path:
        return self.root / f".work-{self.name}-{self.key}"

    @property
    def done(self) -> bool:
        return (self.folder / MANIFEST).is_file()

    def manifest(self) -> dict:
        return json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))

    @contextmanager
    def building(self, inputs: dict, *, keep_partial: bool = False):
        """Yield (work folder, a dict for the manifest); on success write the manifest (the inputs and
        what the caller put in the dict) and rename the folder into place.

        keep_partial: a work folder a killed run left is kept (tune resumes from its checkpoints);
        otherwise it is started afresh."""
        if self.work.exists() and not keep_partial:
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        extra: dict = {}
        yield self.work, extra
        manifest = {"stage": self.name, "key": self.key, "inputs": inputs,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
        (self.work / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        if self.folder.exists():  # an incomplete folder of the same key (no manifest): replaced
            shutil.rmtree(self.folder)
        os.replace(self.work, self.folder)


def stale_folders(root: Path, keep: set[str]) -> list[Path]:
    """Stage folders of earlier settings (not in `keep`), for the plan to mention; never deleted by a build."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in keep
                  and (p / MANIFEST).is_file())
