"""Retrieval: BM25 (the store's: SQLite FTS5 or PostgreSQL postings, same scores), dense (embedding dot product) and the two fused, either by a
convex combination of normalised scores (Bruch et al. 2023, https://arxiv.org/abs/2210.11934) or
by weighted reciprocal rank (Cormack et al. 2009, https://doi.org/10.1145/1571941.1572114).

Both fuse the top `depth` of each list. Convex scores a chunk
    alpha * bm25 / best_bm25  +  (1 - alpha) * (cosine - mean_cosine) / std_cosine,
BM25 scaled by the query's best (its theoretical minimum is 0) and the cosine as a z-score over
every chunk of the knowledge base: the dense side has scored them all anyway, and the z-score says
how far a chunk stands out for this query, whatever the model's cosine range. Reciprocal rank
scores  w_bm25 / (rrf_k + rank_bm25) + w_dense / (rrf_k + rank_dense).  Plain RRF (equal
weights, k=60) has been measured below BM25 alone on paragraph QA elsewhere, so the defaults here
are the ones chosen by bench/rag.py for each embedding model (FUSION; see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kecil.errors import ConfigError
from kecil.rag.dense import DenseScores
from kecil.rag.store import KnowledgeBase, StoredChunk
from kecil.rag.tokenise import query_terms

if TYPE_CHECKING:
    import numpy as np

    from kecil.infer.backend import Backend
    from kecil.infer.embeddings import Embedder
    from kecil.rag.rerank import RerankConfig

METHODS = ("hybrid", "bm25", "dense")
FUSIONS = ("convex", "rrf")
# BM25 leaves out query terms found in more than this share of the chunks (see Retriever.selective_terms);
# measured on SQuAD to cost no recall (docs/benchmarks.md).
COMMON_SHARE = 0.2


@dataclass(frozen=True)
class FusionDefaults:
    """The fusion settings a knowledge base's embedding model gets unless a search sets its own."""

    fusion: str  # convex | rrf
    alpha: float  # convex: BM25's share
    rrf_k: int  # rrf: the rank offset
    bm25_weight: float  # rrf: BM25's weight (dense's is 1)


# Per embedding model, each the measured best of bench/rag.py for that model. MiniLM: convex,
# alpha chosen on SQuAD's tuning half, recall@5 0.978 on the held-out half against 0.945 for BM25
# alone and 0.976 for RRF k=5 / 1.5, and unlike that RRF never below BM25 on the non-English set
# (where MiniLM's dense side finds almost nothing). multilingual-e5-small keeps RRF with BM25
# weighted less: its dense side is much stronger, and convex with MiniLM's alpha fell below e5
# dense alone on Chinese/Japanese/Korean/Indonesian questions (RRF k=2 / 0.75: 0.705 against 0.676).
FUSION = {
    "all-minilm-l6-v2": FusionDefaults("convex", alpha=0.8, rrf_k=5, bm25_weight=1.5),
    "multilingual-e5-small": FusionDefaults("rrf", alpha=0.8, rrf_k=2, bm25_weight=0.75),
}
DEFAULT_FUSION = FUSION["all-minilm-l6-v2"]


@dataclass(frozen=True)
class SearchConfig:
    """How to search. Defaults are the measured best on the SQuAD QA set (bench/rag.py)."""

    k: int = field(default=5, metadata={"help": "How many chunks to retrieve.", "flag": ("--k", "-k")})
    method: str = field(default="hybrid", metadata={"help": "hybrid, bm25 or dense."})
    depth: int = 50  # candidates taken from each list before fusing
    # None: the measured best for the knowledge base's embedding model (FUSION).
    fusion: str | None = field(default=None, metadata={
        "help": "How hybrid fuses BM25 and dense: convex (normalised scores) or rrf (reciprocal rank); "
                "default: the measured best for the knowledge base's embedding model."})
    alpha: float | None = None  # convex: BM25's share, the cosine's is 1 - alpha
    rrf_k: int | None = None
    bm25_weight: float | None = None  # rrf
    dense_weight: float = 1.0  # rrf
    path: str | None = field(default=None, metadata={"help": "Only chunks of this file, or of the files in this folder."})
    rerank: RerankConfig | None = None  # reorder the best candidates with the language model (rerank.py)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown search method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.depth < self.k:
            object.__setattr__(self, "depth", self.k)
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose one of: {', '.join(FUSIONS)}")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha (BM25's share in convex fusion) must be between 0 and 1, got {self.alpha}")
        if (self.rrf_k or 0) < 0 or (self.bm25_weight or 0) < 0 or self.dense_weight < 0:
            raise ConfigError("rrf_k and the fusion weights must not be negative")

    def for_embedder(self, name: str | None) -> SearchConfig:
        """This config with the fusion settings left open filled in for embedding model `name`."""
        defaults = FUSION.get(name or "", DEFAULT_FUSION)
        return replace(self, **{f.name: getattr(defaults, f.name) for f in fields(defaults) if getattr(self, f.name) is None})


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk, with the score of the method used and its rank in each list (1-based)."""

    chunk: StoredChunk
    score: float
    bm25_rank: int | None = None
    dense_rank: int | None = None
    similarity: float | None = None  # best cosine similarity of the query to one of the chunk's vectors (dense and hybrid)
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
        terms = self.selective_terms(query, common)
        return self.kb.bm25(terms, limit, allowed) if terms else []

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
        return self.dense_scores(query, allowed).top(limit)

    def dense_scores(self, query: str, allowed: set[int] | None = None) -> DenseScores:
        """The query's cosine similarity to every chunk: to the best of the chunk's vectors (the
        store computes it: SQLite as one product over its matrix, PostgreSQL with pgvector)."""
        return self.kb.dense_scores(self.query_vector(query), allowed)

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
        scores = self.dense_scores(query, allowed)
        dense = scores.top(config.depth if config.method == "hybrid" else config.k)
        if config.method == "dense":
            return self._hits([(i, s, None, r) for r, (i, s) in enumerate(dense, start=1)], dict(dense))
        fused = fuse(self.bm25(query, config.depth, allowed), dense, config, scores)[: config.k]
        # BM25's finds carry their cosine similarity too: it tells `kecil ask` how relevant they are.
        return self._hits(fused, scores.of([row[0] for row in fused]))

    def _hits(self, ranked: list[tuple[int, float, int | None, int | None]], similarity: dict[int, float]) -> list[Hit]:
        chunks = self.kb.chunks([r[0] for r in ranked])
        return [Hit(chunks[i], s, b, d, similarity.get(i)) for i, s, b, d in ranked if i in chunks]


def fuse(bm25: list[tuple[int, float]], dense: list[tuple[int, float]], config: SearchConfig,
         scores: DenseScores | None = None) -> list[tuple[int, float, int | None, int | None]]:
    """Fuse two ranked lists of (chunk id, score), best first, by `config.fusion`: rows of (id,
    fused score, bm25 rank, dense rank), best first. Convex fusion needs `scores`, the query's
    cosine to every chunk: for the z-score's mean and spread, and the cosine of BM25's finds."""
    config = config.for_embedder(None)  # settings left open: the default model's
    ranks: dict[int, list[int | None]] = {}
    for which, ranking in enumerate((bm25, dense)):
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            ranks.setdefault(chunk_id, [None, None])[which] = rank
    if config.fusion == "convex":
        assert scores is not None, "convex fusion needs the query's cosine to every chunk"
        mean, std = scores.spread()
        cosine = scores.of(list(ranks))
        best = max((s for _, s in bm25), default=0.0) or 1.0
        bm25_scores = dict(bm25)
        fused = {i: config.alpha * bm25_scores.get(i, 0.0) / best + (1 - config.alpha) * (cosine[i] - mean) / std
                 for i in ranks if i in cosine}
    else:
        fused = {}
        for which, weight in enumerate((config.bm25_weight, config.dense_weight)):
            for chunk_id, rank in ((i, r[which]) for i, r in ranks.items() if r[which] is not None):
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (config.rrf_k + rank)
    order = sorted(fused, key=lambda i: (-fused[i], ranks[i][0] or 1 << 30))
    return [(i, fused[i], ranks[i][0], ranks[i][1]) for i in order]


def search(query: str, kb: str, config: SearchConfig | None = None) -> list[Hit]:
    """One-off search of knowledge base `kb` (opens and closes it; use Retriever for many queries)."""
    with Retriever(kb) as retriever:
        return retriever.search(query, config)


def with_method(config: SearchConfig, method: str) -> SearchConfig:
    return replace(config, method=method)
