"""The SQLite engine of the knowledge-base store (store.py), the default: one SQLite file per
knowledge base holding files, chunks, an FTS5 index for BM25 and the chunk embeddings, searched
through an in-memory matrix.

A chunk has one or more vectors (one per few-sentence window of it, ingest.py); they sit in one
BLOB, so a chunk's vectors go in and out with it, and a store written with one vector per chunk
reads the same way.

A file name that is not UTF-8 (Linux allows any bytes) is kept twice: `path` shows it with the bad
bytes escaped (`\\xff`), which SQLite, JSON and a terminal all take, and `raw_path` holds its bytes,
so ingest finds the same file again (kb_names.display_path, files()).

SQLite runs in WAL mode so a search reads while an ingest writes, and every file is replaced in
one transaction, so an ingest killed midway leaves each file either fully in or fully out.
Vectors are float32 BLOBs in the same file (the one source of truth) and are searched as a numpy
matrix loaded once and topped up as rows are added: sqlite-vec cannot be loaded by this Python's
sqlite3 (built without extension loading), and the matrix product measures well under the
latency target at 100k chunks (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kecil.errors import KnowledgeBaseError
from kecil.paths import private_file
from kecil.rag import dense
from kecil.rag.chunking import TextChunk, index_text
from kecil.rag.kb_names import display_path, kb_dir, kb_path, raw_path
from kecil.rag.store import FileRecord, KnowledgeBase, Location, StoredChunk, Vectors, missing_message
from kecil.rag.tokenise import fts_document, fts_match

if TYPE_CHECKING:
    import numpy as np

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,          -- absolute, resolved; bytes that are not UTF-8 shown as \\xNN
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    ingested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so the vector matrix can be topped up
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    section TEXT NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    line_start INTEGER NOT NULL,
    line_end INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_file ON chunks(file_id);
-- embedding: the chunk's vectors, float32 little-endian, one after another (length = n * dimension * 4)
CREATE TABLE IF NOT EXISTS vectors (chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE, embedding BLOB NOT NULL);
-- Terms come pre-tokenised (tokenise.py); `ascii` only splits them at the spaces between them.
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(terms, tokenize = 'ascii');
-- How many chunks hold each term: lets a query leave out terms in most chunks (retrieve.py).
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vocab USING fts5vocab(chunks_fts, 'row');
"""


# --- the engine's module interface (store.py calls these) ----------------------------------------
def open_location(location: Location, *, create: bool = False, embedder: str | None = None, dimension: int | None = None) -> SQLiteKnowledgeBase:
    path = kb_path(location.name)
    if not path.exists() and not create:
        raise KnowledgeBaseError(missing_message(location.name))
    return SQLiteKnowledgeBase.open_path(path, location, create=create, embedder=embedder, dimension=dimension)


def exists(location: Location) -> bool:
    return kb_path(location.name).exists()


def names(_: Location) -> list[str]:
    return sorted(p.stem for p in kb_dir().glob("*.sqlite"))


def remove(location: Location) -> str:
    path = kb_path(location.name)
    for extra in ("", "-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    return str(path)


class SQLiteKnowledgeBase(KnowledgeBase):
    """A knowledge base in one SQLite file; one connection, shared by a server's threads."""

    fatal_errors = (sqlite3.OperationalError,)

    def __init__(self, location: Location, path: Path, connection: sqlite3.Connection):
        self.location = location
        self.name = location.name
        self.path = path
        self._db = connection
        self._lock = threading.RLock()  # one connection, shared by a server's threads
        self._matrix_state: tuple[str, str] | None = None
        self._vectors: Vectors | None = None
        self._count_state: tuple[str | None, str | None] | None = None
        self._count = 0
        self._term_counts: dict[str, int] = {}  # valid for _count_state

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def open_path(cls, path: Path, location: Location | None = None, *, create: bool = False,
                  embedder: str | None = None, dimension: int | None = None, read_only: bool = False) -> SQLiteKnowledgeBase:
        """Open the knowledge base in the SQLite file `path` (one of $KECIL_HOME/kb, or an export).
        `read_only` (an import's source) changes nothing in the file: not its schema, journal or mode."""
        # a named knowledge base comes with its location; a bare file is an export given to import
        remedy = (f"remove it with `kecil rag remove {location.name}` and ingest again" if location is not None
                  else "give a file that `kecil rag export NAME FILE` wrote")
        location = location or Location("sqlite", path.stem, shown=str(path))
        if not path.exists() and not create:
            raise KnowledgeBaseError(f"{path} does not exist: give the file `kecil rag export` wrote")
        if read_only:
            return cls._open_read_only(path, location, remedy, embedder, dimension)
        try:
            db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
            db.execute("PRAGMA foreign_keys = ON")
            db.executescript(_SCHEMA)
            for extra in ("", "-wal", "-shm"):  # SQLite makes them 0644; the WAL and SHM take the main file's mode
                private_file(Path(f"{path}{extra}"))
            if "raw_path" not in {row[1] for row in db.execute("PRAGMA table_info(files)")}:  # made before it existed
                try:
                    db.execute("ALTER TABLE files ADD COLUMN raw_path BLOB")
                except sqlite3.OperationalError:
                    pass  # read-only: searching does not need it, and an ingest will say it cannot write
        except sqlite3.DatabaseError as exc:
            raise KnowledgeBaseError(f"{path} is not a usable knowledge base ({exc}): {remedy}") from None
        kb = cls(location, path, db)
        kb._settle_embedder(embedder, dimension)
        return kb

    @classmethod
    def _open_read_only(cls, path: Path, location: Location, remedy: str, embedder, dimension) -> SQLiteKnowledgeBase:
        # A file given to `kecil rag import` may be any SQLite database the user has: opening it
        # as a store would add kecil's tables to it and make it 0600, so it is only read here.
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise KnowledgeBaseError(f"{path} is not a usable knowledge base ({exc}): {remedy}") from None
        if not {"meta", "files", "chunks"} <= tables:
            db.close()
            raise KnowledgeBaseError(f"{path} is not a usable knowledge base (it has no kecil tables): {remedy}")
        kb = cls(location, path, db)
        kb._settle_embedder(embedder, dimension)
        return kb

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _write_meta(self, values: dict[str, str]) -> None:
        with self._write_txn():
            for key, value in {"schema": SCHEMA_VERSION, "generation": "0", "removals": "0", **values}.items():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # --- writing -------------------------------------------------------------------------
    class _write:
        """BEGIN IMMEDIATE ... COMMIT, bumping the generation the vector matrix is keyed on."""

        def __init__(self, kb: SQLiteKnowledgeBase, removal: bool = False):
            self.kb, self.removal = kb, removal

        def __enter__(self):
            self.kb._lock.acquire()
            self.kb._db.execute("BEGIN IMMEDIATE")
            return self.kb._db

        def __exit__(self, kind, value, tb) -> None:
            db = self.kb._db
            try:
                if kind is None:
                    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                    if self.removal:
                        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'removals'")
                    db.execute("COMMIT")
                else:
                    db.execute("ROLLBACK")
            finally:
                self.kb._lock.release()

    def _write_txn(self, removal: bool = False):
        return SQLiteKnowledgeBase._write(self, removal)

    def files(self) -> dict[str, FileRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, COALESCE(raw_path, path), sha256, size, mtime_ns, chunks FROM files").fetchall()
        records = [FileRecord(row[0], os.fsdecode(row[1]) if isinstance(row[1], bytes) else row[1], *row[2:]) for row in rows]
        return {r.path: r for r in records}

    def replace_file(self, path: str, sha256: str, size: int, mtime_ns: int, chunks: Sequence[TextChunk], vectors: Sequence[np.ndarray]) -> None:
        assert len(chunks) == len(vectors)
        self._check_vectors(vectors)
        with self._write_txn(removal=True) as db:
            self._delete_file(db, path)
            file_id = db.execute(
                "INSERT INTO files (path, raw_path, sha256, size, mtime_ns, chunks, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (display_path(path), raw_path(path), sha256, size, mtime_ns, len(chunks), time.time()),
            ).lastrowid
            for order, (chunk, vector) in enumerate(zip(chunks, vectors)):
                chunk_id = db.execute(
                    "INSERT INTO chunks (file_id, ord, section, text, page, line_start, line_end) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (file_id, order, chunk.section, chunk.text, chunk.page, chunk.start, chunk.end),
                ).lastrowid
                db.execute("INSERT INTO vectors VALUES (?, ?)", (chunk_id, vector.astype("<f4").tobytes()))
                db.execute("INSERT INTO chunks_fts (rowid, terms) VALUES (?, ?)", (chunk_id, fts_document(index_text(chunk.text, chunk.section))))

    def touch_file(self, path: str, size: int, mtime_ns: int) -> None:
        with self._lock:
            self._db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", (size, mtime_ns, display_path(path)))

    def remove_files(self, paths: Sequence[str]) -> int:
        if not paths:
            return 0
        with self._write_txn(removal=True) as db:
            return sum(self._delete_file(db, p) for p in paths)

    @staticmethod
    def _delete_file(db: sqlite3.Connection, path: str) -> int:
        row = db.execute("SELECT id FROM files WHERE path = ?", (display_path(path),)).fetchone()
        if row is None:
            return 0
        db.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE file_id = ?)", row)
        db.execute("DELETE FROM vectors WHERE chunk_id IN (SELECT id FROM chunks WHERE file_id = ?)", row)
        db.execute("DELETE FROM chunks WHERE file_id = ?", row)
        db.execute("DELETE FROM files WHERE id = ?", row)
        return 1

    # --- reading -------------------------------------------------------------------------
    def bm25(self, terms: Sequence[str], limit: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        match = fts_match(list(terms))
        if match is None:
            return []
        with self._lock:
            # ORDER BY the bm25() column, not FTS5's `rank`: the same order, but `rank` makes FTS5
            # copy every match's positions into its own sorter, measured 1.5x slower at 100k chunks.
            if allowed is None:
                rows = self._db.execute(
                    "SELECT rowid, -bm25(chunks_fts) AS score FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY score DESC, rowid LIMIT ?",
                    (match, limit),
                ).fetchall()
            else:  # a filter: rank every match, keep the allowed (rare, and still one index query)
                rows = [r for r in self._db.execute(
                    "SELECT rowid, -bm25(chunks_fts) AS score FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY score DESC, rowid", (match,)
                ) if r[0] in allowed][:limit]
        return rows

    def term_chunks(self, terms: Sequence[str]) -> tuple[dict[str, int], int]:
        """FTS5 keeps no count of the chunks holding a term: fts5vocab walks the term's whole list
        of chunks, ~1 ms for a common word at 100k chunks, so the counts are remembered until the
        next write (common words recur in every question)."""
        if not terms:
            return {}, 0
        with self._lock:
            state = (self.meta("generation"), self.meta("removals"))
            if self._count_state != state:
                self._count = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
                self._term_counts.clear()
                self._count_state = state
            known = self._term_counts
            if len(known) > 100_000:  # bounded: a server sees endless new words
                known.clear()
            todo = [t for t in dict.fromkeys(terms) if t not in known]
            if todo:
                marks = ",".join("?" * len(todo))
                found = dict(self._db.execute(f"SELECT term, doc FROM chunks_vocab WHERE term IN ({marks})", todo).fetchall())
                known.update((t, found.get(t, 0)) for t in todo)
            return {t: known[t] for t in terms}, self._count

    def dense_scores(self, vector: np.ndarray, allowed: set[int] | None = None) -> dense.DenseScores:
        """One product over the whole matrix, then the best row of each chunk."""
        import numpy as np

        vectors = self.vectors()
        ids = vectors.ids
        if not len(ids):
            return dense.DenseScores(ids, np.zeros(0, np.float32))
        scores = vectors.best(dense.similarities(vectors.matrix, vector))
        if allowed is not None:
            scores = np.where(np.isin(ids, np.fromiter(allowed, np.int64, len(allowed))), scores, -np.inf)
        return dense.DenseScores(ids, scores)

    def vectors(self) -> Vectors:
        """Kept in memory and brought up to date cheaply: new chunks are appended; after a
        removal the matrix is read again."""
        import numpy as np

        with self._lock:
            generation, removals = self.meta("generation"), self.meta("removals")
            if self._matrix_state == (generation, removals):
                return self._vectors
            dim = self.dimension
            if self._matrix_state is None or self._matrix_state[1] != removals:
                after, held = 0, Vectors(np.zeros(0, np.int64), np.zeros((0, dim), np.float32), np.zeros(0, np.int64))
            else:
                held = self._vectors
                after = int(held.ids[-1]) if len(held.ids) else 0
            rows = self._db.execute("SELECT chunk_id, embedding FROM vectors WHERE chunk_id > ? ORDER BY chunk_id", (after,)).fetchall()
            if rows:
                counts = np.fromiter((len(r[1]) // (4 * dim) for r in rows), np.int64, len(rows))
                new = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(-1, dim)
                starts = len(held.matrix) + np.concatenate([[0], np.cumsum(counts)[:-1]])
                held = Vectors(np.concatenate([held.ids, np.fromiter((r[0] for r in rows), np.int64, len(rows))]),
                               np.concatenate([held.matrix, new]), np.concatenate([held.starts, starts]))
            self._vectors, self._matrix_state = held, (generation, removals)
            return held

    def chunk_ids_under(self, path: str) -> set[int]:
        path = display_path(path)
        like = path.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path = ? OR f.path LIKE ? ESCAPE '\\'",
                (path.rstrip("/"), like),
            ).fetchall()
        return {r[0] for r in rows}

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT c.id, f.path, c.section, c.text, c.page, c.line_start, c.line_end FROM chunks c "
                f"JOIN files f ON f.id = c.file_id WHERE c.id IN ({marks})",
                list(ids),
            ).fetchall()
        return {row[0]: StoredChunk(*row) for row in rows}

    def file_chunks(self, path: str) -> tuple[list[TextChunk], list[np.ndarray]]:
        import numpy as np

        with self._lock:
            rows = self._db.execute(
                "SELECT c.text, c.section, c.line_start, c.line_end, c.page, v.embedding FROM chunks c JOIN files f ON f.id = c.file_id "
                "JOIN vectors v ON v.chunk_id = c.id WHERE f.path = ? ORDER BY c.ord", (display_path(path),)
            ).fetchall()
        dim = self.dimension
        return ([TextChunk(*row[:5]) for row in rows], [np.frombuffer(row[5], dtype="<f4").reshape(-1, dim) for row in rows])

    def stats(self) -> dict:
        with self._lock:
            files, chunks = self._db.execute("SELECT COUNT(*), COALESCE(SUM(chunks), 0) FROM files").fetchone()
            # length() of a BLOB comes from its record header: the vectors themselves are not read
            vector_bytes = self._db.execute("SELECT COALESCE(SUM(length(embedding)), 0) FROM vectors").fetchone()[0]
            size = sum(Path(f"{self.path}{extra}").stat().st_size for extra in ("", "-wal") if Path(f"{self.path}{extra}").exists())
        return {
            "name": self.name, "path": str(self.path), "files": files, "chunks": chunks,
            "vectors": vector_bytes // (4 * self.dimension) if self.dimension else 0,
            "embedder": self.embedder_name, "dimension": self.dimension, "bytes": size,
        }
