"""How sure a score is: the 95% confidence interval of an accuracy over n items (Wilson's score
interval, which stays inside [0, 1] and is honest at small n, unlike the normal approximation),
and the score a model gets by guessing on a multiple-choice task.

Wilson (1927), https://doi.org/10.1080/01621459.1927.10502953; Agresti & Coull (1998) compare it
with the other intervals for a binomial proportion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964  # the standard normal quantile of a two-sided 95% interval


def wilson_interval(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The interval of a proportion `rate` measured on `n` independent items."""
    if n <= 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(rates: Sequence[float], counts: Sequence[int], z: float = Z95) -> float:
    """The half-width of the 95% interval of the mean of several accuracies, each over its own
    items (normal approximation: the tasks' variances add)."""
    if not rates:
        return 0.0
    variance = sum(p * (1 - p) / max(n, 1) for p, n in zip(rates, counts)) / len(rates) ** 2
    return z * math.sqrt(variance)


def chance_level(choice_counts: Sequence[int]) -> float | None:
    """The expected accuracy of a uniform guess over items with these numbers of choices."""
    counts = [c for c in choice_counts if c > 0]
    return sum(1 / c for c in counts) / len(counts) if counts else None
