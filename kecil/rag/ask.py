"""`kecil ask`: answer a question from a knowledge base with a local model, citing the chunks used.

The best chunks are retrieved (hybrid search), numbered, and given to the model with the
instruction to answer only from them and to cite them as [n]. When even the best chunk is not
similar enough to the question (a threshold measured on answerable vs unanswerable questions,
see docs/benchmarks.md), no model is run: the answer says the documents do not cover it,
rather than letting the model invent one. Every answer leads with the evidence: the sentence of
the best chunk closest to the question, quoted and cited, and then what the model wrote, checked
(kecil/rag/checks.py): markers against the sources' words, a sentence whose number is not tied
to its words in a source withheld, a reply that repeats itself or turns to another script than
the question's stopped there. A small model's own sentences are often wrong; the quote is what
the documents say.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kecil.errors import ConfigError
from kecil.infer.speculative import PROMPT_LOOKUP
from kecil.rag.checks import _CITE, AttributedStream, attribute, check_sentences, content_terms, numbers, supported  # noqa: F401 (the checks were here)
from kecil.rag.chunking import sentence_windows
from kecil.rag.loaders import unit_of
from kecil.rag.retrieve import Hit, Retriever, SearchConfig
from kecil.rag.scripts import main_script

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
PASSAGE = "The closest passage in the documents:"  # how the quote every answer leads with starts
# said after the quote when the model's reply turned to another script than the question's
OFF_SCRIPT = "(The model went on in {got} script, not the question's {want}: it was stopped. The quote above is what the documents say.)"
_STOP = ("\nQuestion:", "\nSources:")
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
    # Answers quote their sources, so the prompt's own n-grams are good drafts (kecil/infer/speculative.py):
    # on a RAG answer, 1.4x the decode speed of SmolLM2-135M and Qwen2.5-Coder-0.5B, 2.1x the 1.5B's
    # (docs/benchmarks.md). The default applies where it can run (GGUF models on llama.cpp).
    draft: str | None = field(default=PROMPT_LOOKUP, metadata={"metavar": "MODEL", "help": (
        "Speculative decoding for the answer: 'prompt-lookup' (the sources' n-grams; the default on GGUF models), "
        "a smaller model with the same tokenizer, or 'none'. The same answer, sooner.")})

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
    withheld: list[str] = field(default_factory=list)  # the model's sentences with a number not tied to a source
    evidence: str = ""  # the quoted sentence the answer leads with (cited [1])
    note: str = ""  # kecil's note at the end when it stopped the model (another script)

    def as_dict(self) -> dict:
        return {"text": self.text, "answered": self.answered, "model": self.model, "evidence": self.evidence,
                "citations": [c.as_dict() for c in self.citations], "withheld": self.withheld, "note": self.note}


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


def _after_quote(piece: str, text: str) -> str:
    """`piece` of the model's checked `text`, set off from the quote when it is the first."""
    return piece if len(text) > len(piece) else "\n\n" + piece


def _draft_for(model: str | None, config: AskConfig) -> str | None:
    """The --draft to load the answering model with: none when asked for none, and the default
    (prompt lookup) only on the llamacpp backend, the one that speculates."""
    if config.draft is None or config.draft.lower() == "none":
        return None
    if config.draft == PROMPT_LOOKUP:
        from kecil.infer.load import DEFAULT_BACKEND
        from kecil.models.reference import resolve

        if (config.backend or DEFAULT_BACKEND[resolve(model).format]) != "llamacpp":
            return None
    return config.draft


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
        return model if isinstance(model, Backend) else load_model(model, backend=config.backend, context_length=config.context_length,
                                                                    draft=_draft_for(model, config))

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
        # The evidence first: the best source's sentence closest to the question. The 135M model
        # answered "The answer is: 2 [2]" next to "18 days" in its best source; the quote was right.
        evidence = closest_passage(retriever, question, citations[0].text)
        lead = f'{PASSAGE} "{evidence}" [1]'
        yield lead
        # A small model that has answered sometimes goes on to write the next "Question:" itself.
        generation = GenerationConfig(max_tokens=config.max_tokens, temperature=config.temperature, stop=_STOP)
        checked = AttributedStream(citations, question, script=main_script(question))
        last = None
        stream = backend.stream_chat(build_messages(question, citations), generation)
        try:
            for chunk in stream:
                if chunk.text and (piece := checked.feed(chunk.text)):
                    yield _after_quote(piece, checked.text)
                last = chunk
                # a reply that repeats itself says nothing new; one in another script than the
                # question's is not an answer (a Thai reply to Indonesian ran for 80 s)
                if checked.stopped:
                    break
        finally:
            stream.close()
        if piece := checked.finish():
            yield _after_quote(piece, checked.text)
        note = OFF_SCRIPT.format(got=checked.off_script, want=main_script(question)) if checked.off_script else ""
        if note:
            yield "\n\n" + note
        text = lead + ("\n\n" + checked.text if checked.text else "") + ("\n\n" + note if note else "")
        cited = {1} | {int(n) for n in _CITE.findall(checked.text)}
        used = [c for c in citations if c.number in cited]
        yield Answer(text, used, answered=True, model=backend.ref.name, usage=last.usage if last else None,
                     timings=last.timings if last else None, withheld=checked.withheld, evidence=evidence, note=note)
    finally:
        if retriever is not None and retriever is not kb:
            retriever.close()
        if backend is not None and backend is not model:
            backend.close()


def ask(question: str, kb: str | Retriever, *, model: str | Backend | None = None, config: AskConfig | None = None, k: int | None = None) -> Answer:
    """Answer `question` from knowledge base `kb` (see stream_ask)."""
    answer = None
    for piece in stream_ask(question, kb, model=model, config=config, k=k):
        if isinstance(piece, Answer):
            answer = piece
    assert answer is not None
    return answer
