"""The SLM reranker on the SQuAD knowledge base with the bundled SmolLM2 model (real weights)."""

from __future__ import annotations

import json

import pytest

from kecil.errors import ConfigError
from kecil.infer.load import load_model
from kecil.rag.rerank import RerankConfig, fuse_ranks, question_logprobs
from kecil.rag.retrieve import Retriever, SearchConfig
from tests.cli_helpers import kecil


@pytest.fixture(scope="module")
def smol():
    with load_model("smollm2-135m", context_length=1024) as model:
        yield model


def test_the_passage_that_answers_makes_the_question_likelier(smol):
    question = "Which team won Super Bowl 50?"
    passages = ["The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50.",
                "The Amazon rainforest covers much of the Amazon basin of South America."]
    answering, unrelated = question_logprobs(smol, question, passages, passage_tokens=64)
    assert answering > unrelated


def test_rerank_reorders_only_the_candidates_and_keeps_the_rest(squad_sqlite, embedder, smol):
    name, _, items = squad_sqlite
    config = RerankConfig(candidates=4)
    with Retriever(name, embedder=embedder, rerank_model=smol) as retriever:
        plain = retriever.search(items[0].question, SearchConfig(k=6))
        reranked = retriever.search(items[0].question, SearchConfig(k=6, rerank=config))
    assert {h.chunk.id for h in reranked[:4]} == {h.chunk.id for h in plain[:4]}
    assert [h.chunk.id for h in reranked[4:]] == [h.chunk.id for h in plain[4:]]
    assert all(h.rerank_score is not None and h.rerank_score < 0 for h in reranked[:4])
    assert all(h.rerank_score is None for h in reranked[4:])


def test_rank_fusion_and_config_checks():
    # retrieval order 0,1,2; the model prefers 2 then 1 then 0: equal weights and k=0 favour agreement
    assert fuse_ranks([0, 1, 2], [-3.0, -2.0, -1.0], RerankConfig(rrf_k=0, model_weight=1.0)) == [2, 0, 1]
    assert fuse_ranks([0, 1, 2], [-3.0, -2.0, -1.0], RerankConfig(model_weight=0.0)) == [0, 1, 2]
    with pytest.raises(ConfigError, match="candidates"):
        RerankConfig(candidates=1)


def test_cli_search_with_rerank(squad_sqlite):
    name, _, _ = squad_sqlite
    done = kecil("rag", "search", "Which team won Super Bowl 50?", "--kb", name, "--k", "3", "--rerank", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 3 and all(r["rerank_score"] is not None for r in rows)
