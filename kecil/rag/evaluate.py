"""`kecil rag eval`: how well a knowledge base finds answers, as recall@k and MRR over a QA file.

Each line of the QA file is {"question": ..., "answers": ["...", ...]}. A question counts as
found when one of its top-k chunks contains one of the answer strings (case-insensitive);
its reciprocal rank is 1/rank of the first such chunk (0 when none of the k has it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from kecil.errors import ConfigError
from kecil.rag.retrieve import Retriever, SearchConfig


@dataclass(frozen=True)
class QAItem:
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class EvalResult:
    kb: str
    method: str
    k: int
    questions: int
    recall: float  # recall@k
    mrr: float
    median_ms: float  # per query, retrieval only (queries are embedded in batches beforehand)
    ranks: list[int | None] = field(default_factory=list, repr=False)  # per question: rank of first hit

    def as_dict(self) -> dict:
        return {"kb": self.kb, "method": self.method, "k": self.k, "questions": self.questions,
                f"recall@{self.k}": round(self.recall, 4), "mrr": round(self.mrr, 4), "median_ms": round(self.median_ms, 2)}


def read_qa(path: Path) -> list[QAItem]:
    """QA items from a JSON Lines file; a malformed line is an error naming its line number."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the QA file {path} ({exc.strerror or exc})") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answers = row["answers"]
            answers = [answers] if isinstance(answers, str) else answers
            items.append(QAItem(str(row["question"]), tuple(str(a) for a in answers if str(a).strip())))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f'{path} line {number} is not {{"question": ..., "answers": [...]}}') from None
    if not items:
        raise ConfigError(f"{path} holds no questions")
    return items


def first_answer_rank(texts: list[str], answers: tuple[str, ...]) -> int | None:
    """1-based rank of the first text containing any answer (case-insensitive), or None."""
    wanted = [a.casefold() for a in answers]
    for rank, text in enumerate(texts, start=1):
        folded = text.casefold()
        if any(a in folded for a in wanted):
            return rank
    return None


def evaluate(
    retriever: Retriever, items: list[QAItem], config: SearchConfig | None = None,
    *, progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """recall@k and MRR of `retriever` on `items`, searching with `config`."""
    config = config or SearchConfig()
    if config.method != "bm25":
        retriever.embed_queries([item.question for item in items])  # batched: the times below are retrieval
    ranks: list[int | None] = []
    times: list[float] = []
    for item in items:
        started = time.perf_counter()
        hits = retriever.search(item.question, config)
        times.append(time.perf_counter() - started)
        ranks.append(first_answer_rank([h.chunk.text for h in hits], item.answers))
        if progress:
            progress(1)
    found = [r for r in ranks if r is not None]
    times.sort()
    return EvalResult(
        retriever.kb.name, config.method, config.k, len(items),
        recall=len(found) / len(items), mrr=sum(1 / r for r in found) / len(items),
        median_ms=times[len(times) // 2] * 1000, ranks=ranks,
    )


def evaluate_kb(kb: str, qa: Path, config: SearchConfig | None = None, *, progress=None) -> EvalResult:
    """`kecil rag eval`: open `kb`, read `qa`, evaluate."""
    items = read_qa(qa)
    with Retriever(kb) as retriever:
        return evaluate(retriever, items, config, progress=progress)


def with_k(config: SearchConfig, k: int) -> SearchConfig:
    return replace(config, k=k)
