"""`kecil ask --route FILE`: a knowledge-base answer routed like any other. The retrieved chunks
go into the prompt the small model answers; when it is unsure the same prompt goes to the next
tier, and to a remote one only redacted: the chunks are part of what is redacted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kecil.route.routefile import RouteFile
from kecil.route.router import Routed, RouteRequest, route


@dataclass
class RoutedAnswer:
    routed: Routed
    citations: list = field(default_factory=list)  # kecil.rag.ask.Citation, in the order numbered
    answered: bool = True


def ask_routed(question: str, kb: str, plan: RouteFile, *, k: int = 5, request: RouteRequest | None = None,
               open_model: Callable | None = None, audit: Callable[[dict], None] | None = None) -> RoutedAnswer:
    """Retrieve from `kb` and route the grounded question through `plan`'s tiers."""
    from dataclasses import replace

    from kecil.rag.ask import MIN_SIMILARITY, _citations, build_messages, refusal
    from kecil.rag.retrieve import Retriever, SearchConfig

    engines: dict = {}
    if open_model is None:
        def open_model(model: str):
            if model not in engines:
                from kecil.route.calibrate import open_local

                engines[model] = open_local(model, context=4096, threads=None, parallel=plan.confidence.samples + 1)[1]
            return engines[model]

    try:
        with Retriever(kb) as retriever:
            hits = retriever.search(question, replace(SearchConfig(), k=k))
            kb_name = retriever.kb.name
        best = max((h.similarity for h in hits if h.similarity is not None), default=None)
        if not hits or best is None or best < MIN_SIMILARITY:
            return RoutedAnswer(Routed(refusal(kb_name), plan.tiers[0].name, plan.tiers[0].model, None, False,
                                       "nothing in the knowledge base is about the question"), [], answered=False)
        citations = _citations(hits)
        routed = route(plan, build_messages(question, citations), open_model=open_model, request=request, audit=audit)
        return RoutedAnswer(routed, citations)
    finally:
        for engine in engines.values():
            engine.close()


def audit_file(path: Path) -> Callable[[dict], None]:
    """An audit callback appending one JSON line per escalation to `path` (kinds and counts only)."""
    def record(entry: dict) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, as every folder kecil makes
        line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **entry}, ensure_ascii=False)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    return record
