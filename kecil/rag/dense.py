"""A query's cosine similarity to the chunks of a knowledge base: the scores every store engine
hands retrieval's dense side and fusion (retrieve.py), whatever computed them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def similarities(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix @ vector, computed by torch rather than numpy. numpy's OpenBLAS and torch (which
    just embedded the query) each keep their own pool of threads that spin while idle; on a
    2-core machine the two pools took turns stalling each other, which put the dense p95 at
    150 ms for a 10 ms product (docs/benchmarks.md). One pool for both keeps it at ~20 ms."""
    import torch

    return torch.mv(torch.from_numpy(matrix), torch.from_numpy(vector)).numpy()


@dataclass(frozen=True)
class DenseScores:
    """One query's cosine similarity to every chunk (-inf for chunks a path filter leaves out)."""

    ids: np.ndarray  # chunk ids, ascending (chunk ids are never reused)
    scores: np.ndarray

    def top(self, limit: int) -> list[tuple[int, float]]:
        """The best `limit` (chunk id, cosine), best first."""
        import numpy as np

        limit = min(limit, len(self.ids))
        if limit < 1:
            return []
        top = np.argpartition(-self.scores, limit - 1)[:limit]
        top = top[np.argsort(-self.scores[top])]
        return [(int(self.ids[i]), float(self.scores[i])) for i in top if np.isfinite(self.scores[i])]

    def of(self, chunk_ids: list[int]) -> dict[int, float]:
        """{chunk id: cosine} for those of `chunk_ids` the knowledge base holds."""
        import numpy as np

        rows = np.searchsorted(self.ids, chunk_ids)
        return {i: float(self.scores[r]) for i, r in zip(chunk_ids, rows) if r < len(self.ids) and self.ids[r] == i}

    def spread(self) -> tuple[float, float]:
        """(mean, standard deviation) of the cosines over the chunks searched: what a z-score needs."""
        import numpy as np

        searched = self.scores[np.isfinite(self.scores)]
        if len(searched) < 2:
            return 0.0, 1.0
        return float(searched.mean(dtype=np.float64)), float(searched.std(dtype=np.float64)) or 1.0
