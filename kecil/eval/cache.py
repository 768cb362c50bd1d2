"""Per-item evaluation results on disk (SQLite under KECIL_HOME), so an interrupted run resumes.

Each result is stored under a key made of the model file's identity, the backend, the task
(name, prompt version, shots, seed) and the item id; a rerun with the same settings reads what
is there and evaluates only the rest. Results are committed every few items, so at most those
few are lost when a run is killed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from kecil.paths import kecil_home

COMMIT_EVERY = 8


class ResultCache:
    """A key -> JSON value store in one SQLite file; `with ResultCache() as cache:`."""

    def __init__(self, path: Path | None = None, *, enabled: bool = True):
        self.enabled = enabled
        self.path = path or kecil_home() / "eval" / "results.sqlite"
        self._db = None
        self._pending = 0
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()

    def get(self, key: str):
        if not self._db:
            return None
        row = self._db.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value) -> None:
        if not self._db:
            return
        self._db.execute("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", (key, json.dumps(value)))
        self._pending += 1
        if self._pending >= COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._db and self._pending:
            self._db.commit()
            self._pending = 0

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0] if self._db else 0

    def close(self) -> None:
        if self._db:
            self.flush()
            self._db.close()
            self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
