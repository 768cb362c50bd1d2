"""Turning a stream of token ids into text chunks: incremental detokenizing, stop sequences,
finish reason, usage and timings — one implementation shared by every backend.

Both engines hand over token ids; doing the text side here (not inside llama-cpp-python's or
transformers' own streamers) keeps stop handling and token counts identical across backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from time import perf_counter

from kecil.infer.generation import Chunk, GenerationConfig, Timings, Usage

REPLACEMENT = "\ufffd"  # what a decoder gives for the first bytes of an unfinished UTF-8 character


class IncrementalDecoder:
    """Emits the new text each token adds, never half a multi-byte character.

    Decodes a short window (from the last emitted boundary) rather than one token at a time,
    because many tokenizers only produce correct spacing and UTF-8 with some left context.
    """

    def __init__(self, detokenize: Callable[[Sequence[int]], str]):
        self._detokenize = detokenize
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids up to here have been emitted

    def push(self, token: int) -> str:
        self._ids.append(token)
        prefix_text = self._detokenize(self._ids[self._prefix : self._read])
        text = self._detokenize(self._ids[self._prefix :])
        if len(text) > len(prefix_text) and not text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(prefix_text) :]
        return ""


class StopScanner:
    """Cuts the text at the first stop sequence, holding back any tail that could still become one."""

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(stops)
        self._buffer = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop sequence was hit)."""
        if not self._stops:
            return text, False
        self._buffer += text
        hits = [i for i in (self._buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._buffer = self._buffer[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._buffer)), hold, -1):
                if self._buffer.endswith(stop[:k]):
                    hold = k
                    break
        cut = len(self._buffer) - hold
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out


class TokenText:
    """The text side of one generation, fed one token id at a time: incremental decoding, stop
    sequences, the finish reason and token counts. `stream_tokens` drives it from an engine's
    iterator; the batched engine drives one per sequence from its decode loop."""

    def __init__(
        self,
        config: GenerationConfig,
        detokenize: Callable[[Sequence[int]], str],
        is_end: Callable[[int], bool],
    ):
        self.config = config
        self._is_end = is_end
        self._decoder, self._scanner = IncrementalDecoder(detokenize), StopScanner(config.stop)
        self.produced = 0  # tokens that became part of the answer
        self.received = 0  # decode steps, the end token too
        self.finish_reason: str | None = None  # set when the generation is over

    def push(self, token: int) -> str:
        """Text this token releases; afterwards `finish_reason` says whether generation is over."""
        self.received += 1
        if self._is_end(token) and not self.config.ignore_eos:
            self.finish_reason = "stop"
            return ""
        self.produced += 1
        text, hit = self._scanner.push(self._decoder.push(token))
        if hit:
            self.finish_reason = "stop"
        elif self.produced >= self.config.max_tokens:
            self.finish_reason = "length"
        return text

    def flush(self) -> str:
        """Text held back for a possible stop sequence that never completed."""
        if self.finish_reason is None:
            self.finish_reason = "length"
        return self._scanner.flush()


def stream_tokens(
    tokens: Iterator[int],
    *,
    prompt_tokens: int,
    config: GenerationConfig,
    detokenize: Callable[[Sequence[int]], str],
    is_end: Callable[[int], bool],
    started: float | None = None,
) -> Iterator[Chunk]:
    """Wrap an engine's token iterator into text Chunks ending with a final chunk.

    `started` is when prompt processing began (default: now); the prompt phase ends when the
    first new token arrives, and every later token counts as decoding.
    """
    started = perf_counter() if started is None else started
    state = TokenText(config, detokenize, is_end)
    first = last = None
    try:
        for token in tokens:
            last = perf_counter()
            first = first or last
            text = state.push(token)
            if text:
                yield Chunk(text)
            if state.finish_reason:
                break
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()  # stop the engine at once: a break here must not leave it generating
    tail = state.flush()
    end = last or perf_counter()
    first = first or end
    timings = Timings(
        prompt_tokens=prompt_tokens,
        prompt_seconds=first - started,
        decode_tokens=max(state.received - 1, 0),
        decode_seconds=end - first,
    )
    yield Chunk(tail, finish_reason=state.finish_reason, usage=Usage(prompt_tokens, state.produced), timings=timings)
