"""Chunking: group a file's blocks into passages the size an embedding model reads, along
headings and paragraphs, with a little overlap, each passage keeping its page and line range.

A heading always starts a new chunk, so a chunk never mixes two sections; its section path
(e.g. "Install > Linux") travels with the chunk and is indexed with it, because the words a
question shares with a passage are often in the heading above it. Paragraphs are kept whole
when they fit; a longer one is split at sentence ends. The last paragraph (or sentences) of a
chunk, up to `overlap_tokens`, is repeated at the start of the next, so an answer that sits on
a boundary is still whole in one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import regex

from kecil.errors import ConfigError
from kecil.rag.loaders import Block

# Rough token count: MiniLM's WordPiece gives ~1.3 tokens per English word; in scripts without
# spaces each character is about one token.
_WORD = regex.compile(r"[\p{L}\p{N}\p{M}]+")
_DENSE_CHAR = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
_SENTENCE_END = regex.compile(r"(?<=[.!?。！？।॥])\s+|(?<=[。！？])")


def approx_tokens(text: str) -> int:
    dense = len(_DENSE_CHAR.findall(text))
    spaced = len(_WORD.findall(_DENSE_CHAR.sub(" ", text)))
    return dense + (spaced * 13 + 9) // 10


@dataclass(frozen=True)
class ChunkConfig:
    """How big chunks are, in approximate model tokens (the default embedder reads 256)."""

    max_tokens: int = field(default=200, metadata={"help": "Largest chunk, in model tokens (about)."})
    overlap_tokens: int = field(default=40, metadata={"help": "Tokens repeated from the end of one chunk at the start of the next."})

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ConfigError(f"chunk max_tokens must be at least 16, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens // 2:
            raise ConfigError(f"chunk overlap must be between 0 and half of max_tokens ({self.max_tokens // 2}), got {self.overlap_tokens}")


@dataclass(frozen=True)
class TextChunk:
    text: str
    section: str
    start: int
    end: int
    page: int | None


@dataclass(frozen=True)
class _Piece:
    text: str
    start: int
    end: int
    tokens: int
    block: int  # which block it came from: pieces of one paragraph are joined by a space


def _pieces(block: Block, number: int, limit: int) -> list[_Piece]:
    """The block whole if it fits, else its sentences (or hard cuts of a run-on sentence),
    each with the lines it spans."""
    tokens = approx_tokens(block.text)
    if tokens <= limit:
        return [_Piece(block.text, block.start, block.end, tokens, number)]
    pieces: list[_Piece] = []
    offset = 0
    for sentence in _split_sentences(block.text, limit):
        at = block.text.find(sentence, offset)
        at = offset if at < 0 else at
        first = block.start + block.text.count("\n", 0, at) if block.end > block.start else block.start
        last = first + sentence.count("\n")
        offset = at + len(sentence)
        pieces.append(_Piece(sentence, first, min(last, block.end), approx_tokens(sentence), number))
    return pieces


def _split_sentences(text: str, limit: int) -> list[str]:
    out: list[str] = []
    for sentence in (s for s in _SENTENCE_END.split(text) if s.strip()):
        while approx_tokens(sentence) > limit:  # no sentence end in sight: cut at a word boundary
            words = sentence.split(" ")
            if len(words) == 1:  # no spaces either (CJK): cut by characters
                out.append(sentence[:limit])
                sentence = sentence[limit:]
                continue
            cut, size = 0, 0
            while cut < len(words) and size + approx_tokens(words[cut]) <= limit:
                size += approx_tokens(words[cut])
                cut += 1
            cut = max(cut, 1)
            out.append(" ".join(words[:cut]))
            sentence = " ".join(words[cut:])
        if sentence.strip():
            out.append(sentence)
    return out


def chunk_blocks(blocks: list[Block], config: ChunkConfig | None = None) -> list[TextChunk]:
    """Chunks of one file's blocks, in reading order."""
    config = config or ChunkConfig()
    chunks: list[TextChunk] = []
    current: list[_Piece] = []
    carried = 0  # how many pieces at the head of `current` are overlap from the previous chunk
    section, page = "", None

    def flush(keep_overlap: bool) -> None:
        nonlocal current, carried
        if len(current) > carried:  # a chunk of nothing but overlap says nothing new
            text = current[0].text
            for before, piece in zip(current, current[1:]):
                text += (" " if piece.block == before.block else "\n\n") + piece.text
            chunks.append(TextChunk(text, section, current[0].start, current[-1].end, page))
        current = _overlap(current, config.overlap_tokens) if keep_overlap and current else []
        carried = len(current)

    for number, block in enumerate(blocks):
        if block.heading or block.section != section or block.page != page:
            flush(keep_overlap=False)
            section, page = block.section, block.page
            if block.heading:
                continue  # the heading text rides along as the section of the chunks below it
        for piece in _pieces(block, number, config.max_tokens):
            if current and sum(p.tokens for p in current) + piece.tokens > config.max_tokens:
                flush(keep_overlap=True)
                if current and sum(p.tokens for p in current) + piece.tokens > config.max_tokens:
                    current, carried = [], 0
            current.append(piece)
    flush(keep_overlap=False)
    return chunks


def _overlap(pieces: list[_Piece], room: int) -> list[_Piece]:
    """The trailing pieces (or, of a long last piece, its trailing sentences) within `room` tokens."""
    tail: list[_Piece] = []
    for piece in reversed(pieces):
        if piece.tokens <= room:
            tail.insert(0, piece)
            room -= piece.tokens
            continue
        for sentence in reversed([s for s in _SENTENCE_END.split(piece.text) if s.strip()][1:]):
            tokens = approx_tokens(sentence)
            if tokens > room:
                break
            tail.insert(0, _Piece(sentence, piece.end - sentence.count("\n"), piece.end, tokens, piece.block))
            room -= tokens
        break
    return tail


# A paragraph break ends a "sentence" too: list items and table rows carry no full stop.
_WINDOW_BREAK = regex.compile(_SENTENCE_END.pattern + r"|\n\s*\n")


def sentence_windows(text: str, size: int) -> list[str]:
    """`text` cut into consecutive runs of about `size` sentences (as even as the count allows,
    none repeated): what a chunk's several vectors are made of (ingest.py). A text of at most
    1.5 x `size` sentences is its own single window."""
    sentences = [s.strip() for s in _WINDOW_BREAK.split(text) if s and s.strip()]
    runs = (2 * len(sentences) + size - 1) // (2 * size) if size >= 1 else 1  # n / size, a half rounded down
    if runs <= 1:
        return [text]
    bounds = [round(i * len(sentences) / runs) for i in range(runs + 1)]
    return [" ".join(sentences[a:b]) for a, b in zip(bounds, bounds[1:])]


def index_text(chunk_text: str, section: str) -> str:
    """What is embedded and BM25-indexed for a chunk: its section path, then its text."""
    return f"{section}\n{chunk_text}" if section else chunk_text
