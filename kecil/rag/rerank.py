"""Reranking: reorder the best fused candidates by how likely the local language model finds the
question after each passage (query likelihood, as in UPR: Sachan et al. 2022,
https://arxiv.org/abs/2204.07496).

No cross-encoder ships inside a package that can be had offline, so the scorer is the SLM kecil
already runs: for each candidate it reads "Passage: … Please write a question about this
passage. Question: <the question>" and scores the mean log-probability of the question's tokens.
A passage that holds the answer makes the question likely; a passage that merely shares its
words does not. The score is fused with the retrieval rank by reciprocal rank, because neither
alone is best on the measured set (bench/rag.py, docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kecil.errors import ConfigError

if TYPE_CHECKING:
    from kecil.infer.backend import Backend
    from kecil.rag.retrieve import Hit

INSTRUCTION = "Please write a question about this passage."


@dataclass(frozen=True)
class RerankConfig:
    """How to rerank. Defaults are the ones measured on the SQuAD tuning half (bench/rag.py)."""

    candidates: int = 10  # how many of the retrieved chunks are scored (the rest keep their order)
    passage_tokens: int = 320  # a longer chunk is cut to this many tokens when scored
    rrf_k: int = 2  # fusion of the model's ranking with the retrieval ranking: w / (rrf_k + rank)
    model_weight: float = 0.5  # 1.0 (equal say) and the model alone both measured worse
    retrieval_weight: float = 1.0
    model: str | None = None  # None = the embedded default model
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.candidates < 2:
            raise ConfigError(f"rerank candidates must be at least 2, got {self.candidates}")
        if self.passage_tokens < 16:
            raise ConfigError(f"rerank passage_tokens must be at least 16, got {self.passage_tokens}")
        if self.rrf_k < 0 or self.model_weight < 0 or self.retrieval_weight < 0:
            raise ConfigError("rerank rrf_k and weights must not be negative")


def question_logprobs(backend: Backend, question: str, passages: list[str], passage_tokens: int) -> list[float]:
    """Mean log p(question tokens | passage prompt) for each passage."""
    from kecil.infer.scoring import score_continuations

    asked = backend.tokenize(" " + question.strip(), add_bos=False)
    if not asked:
        raise ConfigError("the question to rerank for is empty")
    scores = []
    for passage in passages:
        ids = backend.tokenize(passage, add_bos=True)[:passage_tokens]
        prefix = ids + backend.tokenize(f"\n{INSTRUCTION}\nQuestion:", add_bos=False)
        room = backend.context_length - len(prefix) - len(asked)
        if room < 0:  # a tiny context: cut the passage, never the question
            prefix = ids[: max(1, len(ids) + room)] + prefix[len(ids):]
        scores.append(score_continuations(backend, prefix, [asked])[0].mean_logprob)
    return scores


def fuse_ranks(retrieval_order: list[int], model_scores: list[float], config: RerankConfig) -> list[int]:
    """Positions 0..n-1 reordered by weighted reciprocal rank of the retrieval order (position)
    and the model's order (by score, best first)."""
    by_model = sorted(range(len(model_scores)), key=lambda i: -model_scores[i])
    model_rank = {i: r for r, i in enumerate(by_model, start=1)}
    fused = {i: config.retrieval_weight / (config.rrf_k + r) + config.model_weight / (config.rrf_k + model_rank[i])
             for r, i in enumerate(retrieval_order, start=1)}
    return sorted(retrieval_order, key=lambda i: (-fused[i], model_rank[i]))


def rerank(question: str, hits: list[Hit], backend: Backend, config: RerankConfig | None = None) -> list[Hit]:
    """`hits` (best first) with the first `config.candidates` reordered; each reranked hit's
    score becomes its fused rerank score's rank-based value and the model score is kept in
    `rerank_score`."""
    config = config or RerankConfig()
    head, tail = hits[: config.candidates], hits[config.candidates :]
    if len(head) < 2:
        return list(hits)
    scores = question_logprobs(backend, question, [_passage(h) for h in head], config.passage_tokens)
    order = fuse_ranks(list(range(len(head))), scores, config)
    return [replace(head[i], rerank_score=scores[i]) for i in order] + tail


def _passage(hit: Hit) -> str:
    chunk = hit.chunk
    return f"{chunk.section}\n{chunk.text}" if chunk.section else chunk.text
