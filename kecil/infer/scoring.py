"""Log-likelihood scoring on any backend with logits: token log-probabilities, continuation
scores with the shared prefix evaluated once, and perplexity by llama.cpp's method.

Perplexity follows llama.cpp's `llama-perplexity` (tools/perplexity/perplexity.cpp): the text is
tokenized once (with BOS when the model adds one), cut into non-overlapping chunks of `context`
tokens, the first token of each chunk is replaced by BOS, and only the second half of each
chunk is scored, so every scored token has at least context/2 tokens before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kecil.errors import BackendError, ConfigError
from kecil.infer.backend import Backend

Progress = Callable[[int, int], None]  # (done, total)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (sums over a 50k vocabulary lose digits in float32)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_logprobs(backend: Backend, ids: Sequence[int]) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i >= 1: an array of len(ids) - 1 values."""
    ids = list(ids)
    if len(ids) < 2:
        raise ConfigError("scoring needs at least two tokens: the first one is only context")
    rows = log_softmax(backend.logits(ids[:-1]))
    return rows[np.arange(len(ids) - 1), ids[1:]]


@dataclass(frozen=True)
class ContinuationScore:
    """How likely a continuation is after a context."""

    logprob: float  # sum of log p over the continuation's tokens
    tokens: int
    greedy: bool  # every continuation token was the model's top choice

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.tokens


def score_continuations(
    backend: Backend, context: Sequence[int], continuations: Sequence[Sequence[int]]
) -> list[ContinuationScore]:
    """Score each continuation after `context` (the answers of one multiple-choice question).

    The context is evaluated once: its last row gives every continuation's first token, and a
    longer continuation only adds its own tokens on top of the context's cached keys and values.
    """
    context = list(context)
    if not context:
        raise ConfigError("a continuation needs a non-empty context (start it with BOS)")
    if any(not c for c in continuations):
        raise ConfigError("every continuation needs at least one token")
    first = log_softmax(backend.logits(context, start=len(context) - 1))[0]
    top = int(first.argmax())
    scores = []
    for cont in continuations:
        cont = list(cont)
        logprob, greedy = float(first[cont[0]]), cont[0] == top
        if len(cont) > 1:
            rows = log_softmax(backend.logits(context + cont[:-1], start=len(context)))
            picked = rows[np.arange(len(cont) - 1), cont[1:]]
            logprob += float(picked.sum())
            greedy = greedy and bool((rows.argmax(axis=-1) == np.asarray(cont[1:])).all())
        scores.append(ContinuationScore(logprob, len(cont), greedy))
    return scores


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    chunks: int
    context: int


def perplexity_chunks(ids: Sequence[int], context: int, bos: int | None) -> list[list[int]]:
    """The chunks llama-perplexity evaluates: whole windows of `context` tokens, BOS first."""
    chunks = []
    for start in range(0, len(ids) - context + 1, context):
        chunk = list(ids[start : start + context])
        if bos is not None:
            chunk[0] = bos
        chunks.append(chunk)
    return chunks


def perplexity(
    backend: Backend, text: str, *, context: int = 512, progress: Progress | None = None, max_chunks: int | None = None
) -> PerplexityResult:
    """Perplexity of `text` by llama.cpp's method (see the module docstring); `max_chunks` scores
    only the first chunks, like llama-perplexity's --chunks."""
    if context < 4:
        raise ConfigError(f"the perplexity context must be at least 4 tokens, got {context}")
    if context > backend.context_length:
        raise ConfigError(
            f"a perplexity context of {context} tokens does not fit the model's {backend.context_length}-token "
            "window: lower --context or load the model with a larger one"
        )
    ids = backend.tokenize(text, add_bos=backend.adds_bos)
    bos = ids[0] if backend.adds_bos and ids else None
    chunks = perplexity_chunks(ids, context, bos)
    if len(ids) < 2 * context:
        # llama-perplexity refuses this too; one chunk scores too few tokens to say much.
        raise ConfigError(
            f"the text is {len(ids)} tokens; perplexity with a context of {context} needs at least "
            f"{2 * context}: give a longer text or a smaller --context"
        )
    if max_chunks is not None:
        chunks = chunks[: max(1, max_chunks)]
    first = context // 2
    total, count = 0.0, 0
    for done, chunk in enumerate(chunks, 1):
        rows = log_softmax(backend.logits(chunk[:-1], start=first))
        picked = rows[np.arange(len(rows)), chunk[first + 1 :]]
        total -= float(picked.sum())
        count += len(picked)
        if progress:
            progress(done, len(chunks))
    if count == 0:
        raise BackendError("no token was scored")
    nll = total / count
    return PerplexityResult(perplexity=math.exp(nll), nll=nll, tokens=count, chunks=len(chunks), context=context)
