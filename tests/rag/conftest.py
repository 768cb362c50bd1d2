"""Fixtures for the RAG tests: the real embedding model, loaded once, and a SQuAD knowledge base."""

from __future__ import annotations

import pytest

from kecil.rag.qa_sets import load_squad, subset, write_corpus
from kecil.infer.embeddings import load_embedder
from kecil.rag.evaluate import QAItem
from kecil.rag.ingest import IngestConfig, ingest

SQUAD_ARTICLES = 10  # 130 paragraphs (5 few-shot distractors among them), 170 questions


@pytest.fixture(scope="session")
def embedder():
    with load_embedder() as model:
        yield model


@pytest.fixture(scope="session")
def squad_kb(tmp_path_factory, kecil_home, embedder):
    """(knowledge base name, folder, QA items) for the first SQuAD articles, ingested once."""
    articles, questions = subset(*load_squad(), SQUAD_ARTICLES)
    folder = write_corpus(tmp_path_factory.mktemp("squad"), articles)[0].parent
    ingest(IngestConfig(folder, "squad-test"), embedder=embedder)
    return "squad-test", folder, [QAItem(q["question"], tuple(q["answers"])) for q in questions]
