"""`kecil ask`: answer a question from a knowledge base with a local model, citing the chunks used.

The best chunks are retrieved (hybrid search), numbered, and given to the model with the
instruction to answer only from them and to cite them as [n]. When even the best chunk is not
similar enough to the question (a threshold measured on answerable vs unanswerable questions,
see docs/benchmarks.md), no model is run: the answer says the documents do not cover it,
rather than letting the model invent one. Small models often forget the [n] markers; then
each answer sentence is given the marker of the source that shares the most words with it, and
a marker the model did write is kept only if that source shares a word with its sentence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import regex

from kecil.errors import ConfigError
from kecil.rag.loaders import unit_of
from kecil.rag.retrieve import Hit, Retriever, SearchConfig
from kecil.rag.tokenise import tokenise

if TYPE_CHECKING:
    from kecil.infer.backend import Backend
    from kecil.infer.generation import Timings, Usage

# Below this cosine similarity between the question and the best chunk (its best sentence
# window), the knowledge base is taken not to cover the question. Measured with all-MiniLM-L6-v2
# on SQuAD (bench/rag.py, part refusal): 95.9% of answerable questions pass, 66.7% of
# unanswerable ones are refused (0.30 on whole-chunk vectors, before windows: 95.3% / 58.3%).
MIN_SIMILARITY = 0.35
SYSTEM = (
    "You answer questions using only the numbered sources you are given. "
    "Cite the sources you use like [1]. If the sources do not contain the answer, "
    "say that you cannot answer from these documents."
)
_CITE = regex.compile(r"\[(\d+)\]")
# a sentence, with any [n] markers written after its full stop; a single line break does not end
# one (small models copy a source's wrapped lines), a blank line does
_SENTENCE = regex.compile(r"(?:[^.!?。！？\n]|\n(?!\n))+(?:[.!?。！？]+)?(?:[ \t]*\[\d+\])*")


@dataclass(frozen=True)
class AskConfig:
    """How to answer. The model and backend are chosen by the `model` argument of `ask`."""

    k: int = 5
    search: SearchConfig = field(default_factory=SearchConfig)
    min_similarity: float = MIN_SIMILARITY
    max_tokens: int = 256
    temperature: float = 0.0  # answers from documents should not vary from run to run
    context_length: int | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        if not -1 <= self.min_similarity <= 1:
            raise ConfigError(f"min_similarity is a cosine similarity in [-1, 1], got {self.min_similarity}")


@dataclass(frozen=True)
class Citation:
    number: int
    file: str
    page: int | None
    start: int
    end: int
    unit: str  # what start/end count: lines, paragraphs (.docx) or items (.json)
    section: str
    text: str
    score: float

    @property
    def where(self) -> str:
        """Human form of the location: "guide.pdf, page 3, lines 10-14"."""
        span = f"{self.unit} {self.start}" + (f"-{self.end}" if self.end != self.start else "")
        if span.startswith(("lines ", "paragraphs ", "items ")) and self.start == self.end:
            span = span.replace("lines", "line", 1).replace("paragraphs", "paragraph", 1).replace("items", "item", 1)
        return f"{self.file}, " + (f"page {self.page}, " if self.page else "") + span

    def as_dict(self) -> dict:
        return {"number": self.number, "file": self.file, "page": self.page, "lines": [self.start, self.end],
                "unit": self.unit, "section": self.section, "text": self.text, "score": self.score}


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Citation]
    answered: bool  # False when the documents held nothing relevant and no model was run
    model: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None

    def as_dict(self) -> dict:
        return {"text": self.text, "answered": self.answered, "model": self.model,
                "citations": [c.as_dict() for c in self.citations]}


def refusal(kb: str) -> str:
    return f"I cannot answer that from the documents in the knowledge base '{kb}': none of them is about it."


def _citations(hits: list[Hit]) -> list[Citation]:
    return [
        Citation(n, h.chunk.path, h.chunk.page, h.chunk.start, h.chunk.end, unit_of(h.chunk.path), h.chunk.section, h.chunk.text, h.score)
        for n, h in enumerate(hits, start=1)
    ]


def build_messages(question: str, citations: list[Citation]) -> list[dict]:
    sources = "\n\n".join(f"[{c.number}] ({c.where})\n{c.text}" for c in citations)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}\nAnswer in one or two sentences, citing sources like [1]."},
    ]


_NOT_EVIDENCE = {"answer", "source", "sources", "question", "document", "documents", "cannot", "from", "these", "that", "this", "with", "according"}


def _content_terms(text: str) -> set[str]:
    """Terms that can show a sentence came from a source: numbers, longer words, non-Latin terms."""
    return {t for t in tokenise(text) if t.isdigit() or len(t) >= 4 or not t.isascii()} - _NOT_EVIDENCE


def attribute(text: str, citations: list[Citation]) -> str:
    """`text` with its [n] markers checked against the sources: a marker stays only if source n
    shares a content term with its sentence; a sentence left without one gets the source that
    shares the most (none if no source shares any: then the claim is not in the documents)."""
    if not citations:
        return text
    vocab = {c.number: _content_terms(c.text + " " + c.section) for c in citations}
    out, at = [], 0
    for match in _SENTENCE.finditer(text):
        sentence = match.group()
        body = regex.sub(r"\s*\[\d+\]", "", sentence).rstrip()
        terms = _content_terms(body)
        cited = [int(n) for n in _CITE.findall(sentence)]
        keep = [n for n in dict.fromkeys(cited) if n in vocab and (not terms or terms & vocab[n])]
        if not keep and terms:
            best = max(vocab, key=lambda n: len(terms & vocab[n]))
            keep = [best] if terms & vocab[best] else []
        if not body.strip():
            keep = []
        trailing = sentence[len(sentence.rstrip()):]
        out.append(text[at : match.start()] + body + "".join(f" [{n}]" for n in keep) + trailing)
        at = match.end()
    return "".join(out) + text[at:]


def _fit(backend: Backend, question: str, citations: list[Citation], max_tokens: int) -> list[Citation]:
    """The leading citations whose prompt fits the model's window with room for the answer."""
    while citations:
        ids = backend.chat_prompt_ids(build_messages(question, citations))
        if len(ids) + max_tokens <= backend.context_length:
            return citations
        citations = citations[:-1]
    return citations


def stream_ask(
    question: str, kb: str | Retriever, *, model: str | Backend | None = None,
    config: AskConfig | None = None, k: int | None = None,
) -> Iterator[str | Answer]:
    """Yield the answer's text pieces as the model writes them, then the finished Answer."""
    from dataclasses import replace

    from kecil.infer.backend import Backend
    from kecil.infer.generation import GenerationConfig
    from kecil.infer.load import load_model

    config = config or AskConfig()
    if k is not None:
        config = replace(config, k=k)
    if not question.strip():
        raise ConfigError("the question is empty")

    def answering_model() -> Backend:
        return model if isinstance(model, Backend) else load_model(model, backend=config.backend, context_length=config.context_length)

    # Reranking (when asked for, with no model of its own) uses the answering model: one model in memory.
    rerank = config.search.rerank
    backend = answering_model() if rerank is not None and rerank.model is None else None
    try:
        retriever = kb if isinstance(kb, Retriever) else Retriever(kb)
        lent = backend is not None and retriever.rerank_model is None
        if lent:
            retriever.rerank_model = backend
        try:
            hits = retriever.search(question, replace(config.search, k=config.k))
            kb_name = retriever.kb.name
        finally:
            if lent:
                retriever.rerank_model = None
            if retriever is not kb:
                retriever.close()
        best = max((h.similarity for h in hits if h.similarity is not None), default=None)
        if not hits or best is None or best < config.min_similarity:
            text = refusal(kb_name)
            yield text
            yield Answer(text, [], answered=False)
            return

        backend = backend or answering_model()
        citations = _fit(backend, question, _citations(hits), config.max_tokens)
        generation = GenerationConfig(max_tokens=config.max_tokens, temperature=config.temperature)
        checked = AttributedStream(citations)
        last = None
        for chunk in backend.stream_chat(build_messages(question, citations), generation):
            if chunk.text and (piece := checked.feed(chunk.text)):
                yield piece
            last = chunk
        if piece := checked.finish():
            yield piece
        text = checked.text
        cited = sorted({int(n) for n in _CITE.findall(text) if 1 <= int(n) <= len(citations)})
        used = [c for c in citations if c.number in cited] or citations
        yield Answer(text, used, answered=True, model=backend.ref.name, usage=last.usage if last else None, timings=last.timings if last else None)
    finally:
        if backend is not None and backend is not model:
            backend.close()


class AttributedStream:
    """The model's text as it streams, passed on one finished sentence at a time with its [n]
    markers already checked (`attribute`), so what a streaming reader sees is exactly the
    Answer's text. A sentence is finished once text that cannot be one of its markers follows."""

    _AFTER = regex.compile(r"[^\s\[\]\d]")  # a character no trailing " [12]" marker has

    def __init__(self, citations: list[Citation]):
        self.citations = citations
        self._pending = ""  # raw text not yet passed on
        self._sent: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._sent)

    def feed(self, piece: str) -> str:
        self._pending += piece
        if not self._sent:
            self._pending = self._pending.lstrip()
        cut = 0
        for match in _SENTENCE.finditer(self._pending):
            if match.end() < len(self._pending) and self._AFTER.search(self._pending, match.end()):
                cut = match.end()
            else:
                break
        return self._emit(self._pending[:cut], self._pending[cut:])

    def finish(self) -> str:
        return self._emit(self._pending.rstrip(), "")

    def _emit(self, done: str, rest: str) -> str:
        self._pending = rest
        if not done:
            return ""
        out = attribute(done, self.citations)
        self._sent.append(out)
        return out


def ask(question: str, kb: str | Retriever, *, model: str | Backend | None = None, config: AskConfig | None = None, k: int | None = None) -> Answer:
    """Answer `question` from knowledge base `kb` (see stream_ask)."""
    answer = None
    for piece in stream_ask(question, kb, model=model, config=config, k=k):
        if isinstance(piece, Answer):
            answer = piece
    assert answer is not None
    return answer
