"""What a knowledge base's store does, whichever engine holds it, and the lookup that picks the
engine from the knowledge base's location.

Two engines share the interface below: SQLite (store_sqlite.py: one file per knowledge base under
$KECIL_HOME/kb, the default) and PostgreSQL with pgvector (store_postgresql.py: one schema per
knowledge base, for several servers sharing one store or a store that outgrows a file). A
location that starts with `postgresql://` (or `postgres://`) is PostgreSQL; any other is a name,
SQLite, unless KECIL_RAG_STORE names a PostgreSQL database, where names then live (a server's
replicas set it once). Nothing above this module knows which engine answers: ingest, retrieval,
ask, serve and export/import call only these methods.
"""

from __future__ import annotations

import abc
import importlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from kecil.errors import ConfigError, KnowledgeBaseError
from kecil.rag.kb_names import check_name

if TYPE_CHECKING:
    import numpy as np

    from kecil.rag.chunking import TextChunk
    from kecil.rag.dense import DenseScores

SCHEMES = ("postgresql://", "postgres://")
STORE_VARIABLE = "KECIL_RAG_STORE"


@dataclass(frozen=True)
class Vectors:
    """Every chunk's vectors as one matrix: chunk `ids[i]` owns rows `starts[i]` up to the next start."""

    ids: np.ndarray  # chunk ids, ascending (chunk ids are never reused)
    matrix: np.ndarray  # float32, one row per vector
    starts: np.ndarray  # int64, the first row of each chunk

    def best(self, row_scores: np.ndarray) -> np.ndarray:
        """Each chunk's best score among its rows (`row_scores` has one per matrix row)."""
        import numpy as np

        if len(row_scores) == len(self.ids):  # one vector per chunk
            return row_scores
        return np.maximum.reduceat(row_scores, self.starts) if len(self.ids) else row_scores[:0]


@dataclass(frozen=True)
class FileRecord:
    id: int
    path: str
    sha256: str
    size: int
    mtime_ns: int
    chunks: int


@dataclass(frozen=True)
class StoredChunk:
    id: int
    path: str
    section: str
    text: str
    page: int | None
    start: int
    end: int


# --- where a knowledge base lives ---------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A knowledge base's place: its engine, its name, and for PostgreSQL the connection string
    (credentials inside: `shown` is the form without a password, for messages)."""

    engine: str  # "sqlite" or "postgresql"
    name: str
    conninfo: str = ""
    shown: str = ""


def locate(kb: str) -> Location:
    """Where knowledge base `kb` (a name or a postgresql:// URL) lives."""
    if kb.startswith(SCHEMES):
        return _postgres_location(kb)
    store = os.environ.get(STORE_VARIABLE, "").strip()
    if store:
        if not store.startswith(SCHEMES):
            raise ConfigError(f"{STORE_VARIABLE} must be a postgresql://... URL (or unset for SQLite files), not {store[:30]!r}...")
        return _postgres_location(store, check_name(kb))
    return Location("sqlite", check_name(kb), shown=kb)


def check_location(kb: str) -> str:
    """`kb` if it is a knowledge-base name or a PostgreSQL URL kecil can use, else a ConfigError."""
    locate(kb)
    return kb


def _postgres_location(url: str, name: str | None = None) -> Location:
    """Parse `postgresql://[user[:password]@][host][:port][/database][?params]`. The parameter
    `kb=NAME` names the knowledge base (default: the database's name); the rest go to libpq."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"the PostgreSQL URL is not valid ({exc}): write it as postgresql://USER@HOST:PORT/DATABASE") from None
    params = parse_qsl(parts.query, keep_blank_values=True)
    name = name or next((v for k, v in params if k == "kb"), None) or unquote(parts.path.lstrip("/")) or os.environ.get("PGDATABASE")
    if not name:
        raise ConfigError("the PostgreSQL URL names no database: write it as postgresql://USER@HOST:PORT/DATABASE (or set PGDATABASE)")
    if len(name) > 57:  # the schema kecil_NAME must fit PostgreSQL's 63-byte identifiers
        raise ConfigError(f"knowledge base name {name[:20]!r}... is too long for PostgreSQL: use at most 57 characters")
    check_name(name)
    query = urlencode([(k, v) for k, v in params if k != "kb"])
    # written out, not urlunsplit: that drops the "//" of an empty host (postgresql:///db), which libpq misreads
    conninfo = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    host = parts.hostname or ""
    user = f"{unquote(parts.username)}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    shown = f"postgresql://{user}{host}{port}{parts.path}?kb={name}"
    return Location("postgresql", name, conninfo, shown)


def _engine(location: Location):
    """The module of the location's engine; its `open_location`, `exists`, `names`, `remove` do the work."""
    return importlib.import_module(f"kecil.rag.store_{location.engine}")


def open_kb(kb: str, *, create: bool = False, embedder: str | None = None, dimension: int | None = None) -> KnowledgeBase:
    """Open knowledge base `kb`; with `create`, make it if missing, recording `embedder` and
    `dimension` (an existing one must have been built with the same embedder)."""
    location = locate(kb)
    return _engine(location).open_location(location, create=create, embedder=embedder, dimension=dimension)


def kb_exists(kb: str) -> bool:
    location = locate(kb)
    return _engine(location).exists(location)


def list_kbs() -> list[str]:
    """The knowledge bases' names: SQLite files here, or those of KECIL_RAG_STORE when it is set."""
    location = locate("kecil")  # any valid name: where names go
    return _engine(location).names(location)


def remove_kb(kb: str) -> str:
    """Delete knowledge base `kb`; returns where it was."""
    location = locate(kb)
    if not _engine(location).exists(location):
        raise KnowledgeBaseError(missing_message(kb))
    return _engine(location).remove(location)


def open_file(path, *, create: bool = False, embedder: str | None = None, dimension: int | None = None) -> KnowledgeBase:
    """The knowledge base in one portable file (`kecil rag export` writes it): a SQLite store,
    whatever engine the knowledge base came from or goes to."""
    from pathlib import Path

    from kecil.rag.store_sqlite import SQLiteKnowledgeBase

    return SQLiteKnowledgeBase.open_path(Path(path), create=create, embedder=embedder, dimension=dimension, read_only=not create)


def missing_message(kb: str) -> str:
    location = locate(kb)
    if location.engine == "sqlite":
        known = ", ".join(list_kbs()) or "none"
    else:
        known = "see `kecil rag list`"
    return (f"there is no knowledge base named {location.name!r} (known: {known}): "
            f"create it with `kecil rag ingest DIR --kb {location.shown or kb}`")


# --- the interface ----------------------------------------------------------------------------
class KnowledgeBase(abc.ABC):
    """An open knowledge base. Use `KnowledgeBase.open(location)`; close it (or use `with`).

    Chunk ids are never reused, so a caller may remember them until the next removal."""

    name: str
    location: Location
    # Errors of the store itself (disk full, connection lost): every file would fail, so an
    # ingest stops on them instead of skipping the file at hand.
    fatal_errors: tuple[type[BaseException], ...] = ()

    @classmethod
    def open(cls, kb: str, *, create: bool = False, embedder: str | None = None, dimension: int | None = None) -> KnowledgeBase:
        return open_kb(kb, create=create, embedder=embedder, dimension=dimension)

    def close(self) -> None:  # noqa: B027 - engines with nothing to release keep it
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- what it was built with -----------------------------------------------------------
    @abc.abstractmethod
    def meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def _write_meta(self, values: dict[str, str]) -> None: ...

    def _settle_embedder(self, embedder: str | None, dimension: int | None) -> None:
        """Record the embedder of a new knowledge base, or refuse another one than it was built with."""
        stored = self.meta("embedder")
        if stored is None:
            if embedder is None or dimension is None:
                self.close()
                raise KnowledgeBaseError(f"knowledge base {self.name!r} is empty: ingest documents with `kecil rag ingest DIR --kb {self.location.shown}`")
            self._write_meta({"embedder": embedder, "dimension": str(dimension), "created": str(time.time())})
        elif embedder is not None and embedder != stored:
            self.close()
            raise KnowledgeBaseError(
                f"knowledge base {self.name!r} was built with the embedding model {stored}, not {embedder}: "
                f"leave the embedder option out, or ingest into a new knowledge base"
            )

    @property
    def embedder_name(self) -> str:
        return self.meta("embedder") or ""

    @property
    def dimension(self) -> int:
        return int(self.meta("dimension") or 0)

    def check_embedder(self, name: str, dimension: int) -> None:
        """Refuse to compare vectors from two different models: their spaces are unrelated."""
        if name != self.embedder_name or dimension != self.dimension:
            raise KnowledgeBaseError(
                f"knowledge base {self.name!r} holds {self.embedder_name} vectors ({self.dimension} dimensions); "
                f"it cannot be searched with {name} ({dimension} dimensions): use {self.embedder_name}, or re-ingest with {name} into a new knowledge base"
            )

    def _check_vectors(self, vectors: Sequence[np.ndarray]) -> None:
        dim = self.dimension
        if any(v.size == 0 or v.size % dim for v in vectors):
            raise ValueError(f"every chunk needs one or more vectors of {dim} numbers")

    # --- writing --------------------------------------------------------------------------
    @abc.abstractmethod
    def files(self) -> dict[str, FileRecord]:
        """Every file, by its name as the file system gives it (str with surrogates for non-UTF-8 bytes)."""

    @abc.abstractmethod
    def replace_file(self, path: str, sha256: str, size: int, mtime_ns: int, chunks: Sequence[TextChunk], vectors: Sequence[np.ndarray]) -> None:
        """Put `path` in with its chunks and their vectors, replacing what it had, in one
        transaction. `vectors[i]` is chunk i's vector, or an (n, dimension) array of its n vectors."""

    @abc.abstractmethod
    def touch_file(self, path: str, size: int, mtime_ns: int) -> None:
        """The file's bytes are unchanged (same hash) but its timestamp moved: remember the new one."""

    @abc.abstractmethod
    def remove_files(self, paths: Sequence[str]) -> int:
        """Take these files and their chunks out; how many there were."""

    # --- reading --------------------------------------------------------------------------
    @abc.abstractmethod
    def bm25(self, terms: Sequence[str], limit: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """(chunk id, BM25 score; higher is better) of the chunks holding any of `terms`
        (tokenise.py's), best first, ties by id; FTS5's scoring (k1 1.2, b 0.75)."""

    @abc.abstractmethod
    def term_chunks(self, terms: Sequence[str]) -> tuple[dict[str, int], int]:
        """({term: how many chunks hold it}, how many chunks there are) for `terms`."""

    @abc.abstractmethod
    def dense_scores(self, vector: np.ndarray, allowed: set[int] | None = None) -> DenseScores:
        """The query vector's cosine to the chunks (each chunk's best vector): top, of, spread."""

    @abc.abstractmethod
    def vectors(self) -> Vectors:
        """Every chunk's vectors, in chunk id order."""

    @abc.abstractmethod
    def chunk_ids_under(self, path: str) -> set[int]:
        """Ids of the chunks of the file `path`, or of every file in the folder `path`."""

    @abc.abstractmethod
    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]: ...

    @abc.abstractmethod
    def file_chunks(self, path: str) -> tuple[list[TextChunk], list[np.ndarray]]:
        """The file's chunks in order, with each one's vectors (export.py copies them)."""

    @abc.abstractmethod
    def stats(self) -> dict: ...
