"""Retrieval: BM25 (SQLite FTS5), dense (embedding dot product) and the two fused by weighted
reciprocal rank (Cormack et al. 2009, https://doi.org/10.1145/1571941.1572114).

Fusion scores a chunk  w_bm25 / (rrf_k + rank_bm25) + w_dense / (rrf_k + rank_dense)  over the
top `depth` of each list. Plain RRF (equal weights, k=60) has been measured below BM25 alone on
paragraph QA elsewhere, so the defaults here are the ones tuned by bench/rag.py for each embedding
model (FUSION): a small k (the first ranks count most), BM25 weighted up for MiniLM and down for
multilingual-e5-small (see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kecil.errors import ConfigError
from kecil.rag.store import KnowledgeBase, StoredChunk
from kecil.rag.tokenise import fts_match, query_terms

if TYPE_CHECKING:
    import numpy as np

    from kecil.infer.backend import Backend
    from kecil.infer.embeddings import Embedder
    from kecil.rag.rerank import RerankConfig

METHODS = ("hybrid", "bm25", "dense")
# BM25 leaves out query terms found in more than this share of the chunks (see Retriever.selective_terms);
# measured on SQuAD to cost no recall (docs/benchmarks.md).
COMMON_SHARE = 0.2
# Fusion (rrf_k, BM25 weight) per embedding model, each the measured best of bench/rag.py for
# that model: MiniLM on SQuAD's held-out half recall@5 0.976 against 0.945 for BM25 alone (plain
# RRF, k=60 and equal weights: 0.955); multilingual-e5-small, whose dense side is much stronger,
# needs BM25 weighted less, or hybrid falls below e5 dense alone on Chinese/Japanese/Korean/
# Indonesian questions (0.651 against 0.676; with these 0.705, and 0.988 on SQuAD).
FUSION = {"all-minilm-l6-v2": (5, 1.5), "multilingual-e5-small": (2, 0.75)}
DEFAULT_FUSION = FUSION["all-minilm-l6-v2"]


@dataclass(frozen=True)
class SearchConfig:
    """How to search. Defaults are the measured best on the SQuAD QA set (bench/rag.py)."""

    k: int = 5
    method: str = "hybrid"  # hybrid | bm25 | dense
    depth: int = 50  # candidates taken from each list before fusing
    # None: the measured best for the knowledge base's embedding model (FUSION).
    rrf_k: int | None = None
    bm25_weight: float | None = None
    dense_weight: float = 1.0
    path: str | None = None  # only chunks of this file, or of files in this folder
    rerank: RerankConfig | None = None  # reorder the best candidates with the language model (rerank.py)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown search method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.depth < self.k:
            object.__setattr__(self, "depth", self.k)
        if (self.rrf_k or 0) < 0 or (self.bm25_weight or 0) < 0 or self.dense_weight < 0:
            raise ConfigError("rrf_k and the fusion weights must not be negative")

    def for_embedder(self, name: str | None) -> SearchConfig:
        """This config with the fusion settings left open filled in for embedding model `name`."""
        rrf_k, bm25_weight = FUSION.get(name or "", DEFAULT_FUSION)
        return replace(self, rrf_k=rrf_k if self.rrf_k is None else self.rrf_k,
                       bm25_weight=bm25_weight if self.bm25_weight is None else self.bm25_weight)


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk, with the score of the method used and its rank in each list (1-based)."""

    chunk: StoredChunk
    score: float
    bm25_rank: int | None = None
    dense_rank: int | None = None
    similarity: float | None = None  # cosine similarity of chunk and query (dense and hybrid)
    rerank_score: float | None = None  # the reranking model's mean log-probability of the question (rerank.py)


class Retriever:
    """A knowledge base opened for searching, with its embedding model loaded once."""

    def __init__(self, kb: str | KnowledgeBase, *, embedder: Embedder | str | None = None, rerank_model: Backend | None = None):
        self.kb = kb if isinstance(kb, KnowledgeBase) else KnowledgeBase.open(kb)
        self.rerank_model = rerank_model  # loaded on the first reranked search when None
        self._owns_rerank_model = False
        self._owns_kb = not isinstance(kb, KnowledgeBase)
        self._embedder = embedder
        self._owns_embedder = False
        self._query_vectors: dict[str, np.ndarray] = {}
        if isinstance(embedder, str) or embedder is None:
            name = embedder or self.kb.embedder_name
            if name != self.kb.embedder_name:
                self.kb.check_embedder(name, self.kb.dimension)  # raises: another model's vectors
            self._embedder = None
        else:
            self.kb.check_embedder(embedder.name, embedder.dimension)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from kecil.infer.embeddings import load_embedder

            self._embedder = load_embedder(self.kb.embedder_name)
            self._owns_embedder = True
            self.kb.check_embedder(self._embedder.name, self._embedder.dimension)
        return self._embedder

    def _reranker(self, config: RerankConfig) -> Backend:
        if self.rerank_model is None:
            from kecil.infer.load import load_model

            self.rerank_model = load_model(config.model, backend=config.backend)
            self._owns_rerank_model = True
        return self.rerank_model

    def close(self) -> None:
        if self._owns_embedder and self._embedder is not None:
            self._embedder.close()
        if self._owns_rerank_model and self.rerank_model is not None:
            self.rerank_model.close()
            self.rerank_model = None
        if self._owns_kb:
            self.kb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the three lists ------------------------------------------------------------------
    def _allowed(self, config: SearchConfig) -> set[int] | None:
        if config.path is None:
            return None
        return self.kb.chunk_ids_under(str(Path(config.path).expanduser().resolve()))

    def bm25(self, query: str, limit: int, allowed: set[int] | None = None, *, common: float | None = None) -> list[tuple[int, float]]:
        # Under a path filter every term stays: the common ones may be all the chosen files share with the query.
        common = 1.0 if allowed is not None else COMMON_SHARE if common is None else common
        match = fts_match(self.selective_terms(query, common))
        return self.kb.bm25(match, limit, allowed) if match else []

    def selective_terms(self, query: str, common: float) -> list[str]:
        """The query's terms without those in more than `common` of the chunks. FTS5 scores
        every chunk that holds any query term, so at 100k chunks "the" alone costs ~100 ms,
        while its BM25 weight (idf) is near zero. If every term is that common, the rarest stay."""
        terms = query_terms(query)
        if common >= 1 or not terms:
            return terms
        counts, total = self.kb.term_chunks(terms)
        kept = [t for t in terms if counts[t] <= common * total]
        return kept or sorted(terms, key=counts.__getitem__)[:3]

    def dense(self, query: str, limit: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        import numpy as np

        ids, matrix = self.kb.vectors()
        if not len(ids):
            return []
        vector = self.query_vector(query)
        scores = similarities(matrix, vector)
        if allowed is not None:
            scores = np.where(np.isin(ids, np.fromiter(allowed, np.int64, len(allowed))), scores, -np.inf)
        limit = min(limit, len(ids))
        top = np.argpartition(-scores, limit - 1)[:limit]
        top = top[np.argsort(-scores[top])]
        return [(int(ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def query_vector(self, query: str) -> np.ndarray:
        vector = self._query_vectors.get(query)
        if vector is None:
            vector = self.embedder.embed([query], kind="query")[0]
            self._remember({query: vector})
        return vector

    def embed_queries(self, queries: list[str], batch_size: int = 64) -> None:
        """Embed many queries in batches up front (much faster than one by one); search uses them."""
        todo = [q for q in dict.fromkeys(queries) if q not in self._query_vectors]
        if todo:
            self._remember(dict(zip(todo, self.embedder.embed(todo, batch_size=batch_size, kind="query"))))

    def forget_queries(self) -> None:
        self._query_vectors.clear()

    def _remember(self, vectors: dict) -> None:
        self._query_vectors.update(vectors)
        while len(self._query_vectors) > 4096:  # bounded: a server sees endless new questions
            self._query_vectors.pop(next(iter(self._query_vectors)))

    # --- what callers use -----------------------------------------------------------------
    def search(self, query: str, config: SearchConfig | None = None) -> list[Hit]:
        """The best `config.k` chunks for `query`, best first."""
        config = (config or SearchConfig()).for_embedder(self.kb.embedder_name)
        if config.rerank is not None:
            from kecil.rag.rerank import rerank

            wide = replace(config, rerank=None, k=max(config.k, config.rerank.candidates))
            return rerank(query, self.search(query, wide), self._reranker(config.rerank), config.rerank)[: config.k]
        allowed = self._allowed(config)
        if config.method == "bm25":
            ranked = [(i, s, r, None) for r, (i, s) in enumerate(self.bm25(query, config.k, allowed), start=1)]
            return self._hits(ranked, {})
        dense = self.dense(query, config.depth if config.method == "hybrid" else config.k, allowed)
        similarity = dict(dense)
        if config.method == "dense":
            return self._hits([(i, s, None, r) for r, (i, s) in enumerate(dense, start=1)], similarity)
        bm25 = self.bm25(query, config.depth, allowed)
        fused = fuse(bm25, dense, config)[: config.k]
        missing = [row[0] for row in fused if row[0] not in similarity]
        if missing:  # found by BM25 alone: their similarity still tells `kecil ask` how relevant they are
            similarity.update(self._similarities(query, missing))
        return self._hits(fused, similarity)

    def _similarities(self, query: str, chunk_ids: list[int]) -> dict[int, float]:
        import numpy as np

        ids, matrix = self.kb.vectors()
        rows = np.searchsorted(ids, chunk_ids)  # ids are ascending: chunk ids are never reused
        vector = self.query_vector(query)
        return {i: float(matrix[r] @ vector) for i, r in zip(chunk_ids, rows) if r < len(ids) and ids[r] == i}

    def _hits(self, ranked: list[tuple[int, float, int | None, int | None]], similarity: dict[int, float]) -> list[Hit]:
        chunks = self.kb.chunks([r[0] for r in ranked])
        return [Hit(chunks[i], s, b, d, similarity.get(i)) for i, s, b, d in ranked if i in chunks]


def similarities(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix @ vector, computed by torch rather than numpy. numpy's OpenBLAS and torch (which
    just embedded the query) each keep their own pool of threads that spin while idle; on a
    2-core machine the two pools took turns stalling each other, which put the dense p95 at
    150 ms for a 10 ms product (docs/benchmarks.md). One pool for both keeps it at ~20 ms."""
    import torch

    return torch.mv(torch.from_numpy(matrix), torch.from_numpy(vector)).numpy()


def fuse(bm25: list[tuple[int, float]], dense: list[tuple[int, float]], config: SearchConfig) -> list[tuple[int, float, int | None, int | None]]:
    """Weighted reciprocal-rank fusion of two ranked lists: (id, score, bm25 rank, dense rank), best first."""
    config = config.for_embedder(None)  # settings left open: the default model's
    scores: dict[int, float] = {}
    ranks: dict[int, list[int | None]] = {}
    for which, (ranking, weight) in enumerate(((bm25, config.bm25_weight), (dense, config.dense_weight))):
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (config.rrf_k + rank)
            ranks.setdefault(chunk_id, [None, None])[which] = rank
    order = sorted(scores, key=lambda i: (-scores[i], ranks[i][0] or 1 << 30))
    return [(i, scores[i], ranks[i][0], ranks[i][1]) for i in order]


def search(query: str, kb: str, config: SearchConfig | None = None) -> list[Hit]:
    """One-off search of knowledge base `kb` (opens and closes it; use Retriever for many queries)."""
    with Retriever(kb) as retriever:
        return retriever.search(query, config)


def with_method(config: SearchConfig, method: str) -> SearchConfig:
    return replace(config, method=method)
