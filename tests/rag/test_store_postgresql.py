"""The PostgreSQL engine against a real throwaway cluster: the location lookup, one-line errors
for a bad URL and a database without pgvector, credentials from PG* variables, schema versions,
concurrent ingests with a search running, and the HNSW path past the exact-search size.
(The ingest, search and ask tests run on this engine too, through the `engine` fixture.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from urllib.parse import urlsplit

import pytest

from kecil.errors import ConfigError, KnowledgeBaseError, StoreUnavailableError
from kecil.rag.ingest import IngestConfig, ingest
from kecil.rag.retrieve import Retriever, SearchConfig
from kecil.rag.store import KnowledgeBase, locate
from tests.cli_helpers import assert_clean_error, kecil


def test_the_location_picks_the_engine_and_hides_the_password(monkeypatch):
    monkeypatch.delenv("KECIL_RAG_STORE", raising=False)
    assert locate("handbook").engine == "sqlite"
    where = locate("postgresql://ana:s3cret@db.example:5433/docs?sslmode=require&kb=handbook")
    assert (where.engine, where.name) == ("postgresql", "handbook")
    assert "s3cret" not in where.shown and where.shown == "postgresql://ana@db.example:5433/docs?kb=handbook"
    assert "kb=" not in where.conninfo and "sslmode=require" in where.conninfo  # kecil's own parameter is not libpq's
    assert locate("postgres://db.example/handbook").name == "handbook"  # no kb=: the database's name
    monkeypatch.setenv("KECIL_RAG_STORE", "postgresql://ana:s3cret@db.example/docs")
    served = locate("handbook")  # a server's replicas: names live in the shared database
    assert (served.engine, served.name, urlsplit(served.conninfo).path) == ("postgresql", "handbook", "/docs")
    for bad in ("postgresql://db.example:port/docs", "postgresql://db.example/docs?kb=../x"):
        with pytest.raises(ConfigError):
            locate(bad)
    monkeypatch.setenv("KECIL_RAG_STORE", "mysql://db.example/docs")
    with pytest.raises(ConfigError, match="KECIL_RAG_STORE must be a postgresql"):
        locate("handbook")


def test_an_unreachable_server_is_a_one_line_error_without_the_password():
    url = "postgresql://ana:s3cret@127.0.0.1:1/docs"  # nothing listens on port 1
    with pytest.raises(StoreUnavailableError) as caught:
        KnowledgeBase.open(url)
    message = str(caught.value)
    assert "\n" not in message and "s3cret" not in message and "127.0.0.1" in message and "PG*" in message, message
    assert_clean_error(kecil("rag", "search", "x", "--kb", url), "cannot connect to PostgreSQL")
    assert_clean_error(kecil("rag", "search", "x", "--kb", "postgresql://db:port/x"), "not valid")


def test_a_database_without_pgvector_says_what_to_install(postgres_cluster):
    import psycopg

    with psycopg.connect(postgres_cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE ROLE plain LOGIN")  # not a superuser: pgvector is not a trusted extension
        conn.execute('CREATE DATABASE "no-vector" OWNER plain')
    url = postgres_cluster.url("no-vector").replace("kecil@", "plain@")
    with pytest.raises(KnowledgeBaseError, match="no pgvector extension") as caught:
        KnowledgeBase.open(url, create=True, embedder="test", dimension=4)
    assert "\n" not in str(caught.value) and "CREATE EXTENSION vector" in str(caught.value)


def test_credentials_come_from_the_pg_variables(postgres_cluster, postgres_url, monkeypatch):
    url = postgres_cluster.url("kecil_tests").replace("kecil@", "") + "&kb=from-env"  # no user in the URL
    monkeypatch.setenv("PGUSER", "nobody-here")
    with pytest.raises(StoreUnavailableError, match="nobody-here"):
        KnowledgeBase.open(url, create=True, embedder="test", dimension=4)
    monkeypatch.setenv("PGUSER", "kecil")
    with KnowledgeBase.open(url, create=True, embedder="test", dimension=4) as kb:
        assert kb.stats()["chunks"] == 0 and kb.embedder_name == "test"


def test_a_store_from_a_newer_kecil_is_refused(postgres_url):
    import numpy as np
    import psycopg

    from kecil.rag.chunking import TextChunk

    url = f"{postgres_url}&kb=versions"
    with KnowledgeBase.open(url, create=True, embedder="test", dimension=4) as kb:
        kb.replace_file("/a.txt", "0" * 64, 1, 1, [TextChunk("red apple", "", 1, 1, None)], [np.eye(4, dtype=np.float32)[0]])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM kecil_versions.meta WHERE key = 'schema'").fetchone()[0] == "1"
        conn.execute("UPDATE kecil_versions.meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(KnowledgeBaseError, match="newer kecil"):
        KnowledgeBase.open(url)


INGEST = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kecil.rag.ingest import IngestConfig, ingest
    report = ingest(IngestConfig(Path(sys.argv[1]), sys.argv[2], batch_size=4, commit_chunks=8))
    assert not report.skipped, report.skipped
""")


def test_two_processes_ingesting_and_one_searching_lose_nothing(tmp_path, postgres_url, embedder):
    url = f"{postgres_url}&kb=concurrent"
    per_folder = 60
    for side in ("east", "west"):
        (tmp_path / side).mkdir()
        for i in range(per_folder):
            (tmp_path / side / f"{side}{i:02d}.md").write_text(f"# {side} {i}\n\nDepot {side}{i:02d}x keeps {i} trucks.\n")
    # the knowledge base made first, so the two writers meet on an existing one
    ingest(IngestConfig(tmp_path / "east" / "east00.md", url), embedder=embedder)
    writers = [subprocess.Popen([sys.executable, "-c", INGEST, str(tmp_path / side), url], stderr=subprocess.PIPE) for side in ("east", "west")]
    searches = 0
    try:
        with Retriever(url, embedder=embedder) as retriever:
            while any(w.poll() is None for w in writers):
                # BM25 on the one rare term: with a handful of chunks in, a longer question's words are all
                # "common" to selective_terms and dense alone confuses east00x with east01x
                hits = retriever.search("east00x", SearchConfig(k=3, method="bm25"))
                assert hits and "east00x" in hits[0].chunk.text
                assert retriever.search("Which trucks does depot east00x keep?", SearchConfig(k=3))  # hybrid reads too
                searches += 1
                time.sleep(0.05)
        for w in writers:
            assert w.wait() == 0, w.stderr.read().decode()
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
    assert searches >= 3
    with KnowledgeBase.open(url) as kb:
        stats = kb.stats()
        assert stats["files"] == stats["chunks"] == 2 * per_folder
        files = kb.files()
    with Retriever(url, embedder=embedder) as retriever:
        for side in ("east", "west"):
            for i in range(per_folder):
                hits = retriever.search(f"{side}{i:02d}x", SearchConfig(k=2, method="bm25"))
                assert len(hits) == 1 and f"{side}{i:02d}x" in hits[0].chunk.text and hits[0].chunk.path in files


def test_past_the_exact_size_the_hnsw_index_finds_what_exact_search_finds(squad_sqlite, postgres_url, embedder, monkeypatch):
    from kecil.rag import store_postgresql
    from kecil.rag.evaluate import evaluate
    from kecil.rag.kb_names import kb_path
    from kecil.rag.transfer import import_kb

    name, _, items = squad_sqlite
    url = f"{postgres_url}&kb=hnsw"
    import_kb(kb_path(name), url)
    with Retriever(url, embedder=embedder) as retriever:
        exact = {m: evaluate(retriever, items, SearchConfig(k=5, method=m)) for m in ("dense", "hybrid")}
        monkeypatch.setattr(store_postgresql, "EXACT_VECTORS", 0)
        retriever.kb._index_when_large()  # what the write that crosses the size does
        scores = retriever.kb.dense_scores(retriever.query_vector(items[0].question))
        assert type(scores).__name__ == "_IndexedScores"
        indexed = {m: evaluate(retriever, items, SearchConfig(k=5, method=m)) for m in ("dense", "hybrid")}
    for method in ("dense", "hybrid"):
        assert indexed[method].recall == pytest.approx(exact[method].recall, abs=0.02), method
