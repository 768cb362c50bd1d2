"""Fixtures for the RAG tests: the real embedding model, loaded once; the store engine a test runs
on (SQLite, and PostgreSQL where it is installed); and a SQuAD knowledge base in each."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kecil.rag.qa_sets import load_squad, subset, write_corpus
from kecil.infer.embeddings import load_embedder
from kecil.rag.evaluate import QAItem
from kecil.rag.ingest import IngestConfig, ingest

SQUAD_ARTICLES = 10  # 130 paragraphs (5 few-shot distractors among them), 170 questions
COUNTED = ("files", "chunks", "vectors", "terms")


@dataclass(frozen=True)
class Engine:
    """A store engine under test: `kb(name)` is where a knowledge base of that name lives in it."""

    name: str  # sqlite | postgresql
    url: str | None = None

    def kb(self, name: str) -> str:
        return name if self.url is None else f"{self.url}&kb={name}"

    def counts(self, kb: str) -> dict[str, int]:
        """Rows as the engine holds them, read past kecil: files, chunks, chunks with vectors, chunks with BM25 terms."""
        if self.url is None:
            import sqlite3

            from kecil.rag.kb_names import kb_path

            if not kb_path(kb).exists():  # connecting would make an empty file, which an ingest would then refuse
                return dict.fromkeys(COUNTED, 0)
            db = sqlite3.connect(f"file:{kb_path(kb)}?mode=ro", uri=True)
            try:
                return dict(zip(COUNTED, (db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("files", "chunks", "vectors", "chunks_fts"))))
            except sqlite3.OperationalError:  # created a moment ago, tables not there yet
                return dict.fromkeys(COUNTED, 0)
            finally:
                db.close()
        import psycopg

        schema = "kecil_" + kb.rsplit("kb=", 1)[1]
        with psycopg.connect(self.url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".postings',)).fetchone()[0] is None:
                return dict.fromkeys(COUNTED, 0)
            conn.execute(f'SET search_path TO "{schema}"')
            with conn.transaction():  # one snapshot for the four counts
                row = conn.execute("SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM chunks), "
                                   "(SELECT count(DISTINCT chunk_id) FROM vectors), (SELECT count(DISTINCT chunk_id) FROM postings)").fetchone()
        return dict(zip(COUNTED, row))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def engine(request) -> Engine:
    if request.param == "sqlite":
        return Engine("sqlite")
    return Engine("postgresql", request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def embedder():
    with load_embedder() as model:
        yield model


@pytest.fixture(scope="session")
def squad_sqlite(tmp_path_factory, kecil_home, embedder):
    """(knowledge base name, folder, QA items) for the first SQuAD articles, ingested once into SQLite."""
    articles, questions = subset(*load_squad(), SQUAD_ARTICLES)
    folder = write_corpus(tmp_path_factory.mktemp("squad"), articles)[0].parent
    ingest(IngestConfig(folder, "squad-test"), embedder=embedder)
    return "squad-test", folder, [QAItem(q["question"], tuple(q["answers"])) for q in questions]


@pytest.fixture(scope="session")
def squad_kb(squad_sqlite, engine):
    """The SQuAD knowledge base in the engine under test: PostgreSQL's is imported from SQLite's
    (every chunk and vector copied: the same knowledge base, not a second embedding run)."""
    if engine.url is None:
        return squad_sqlite
    from kecil.rag.kb_names import kb_path
    from kecil.rag.transfer import import_kb

    name, folder, items = squad_sqlite
    import_kb(kb_path(name), engine.kb(name))
    return engine.kb(name), folder, items
