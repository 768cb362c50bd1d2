"""`kecil ask`: answer a question from a knowledge base with a local model, citing the chunks used.

The best chunks are retrieved (hybrid search), numbered, and given to the model with the
instruction to answer only from them and to cite them as [n]. When even the best chunk is not
similar enough to the question (a threshold measured on answerable vs unanswerable questions,
see docs/benchmarks.md), no model is run: the answer says the documents do not cover it,
rather than letting the model invent one. Small models often forget the [n] markers or write
wrong ones, so every answer sentence's markers are checked against the sources' words
(`check_sentences`); a sentence with a number that no source has is withheld. When nothing
the model wrote is in the sources, the sentence of the best source closest to the question is
shown after it, as a quote. A model that starts repeating a sentence is stopped there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import regex

from kecil.errors import ConfigError
from kecil.rag.chunking import sentence_windows
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
PASSAGE = "The closest passage in the documents:"  # how a quote shown in place of an answer starts
_STOP = ("\nQuestion:", "\nSources:")
_CITE = regex.compile(r"\[(\d+)\]")
_NUMBER = regex.compile(r"\p{N}+(?:[.,]\p{N}+)*")
_ENUMERATOR = regex.compile(r"\s*(?:\p{N}{1,3}|\p{L})[.)]")  # "1." or "b)" opening a list item: its own "sentence"
# a sentence, with any [n] markers written after its full stop; a single line break does not end
# one (small models copy a source's wrapped lines), a blank line does; nor does a Latin stop with
# a letter or digit right after it ("security@example.com", "3.5"); closing quotes and brackets
# right after its stop are its own (the marker goes after them: 'is "18 days." [1]'); a line that
# opens a list item ("2. ", "b) ", "- ") starts a new one
_SENTENCE = regex.compile(r"(?:[^.!?。！？\n]|\n(?!\n|[ \t]*(?:(?:\p{N}{1,3}|\p{L})[.)]|[-*•])[ \t])|[.!?]+(?=[\p{L}\p{N}]))+(?:[.!?。！？]+[\"'”’»」』)]*)?(?:[ \t]*\[\d+\])*")


@dataclass(frozen=True)
class AskConfig:
    """How to answer. The model and backend are chosen by the `model` argument of `ask`."""

    # Chunks given to the model: more confuse a small one. With SmolLM2-135M on 90 SQuAD questions
    # (scratch A/B, docs/benchmarks.md), its reply held the answer for 29 with the best 3 chunks,
    # against 14 with 5 chunks headed by file and lines as before, and 6 of 30 with 5 unheaded.
    k: int = field(default=3, metadata={"help": "How many chunks to give the model.", "flag": ("--k", "-k")})
    search: SearchConfig = field(default_factory=SearchConfig)
    min_similarity: float = MIN_SIMILARITY
    max_tokens: int = field(default=256, metadata={"help": "Most tokens to generate.", "flag": ("--max-tokens", "-n")})
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
    withheld: list[str] = field(default_factory=list)  # the model's sentences with a number in no source

    def as_dict(self) -> dict:
        return {"text": self.text, "answered": self.answered, "model": self.model,
                "citations": [c.as_dict() for c in self.citations], "withheld": self.withheld}


def refusal(kb: str) -> str:
    return f"I cannot answer that from the documents in the knowledge base '{kb}': none of them is about it."


def _citations(hits: list[Hit]) -> list[Citation]:
    return [
        Citation(n, h.chunk.path, h.chunk.page, h.chunk.start, h.chunk.end, unit_of(h.chunk.path), h.chunk.section, h.chunk.text, h.score)
        for n, h in enumerate(hits, start=1)
    ]


def build_messages(question: str, citations: list[Citation]) -> list[dict]:
    # Each source is its number and text only: with the file and lines in front of it, the
    # embedded 135M model copied them into its answers and went on to echo the whole prompt.
    sources = "\n\n".join(f"[{c.number}] {c.text}" for c in citations)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}\nAnswer in one or two sentences, citing sources like [1]."},
    ]


# Words that show nothing about where a sentence came from: the prompt's own, and English
# function words long enough to pass the length test ("must" is in half of any policy manual).
_NOT_EVIDENCE = {
    "answer", "source", "sources", "question", "document", "documents", "cannot", "according",
    "about", "after", "also", "been", "before", "being", "both", "could", "does", "each", "from",
    "have", "into", "just", "many", "more", "most", "much", "must", "only", "other", "over", "same",
    "should", "some", "such", "than", "that", "their", "them", "then", "there", "these", "they",
    "this", "those", "very", "were", "what", "when", "where", "which", "while", "will", "with",
    "would", "your",
}


def _content_terms(text: str) -> set[str]:
    """Terms that can show a sentence came from a source: numbers, longer words, non-Latin terms."""
    return {t for t in tokenise(text) if t.isdigit() or len(t) >= 4 or not t.isascii()} - _NOT_EVIDENCE


def _numbers(text: str) -> set[str]:
    """The numbers in `text`, with their separators dropped: "1,000" and "1000" are one number."""
    return {regex.sub(r"[.,]", "", n) for n in _NUMBER.findall(text)}


def attribute(text: str, citations: list[Citation], question: str = "") -> str:
    """`text` with its [n] markers checked against the sources (see `check_sentences`)."""
    checked = check_sentences(text, citations, question)[0]
    # withheld first sentences leave the space that followed them
    return checked if text[:1].isspace() else checked.lstrip()


def check_sentences(text: str, citations: list[Citation], question: str = "") -> tuple[str, list[str]]:
    """`text` with its [n] markers checked against the sources, and the sentences withheld.

    A marker stays only if source n shares at least half as many content terms with its
    sentence as the source sharing the most; a sentence left without one gets that source. No
    source is cited for a sentence that shares no term with any, or whose numbers are not all in
    it. A sentence with a number that is in none of the sources (nor in the question) is
    withheld: small models change the numbers they copy ("18 days" became "The answer is: 3"),
    and a wrong number next to a citation-checked answer reads as if the documents said it. A
    list's "1." is not a number."""
    if not citations:
        return text, []
    vocab = {c.number: _content_terms(c.text + " " + c.section) for c in citations}
    figures = {c.number: _numbers(c.text + " " + c.section) for c in citations}
    asked = _numbers(question)
    known = set().union(asked, *figures.values())
    out, withheld, at = [], [], 0
    for match in _SENTENCE.finditer(text):
        sentence = match.group()
        if _ENUMERATOR.fullmatch(sentence):
            out.append(text[at : match.end()])  # as it is, unless its item is withheld
            at = match.end()
            continue
        body = regex.sub(r"\s*\[\d+\]", "", sentence).rstrip()
        numbers = _numbers(body)
        if not numbers <= known:
            withheld.append(body.strip())
            if out and _ENUMERATOR.fullmatch(out[-1]):
                out.pop()
            else:
                out.append(text[at : match.start()])
            at = match.end()
            continue
        terms = _content_terms(body)
        cited = [int(n) for n in _CITE.findall(sentence)]
        shared = {n: len(terms & vocab[n]) for n in vocab}
        most = max(shared.values())
        keep = [n for n in dict.fromkeys(cited) if n in vocab and (not terms or shared[n] and 2 * shared[n] >= most)]
        if not keep and most:
            keep = [max(vocab, key=shared.__getitem__)]
        keep = [n for n in keep if numbers - asked <= figures[n]]
        if not body.strip():
            keep = []
        trailing = sentence[len(sentence.rstrip()):]
        out.append(text[at : match.start()] + body + "".join(f" [{n}]" for n in keep) + trailing)
        at = match.end()
    return "".join(out) + text[at:], withheld


def closest_passage(retriever: Retriever, question: str, text: str) -> str:
    """The sentence of `text` closest in meaning to `question`, by the knowledge base's embedder."""
    sentences = sentence_windows(text, 1)
    if len(sentences) == 1:
        return " ".join(text.split())
    vectors = retriever.embedder.embed(sentences, kind="passage")
    return " ".join(sentences[int((vectors @ retriever.query_vector(question)).argmax())].split())


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
    retriever = kb if isinstance(kb, Retriever) else None
    try:
        # kept open to the end: its embedder finds the closest passage when the answer needs one
        retriever = retriever or Retriever(kb)
        lent = backend is not None and retriever.rerank_model is None
        if lent:
            retriever.rerank_model = backend
        try:
            hits = retriever.search(question, replace(config.search, k=config.k))
        finally:
            if lent:
                retriever.rerank_model = None
        best = max((h.similarity for h in hits if h.similarity is not None), default=None)
        if not hits or best is None or best < config.min_similarity:
            text = refusal(retriever.kb.name)
            yield text
            yield Answer(text, [], answered=False)
            return

        backend = backend or answering_model()
        citations = _fit(backend, question, _citations(hits), config.max_tokens)
        # A small model that has answered sometimes goes on to write the next "Question:" itself.
        generation = GenerationConfig(max_tokens=config.max_tokens, temperature=config.temperature, stop=_STOP)
        checked = AttributedStream(citations, question)
        last = None
        stream = backend.stream_chat(build_messages(question, citations), generation)
        try:
            for chunk in stream:
                if chunk.text and (piece := checked.feed(chunk.text)):
                    yield piece
                last = chunk
                if checked.repeating:  # a small model that starts repeating itself says nothing new
                    break
        finally:
            stream.close()
        if piece := checked.finish():
            yield piece
        cited = sorted({int(n) for n in _CITE.findall(checked.text) if 1 <= int(n) <= len(citations)})
        if not cited and citations:
            # Nothing the model wrote is in the sources (small models at times answer "The answer
            # is: 1"): show the sentence of the best source closest to the question, so the
            # reader still gets what the documents say, marked as a quote and not as an answer.
            passage = closest_passage(retriever, question, citations[0].text)
            piece = ("\n\n" if checked.text else "") + f'{PASSAGE} "{passage}" [1]'
            checked.add(piece)
            yield piece
            cited = [1]
        text = checked.text
        used = [c for c in citations if c.number in cited] or citations
        yield Answer(text, used, answered=True, model=backend.ref.name, usage=last.usage if last else None,
                     timings=last.timings if last else None, withheld=checked.withheld)
    finally:
        if retriever is not None and retriever is not kb:
            retriever.close()
        if backend is not None and backend is not model:
            backend.close()


class AttributedStream:
    """The model's text as it streams, passed on one finished sentence at a time with its [n]
    markers already checked (`attribute`), so what a streaming reader sees is exactly the
    Answer's text. A sentence is finished once text that cannot be one of its markers follows."""

    _AFTER = regex.compile(r"[^\s\[\]\d]")  # a character no trailing " [12]" marker has

    def __init__(self, citations: list[Citation], question: str = ""):
        self.citations = citations
        self.question = question
        self._pending = ""  # raw text not yet passed on
        self._sent: list[str] = []
        self._seen: set[str] = set()
        self.repeating = False  # a finished sentence repeated an earlier one (and was dropped)
        self.withheld: list[str] = []  # sentences with a number in none of the sources

    @property
    def text(self) -> str:
        return "".join(self._sent)

    def feed(self, piece: str) -> str:
        self._pending += piece
        if not self._sent:
            self._pending = self._pending.lstrip()
        cut = 0
        for match in _SENTENCE.finditer(self._pending):
            if not (match.end() < len(self._pending) and self._AFTER.search(self._pending, match.end())):
                break
            if not _ENUMERATOR.fullmatch(match.group()):  # a list's "3." waits for its item: both may go
                cut = match.end()
        return self._emit(self._pending[:cut], self._pending[cut:])

    def finish(self) -> str:
        return "" if self.repeating else self._emit(self._pending.rstrip(), "")

    def add(self, text: str) -> None:
        """Text of kecil's own (not the model's), passed on as it is."""
        self._sent.append(text)

    def _emit(self, done: str, rest: str) -> str:
        self._pending = rest
        if not done:
            return ""
        kept = []
        for match in _SENTENCE.finditer(done):
            if _ENUMERATOR.fullmatch(match.group()):
                continue
            key = " ".join(tokenise(_CITE.sub("", match.group())))
            if key and key in self._seen:
                self.repeating = True
                break
            self._seen.add(key)
            kept.append(match)
        if self.repeating:
            self._pending = ""  # what follows a repeat is dropped with it
            done = done[: kept[-1].end()] if kept else ""
            if not done.strip():
                return ""
        out, withheld = check_sentences(done, self.citations, self.question)
        self.withheld += withheld
        if not self.text:  # a first sentence dropped whole (a bare marker) leaves its space behind
            out = out.lstrip()
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
