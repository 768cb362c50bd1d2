"""The PostgreSQL engine's connections and schema (store_postgresql.py uses them): connecting
with one-line errors that never show a password, pgvector checked and created where allowed, and
each knowledge base's schema `kecil_NAME` made or brought up to SCHEMA_VERSION by migrations, under
an advisory lock so two first ingests at once do not race."""

from __future__ import annotations

from kecil.errors import KnowledgeBaseError, StoreUnavailableError
from kecil.rag.store import Location, missing_message

SCHEMA_PREFIX = "kecil_"
SCHEMA_VERSION = 1
# Each migration takes a knowledge base from the version before to its own ({dim}: the vectors' size).
MIGRATIONS = {
    1: """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
-- One row, updated last in every write: what BM25 needs (chunks, tokens) and what caches key on.
CREATE TABLE state (singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), generation bigint NOT NULL DEFAULT 0,
    removals bigint NOT NULL DEFAULT 0, chunks bigint NOT NULL DEFAULT 0, tokens bigint NOT NULL DEFAULT 0, vectors bigint NOT NULL DEFAULT 0);
INSERT INTO state DEFAULT VALUES;
CREATE TABLE files (id bigserial PRIMARY KEY, path text NOT NULL UNIQUE, raw_path bytea, sha256 text NOT NULL, size bigint NOT NULL,
    mtime_ns bigint NOT NULL, chunks integer NOT NULL, ingested_at double precision NOT NULL);
CREATE TABLE chunks (id bigserial PRIMARY KEY, file_id bigint NOT NULL REFERENCES files (id) ON DELETE CASCADE, ord integer NOT NULL,
    section text NOT NULL, text text NOT NULL, page integer, line_start integer NOT NULL, line_end integer NOT NULL,
    terms integer NOT NULL, vectors integer NOT NULL);
CREATE INDEX chunks_by_file ON chunks (file_id);
-- tf: the term's count in the chunk; dl: the chunk's length in terms (FTS5's D), kept here so BM25 reads one table;
-- both INCLUDEd in the key so BM25 is an index-only scan (2.4x faster at 40k chunks than reading the rows).
-- No foreign keys on postings and vectors: a check per row took a third of a file's write time;
-- _delete_file removes them with their chunks.
CREATE TABLE postings (term text NOT NULL, chunk_id bigint NOT NULL,
    tf integer NOT NULL, dl integer NOT NULL, PRIMARY KEY (term, chunk_id) INCLUDE (tf, dl));
CREATE INDEX postings_by_chunk ON postings (chunk_id);
CREATE TABLE vectors (chunk_id bigint NOT NULL, ord integer NOT NULL,
    embedding vector({dim}) NOT NULL, PRIMARY KEY (chunk_id, ord));
""",
}


# --- connecting -----------------------------------------------------------------------------
def _psycopg():
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
        from pgvector.psycopg import register_vector  # noqa: F401
    except ImportError:
        raise KnowledgeBaseError("PostgreSQL knowledge bases need psycopg, psycopg-pool and pgvector: "
                                 "pip install 'kecil[postgres]'") from None
    return psycopg


def _connect(location: Location):
    """A plain connection (autocommit), or a one-line error naming the server without the password."""
    psycopg = _psycopg()
    try:
        return psycopg.connect(location.conninfo, connect_timeout=10, autocommit=True)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailableError(f"cannot connect to PostgreSQL for {location.shown} ({reason}): "
                                    f"check the URL, or the PG* variables (PGHOST, PGUSER, PGPASSWORD, ...)") from None
    except Exception as exc:  # noqa: BLE001 - libpq refuses a malformed URL with a ProgrammingError or ValueError
        raise KnowledgeBaseError(f"the PostgreSQL URL for {location.shown} is not usable ({type(exc).__name__}: {str(exc)[:100]}): "
                                 f"write it as postgresql://USER@HOST:PORT/DATABASE") from None


def schema_name(location: Location) -> str:
    return SCHEMA_PREFIX + location.name


def _vector_schema(conn, location: Location) -> str:
    """The schema holding the pgvector extension, created when missing and allowed; else a one-line error."""
    psycopg = _psycopg()
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'").fetchone()
    if row:
        return row[0]
    database = conn.info.dbname
    if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone() is None:
        major = conn.info.server_version // 10000
        raise KnowledgeBaseError(f"the PostgreSQL server of {location.shown} has no pgvector extension: install it there "
                                 f"(Debian: apt-get install postgresql-{major}-pgvector), then run CREATE EXTENSION vector; in database {database}")
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error:
        raise KnowledgeBaseError(f"database {database} of {location.shown} has no pgvector extension and user {conn.info.user} may not add it: "
                                 f"ask its administrator to run CREATE EXTENSION vector; in database {database}") from None
    return _vector_schema(conn, location)


def prepare(location: Location, *, create: bool, dimension: int | None) -> str:
    """Check the server (pgvector there), make or migrate the knowledge base's schema; the
    schema holding pgvector, for the connections' search path."""
    from psycopg import sql

    schema = schema_name(location)
    with _connect(location) as conn:
        vector_schema = _vector_schema(conn, location)
        with conn.transaction():  # two first ingests at once: one creates, the other waits and finds it made
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 24))", (schema,))
            found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
            if not found and not (create and dimension):
                raise KnowledgeBaseError(missing_message(location.shown))
            if not found:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}, {}").format(sql.Identifier(schema), sql.Identifier(vector_schema)))
            version = 0
            if found:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise KnowledgeBaseError(f"{location.shown} was written by a newer kecil (schema {version}, this one reads up to "
                                             f"{SCHEMA_VERSION}): upgrade kecil")
            if version < SCHEMA_VERSION:
                stored_dim = dimension or _stored_dimension(conn)
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    conn.execute(MIGRATIONS[step].format(dim=int(stored_dim)))
                conn.execute("INSERT INTO meta VALUES ('schema', %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (str(SCHEMA_VERSION),))
    return vector_schema


def _stored_dimension(conn) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'dimension'").fetchone()
    return int(row[0])


def exists(location: Location) -> bool:
    with _connect(location) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_name(location),)).fetchone() is not None


def names(location: Location) -> list[str]:
    with _connect(location) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s) ORDER BY nspname", (SCHEMA_PREFIX,)).fetchall()
    return [r[0][len(SCHEMA_PREFIX):] for r in rows]


def remove(location: Location) -> str:
    from psycopg import sql

    with _connect(location) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema_name(location))))
    return location.shown
