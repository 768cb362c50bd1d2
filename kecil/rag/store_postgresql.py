"""The PostgreSQL engine of the knowledge-base store (store.py): one schema per knowledge base,
BM25 over kecil's own terms, vectors in pgvector, for several servers sharing one store.

BM25 is computed in SQL from a postings table (term, chunk, term count, chunk length) filled with
the terms tokenise.py gives SQLite's FTS5, scored with FTS5's formula (k1 1.2, b 0.75, idf
log((N - n + 0.5) / (n + 0.5)) floored at 1e-6): Thai, Chinese and Hindi find the same chunks,
in the same order, as with SQLite. PostgreSQL's own full-text search stems and splits per
language configuration and would not. Vectors are pgvector rows, one per sentence window, with
an HNSW index (Malkov & Yashunin 2018, https://arxiv.org/abs/1603.09320); up to EXACT_VECTORS
rows every vector is scored in one scan, exactly what the SQLite engine computes, and past it the
index gives the candidates (see dense_scores). Connecting, the schema and its migrations are in
store_postgresql_schema.py.

Each file goes in with one transaction (and an advisory lock on its path), so ingests from
several machines and searches during them are safe, and a killed ingest leaves each file fully
in or out. Connections come from a pool; credentials come from the URL or libpq's PG* variables
and are never written anywhere by kecil (messages show store.Location.shown).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kecil.errors import StoreUnavailableError
from kecil.rag.chunking import TextChunk, index_text
from kecil.rag.dense import DenseScores
from kecil.rag.kb_names import display_path, raw_path
from kecil.rag.store import FileRecord, KnowledgeBase, Location, StoredChunk, Vectors
from kecil.rag.store_postgresql_schema import exists, names, prepare, remove, schema_name  # noqa: F401 - exists, names, remove: store.py calls them here
from kecil.rag.tokenise import tokenise

if TYPE_CHECKING:
    import numpy as np

# Up to this many vectors every one is scored in one scan (exact, as SQLite); past it the HNSW
# index is built (once, by the write that crosses it) and gives the candidates. Measured with 384
# dimensions, 3 vectors a chunk, 2 busy cores: the scan takes 6 ms at 6k vectors and 20 ms at
# 21k, the index path (candidates, exact cosines of 50 chunks, the spread's sample) ~20 ms at any
# size. Building the index only then also keeps small ingests fast: inserting into an HNSW
# index costs more than the rest of a file's rows.
EXACT_VECTORS = 20_000
INDEX = "CREATE INDEX IF NOT EXISTS vectors_hnsw ON vectors USING hnsw (embedding vector_ip_ops)"
SPREAD_SAMPLE = 2_000  # chunks whose cosines estimate the z-score's mean and spread past EXACT_VECTORS
POOL_SIZE = 4
K1, B = 1.2, 0.75  # FTS5's bm25() defaults


# --- the engine's module interface (store.py calls these) ------------------------------------------
def open_location(location: Location, *, create: bool = False, embedder: str | None = None, dimension: int | None = None) -> PostgresKnowledgeBase:
    kb = PostgresKnowledgeBase(location, prepare(location, create=create, dimension=dimension))
    kb._settle_embedder(embedder, dimension)
    return kb


class PostgresKnowledgeBase(KnowledgeBase):
    """A knowledge base in a PostgreSQL schema, reached through a small pool of connections
    (a server's threads share it)."""

    def __init__(self, location: Location, vector_schema: str):
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        self.location = location
        self.name = location.name
        self.fatal_errors = (StoreUnavailableError, psycopg.OperationalError, PoolTimeout)
        self._search_path = (schema_name(location), vector_schema)
        self._fixed: dict[str, str] = {}  # meta that never changes once written (embedder, dimension)
        self._lock = threading.Lock()
        self._count_state: tuple[int, int] | None = None
        self._term_counts: dict[str, int] = {}
        self._sample: tuple[int, Vectors] | None = None  # (chunks then, their vectors) for the spread estimate
        self._has_index = False
        self._pool = ConnectionPool(location.conninfo, min_size=1, max_size=POOL_SIZE, kwargs={"connect_timeout": 10},
                                    configure=self._configure, open=True, timeout=60, name=f"kecil-{location.name}")

    def _configure(self, conn) -> None:
        from pgvector.psycopg import register_vector
        from psycopg import sql

        conn.execute(sql.SQL("SET search_path TO {}, {}").format(*map(sql.Identifier, self._search_path)))
        register_vector(conn)
        conn.commit()

    def _conn(self):
        """A pooled connection whose block is one transaction (committed at its end, rolled back on an error)."""
        return self._pool.connection()

    def close(self) -> None:
        self._pool.close()

    def meta(self, key: str) -> str | None:
        if key in self._fixed:
            return self._fixed[key]
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        if row and key in ("embedder", "dimension"):
            self._fixed[key] = row[0]
        return row[0] if row else None

    def _write_meta(self, values: dict[str, str]) -> None:
        with self._conn() as conn:
            for key, value in values.items():
                conn.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value))

    def _state(self, conn=None) -> tuple[int, int, int, int, int]:
        """(generation, removals, chunks, tokens, vectors) as committed."""
        if conn is None:
            with self._conn() as conn:
                return conn.execute("SELECT generation, removals, chunks, tokens, vectors FROM state").fetchone()
        return conn.execute("SELECT generation, removals, chunks, tokens, vectors FROM state").fetchone()

    # --- writing -------------------------------------------------------------------------
    def files(self) -> dict[str, FileRecord]:
        with self._conn() as conn:
            rows = conn.execute("SELECT id, path, raw_path, sha256, size, mtime_ns, chunks FROM files").fetchall()
        records = [FileRecord(r[0], os.fsdecode(bytes(r[2])) if r[2] is not None else r[1], *r[3:]) for r in rows]
        return {r.path: r for r in records}

    def replace_file(self, path: str, sha256: str, size: int, mtime_ns: int, chunks: Sequence[TextChunk], vectors: Sequence[np.ndarray]) -> None:
        import numpy as np

        assert len(chunks) == len(vectors)
        self._check_vectors(vectors)
        dim = self.dimension
        terms = [tokenise(index_text(c.text, c.section)) for c in chunks]  # before the transaction: it holds locks
        rows = [np.asarray(v, np.float32).reshape(-1, dim) for v in vectors]
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (display_path(path),))  # one writer per file
            gone = self._delete_file(conn, path)
            file_id = conn.execute(
                "INSERT INTO files (path, raw_path, sha256, size, mtime_ns, chunks, ingested_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (display_path(path), raw_path(path), sha256, size, mtime_ns, len(chunks), time.time()),
            ).fetchone()[0]
            ids = [r[0] for r in conn.execute("SELECT nextval(pg_get_serial_sequence('chunks', 'id')) FROM generate_series(1, %s)", (len(chunks),))]
            with conn.cursor() as cur:
                with cur.copy("COPY chunks (id, file_id, ord, section, text, page, line_start, line_end, terms, vectors) FROM STDIN") as copy:
                    for order, (chunk_id, chunk, words, vecs) in enumerate(zip(ids, chunks, terms, rows)):
                        copy.write_row((chunk_id, file_id, order, chunk.section, chunk.text, chunk.page, chunk.start, chunk.end, len(words), len(vecs)))
                with cur.copy("COPY postings (term, chunk_id, tf, dl) FROM STDIN") as copy:
                    for chunk_id, words in zip(ids, terms):
                        for term, count in Counter(words).items():
                            copy.write_row((term, chunk_id, count, len(words)))
                with cur.copy("COPY vectors (chunk_id, ord, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "int4", "vector"])
                    for chunk_id, vecs in zip(ids, rows):
                        for order, row in enumerate(vecs):
                            copy.write_row((chunk_id, order, row))
            added = (len(chunks), sum(map(len, terms)), sum(map(len, rows)))
            self._bump(conn, [a - g for a, g in zip(added, gone or (0, 0, 0))], removal=gone is not None)
        self._index_when_large()

    def _indexed(self) -> bool:
        if not self._has_index:
            with self._conn() as conn:
                self._has_index = conn.execute("SELECT to_regclass('vectors_hnsw') IS NOT NULL").fetchone()[0]
        return self._has_index

    def _index_when_large(self) -> None:
        """Build the HNSW index once the vectors pass EXACT_VECTORS (one builder: the others wait, then find it)."""
        if self._has_index or self._state()[4] <= EXACT_VECTORS:
            return
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (self._search_path[0],))
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            conn.execute(INDEX)
        self._has_index = True

    @staticmethod
    def _bump(conn, change: Sequence[int], removal: bool) -> None:
        """Last in a write, so the one row every writer updates is locked only until its commit."""
        conn.execute("UPDATE state SET generation = generation + 1, removals = removals + %s, chunks = chunks + %s, "
                     "tokens = tokens + %s, vectors = vectors + %s", (int(removal), *change))

    def touch_file(self, path: str, size: int, mtime_ns: int) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE files SET size = %s, mtime_ns = %s WHERE path = %s", (size, mtime_ns, display_path(path)))

    def remove_files(self, paths: Sequence[str]) -> int:
        if not paths:
            return 0
        removed, change = 0, [0, 0, 0]
        with self._conn() as conn:
            for path in paths:
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (display_path(path),))
                gone = self._delete_file(conn, path)
                if gone is not None:
                    removed += 1
                    change = [c - g for c, g in zip(change, gone)]
            self._bump(conn, change, removal=True)
        return removed

    @staticmethod
    def _delete_file(conn, path: str) -> tuple[int, int, int] | None:
        """Delete the file with its chunks, postings and vectors: the (chunks, terms, vectors) it
        had, or None when it was not there."""
        row = conn.execute(
            "SELECT f.id, count(c.id), COALESCE(sum(c.terms), 0), COALESCE(sum(c.vectors), 0) FROM files f "
            "LEFT JOIN chunks c ON c.file_id = f.id WHERE f.path = %s GROUP BY f.id", (display_path(path),)
        ).fetchone()
        if row is None:
            return None
        for table in ("postings", "vectors"):
            conn.execute(f"DELETE FROM {table} WHERE chunk_id IN (SELECT id FROM chunks WHERE file_id = %s)", (row[0],))
        conn.execute("DELETE FROM files WHERE id = %s", (row[0],))  # its chunks by cascade
        return int(row[1]), int(row[2]), int(row[3])

    # --- reading -------------------------------------------------------------------------
    def term_chunks(self, terms: Sequence[str]) -> tuple[dict[str, int], int]:
        """Counted from the postings' primary key, remembered until the next write (common words
        recur in every question)."""
        if not terms:
            return {}, 0
        with self._conn() as conn:
            generation, removals, total, *_ = self._state(conn)
            with self._lock:
                if self._count_state != (generation, removals):
                    self._term_counts.clear()
                    self._count_state = (generation, removals)
                if len(self._term_counts) > 100_000:  # bounded: a server sees endless new words
                    self._term_counts.clear()
                todo = [t for t in dict.fromkeys(terms) if t not in self._term_counts]
            if todo:
                found = dict(conn.execute("SELECT term, count(*) FROM postings WHERE term = ANY(%s) GROUP BY term", (todo,)).fetchall())
                with self._lock:
                    self._term_counts.update((t, found.get(t, 0)) for t in todo)
            with self._lock:
                return {t: self._term_counts.get(t, 0) for t in terms}, total

    def bm25(self, terms: Sequence[str], limit: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        terms = list(dict.fromkeys(terms))
        counts, total = self.term_chunks(terms)
        # FTS5's idf, floored the same way (sqlite/ext/fts5/fts5_aux.c)
        idf = {t: max(math.log((total - n + 0.5) / (n + 0.5)), 0.0) or 1e-6 for t, n in counts.items() if n}
        if not idf:
            return []
        only = "" if allowed is None else "AND p.chunk_id = ANY(%(allowed)s)"
        query = f"""
            WITH w(term, idf) AS (SELECT * FROM unnest(%(terms)s::text[], %(idf)s::float8[])),
                 s AS (SELECT tokens::float8 / GREATEST(chunks, 1) AS avgdl FROM state)
            SELECT p.chunk_id, sum(w.idf * p.tf * {K1 + 1} / (p.tf + {K1} * ({1 - B} + {B} * p.dl / s.avgdl))) AS score
            FROM postings p JOIN w ON p.term = w.term CROSS JOIN s WHERE p.term = ANY(%(terms)s) {only}
            GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT %(limit)s"""
        params = {"terms": list(idf), "idf": list(idf.values()), "limit": limit, "allowed": list(allowed or ())}
        with self._conn() as conn:
            return [(int(i), float(s)) for i, s in conn.execute(query, params).fetchall()]

    def dense_scores(self, vector: np.ndarray, allowed: set[int] | None = None):
        """Up to EXACT_VECTORS vectors (or under a path filter) every chunk is scored in one scan:
        the same DenseScores the SQLite engine makes. Past it, _IndexedScores: the HNSW index's
        candidates, exact cosines for the chunks fusion asks about, and the z-score's mean and
        spread estimated on a fixed random sample of SPREAD_SAMPLE chunks."""
        import numpy as np

        vector = np.asarray(vector, np.float32)
        if allowed is None and self._state()[4] > EXACT_VECTORS and self._indexed():
            return _IndexedScores(self, vector)
        return self._exact(vector, None if allowed is None else list(allowed))

    def _exact(self, vector: np.ndarray, ids: list[int] | None) -> DenseScores:
        import numpy as np

        only = "" if ids is None else "WHERE chunk_id = ANY(%s)"
        with self._conn() as conn:
            rows = conn.execute(f"SELECT chunk_id, max(-(embedding <#> %s)) FROM vectors {only} GROUP BY chunk_id ORDER BY chunk_id",
                                (vector,) if ids is None else (vector, ids)).fetchall()
        return DenseScores(np.fromiter((r[0] for r in rows), np.int64, len(rows)), np.fromiter((r[1] for r in rows), np.float32, len(rows)))

    def _spread_sample(self) -> Vectors:
        """The vectors of SPREAD_SAMPLE random chunks, kept in memory (a few MB) until the
        knowledge base has grown or shrunk by a tenth: each query's spread is then one small
        product here, not a query."""
        total = self._state()[2]
        with self._lock:
            if self._sample is not None and abs(self._sample[0] - total) <= 0.1 * total:
                return self._sample[1]
        with self._conn() as conn:
            conn.execute("SELECT setseed(0.24)")  # the same sample for the same chunks: scores repeat
            rows = conn.execute("SELECT chunk_id, embedding FROM vectors WHERE chunk_id IN "
                                "(SELECT id FROM chunks ORDER BY random() LIMIT %s) ORDER BY chunk_id, ord", (SPREAD_SAMPLE,)).fetchall()
        sample = self._as_vectors(rows)
        with self._lock:
            self._sample = (total, sample)
        return sample

    def vectors(self) -> Vectors:
        with self._conn() as conn:
            rows = conn.execute("SELECT chunk_id, embedding FROM vectors ORDER BY chunk_id, ord").fetchall()
        return self._as_vectors(rows)

    def _as_vectors(self, rows) -> Vectors:
        """(chunk id, vector) rows in chunk id order as one matrix."""
        import numpy as np

        dim = self.dimension
        owners = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        matrix = np.stack([_array(r[1]) for r in rows]) if rows else np.zeros((0, dim), np.float32)
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]]) if len(owners) else np.zeros(0, np.int64)
        return Vectors(owners[starts], matrix, starts.astype(np.int64))

    def chunk_ids_under(self, path: str) -> set[int]:
        path = display_path(path)
        like = path.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        with self._conn() as conn:
            rows = conn.execute("SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path = %s OR f.path LIKE %s",
                                (path.rstrip("/"), like)).fetchall()
        return {r[0] for r in rows}

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        with self._conn() as conn:
            rows = conn.execute("SELECT c.id, f.path, c.section, c.text, c.page, c.line_start, c.line_end FROM chunks c "
                                "JOIN files f ON f.id = c.file_id WHERE c.id = ANY(%s)", (list(map(int, ids)),)).fetchall()
        return {row[0]: StoredChunk(*row) for row in rows}

    def file_chunks(self, path: str) -> tuple[list[TextChunk], list[np.ndarray]]:
        import numpy as np

        with self._conn() as conn:
            rows = conn.execute(
                "SELECT c.text, c.section, c.line_start, c.line_end, c.page, array_agg(v.embedding ORDER BY v.ord) FROM chunks c "
                "JOIN files f ON f.id = c.file_id JOIN vectors v ON v.chunk_id = c.id WHERE f.path = %s GROUP BY c.id ORDER BY c.ord",
                (display_path(path),)).fetchall()
        return [TextChunk(*r[:5]) for r in rows], [np.stack([_array(v) for v in r[5]]) for r in rows]

    def stats(self) -> dict:
        with self._conn() as conn:
            files, chunks = conn.execute("SELECT count(*), COALESCE(sum(chunks), 0) FROM files").fetchone()
            vectors = self._state(conn)[4]
            size = conn.execute("SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n "
                                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'", (self._search_path[0],)).fetchone()[0]
        return {"name": self.name, "path": self.location.shown, "files": files, "chunks": int(chunks), "vectors": int(vectors),
                "embedder": self.embedder_name, "dimension": self.dimension, "bytes": int(size)}


def _array(vector) -> np.ndarray:
    """pgvector's Vector (what psycopg reads back) as a float32 row."""
    import numpy as np

    return np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, np.float32)


class _IndexedScores:
    """Dense scores past EXACT_VECTORS (see PostgresKnowledgeBase.dense_scores): the DenseScores
    interface, each part asked of the database when fusion needs it."""

    def __init__(self, kb: PostgresKnowledgeBase, vector: np.ndarray):
        self.kb, self.vector = kb, vector

    def top(self, limit: int) -> list[tuple[int, float]]:
        # several windows of one chunk may come first: ask for more rows than chunks wanted
        rows_wanted = min(max(4 * limit, 40), 1000)
        with self.kb._conn() as conn:
            conn.execute(f"SET LOCAL hnsw.ef_search = {int(rows_wanted)}")
            rows = conn.execute("SELECT chunk_id, -(embedding <#> %s) FROM vectors ORDER BY embedding <#> %s LIMIT %s",
                                (self.vector, self.vector, rows_wanted)).fetchall()
        best: dict[int, float] = {}
        for chunk_id, score in rows:
            best[chunk_id] = max(best.get(chunk_id, -math.inf), float(score))
        return sorted(best.items(), key=lambda item: (-item[1], item[0]))[:limit]

    def of(self, chunk_ids: list[int]) -> dict[int, float]:
        scores = self.kb._exact(self.vector, list(map(int, chunk_ids)))
        return {int(i): float(s) for i, s in zip(scores.ids, scores.scores)}

    def spread(self) -> tuple[float, float]:
        import numpy as np

        from kecil.rag.dense import similarities

        sample = self.kb._spread_sample()
        if not len(sample.ids):
            return 0.0, 1.0
        return DenseScores(sample.ids, sample.best(similarities(np.ascontiguousarray(sample.matrix), self.vector))).spread()
