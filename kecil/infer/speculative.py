"""Speculative decoding: a cheap drafter proposes the next few tokens, the model checks them all in
one batch, and every proposal it agrees with is a token gained for the price of part of a pass.

On a CPU a decode step reads every weight once whether it evaluates one token or eight, so a batch
of 1 + k tokens costs little more than one; each accepted proposal saves a whole step. The drafter
is a smaller model with the same vocabulary or n-grams looked up in the prompt (kecil/infer/
drafting.py). What comes out is what the model alone would give:
- greedy (temperature 0): a proposal is kept while it is the model's own argmax, so the text is the
  same token for token (up to the last bits of floating point a batch may change);
- sampled: the speculative-sampling rule (Leviathan et al. 2023, Chen et al. 2023): keep a
  proposal d drafted with probability q(d) with probability min(1, p(d)/q(d)), else sample from
  max(p - q, 0) renormalised; the output then follows the model's p exactly.

llama-cpp-python's own `draft_model` hook is not used: it needs logits for every position of the
whole context (logits_all), verifies sampled text as if it were greedy (changing the distribution),
and takes no draft model, only prompt lookup.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kecil.errors import ConfigError
from kecil.infer.generation import GenerationConfig

PROMPT_LOOKUP = "prompt-lookup"  # the --draft value that drafts from the prompt's own n-grams
PENALTY_LAST_N = 64  # as llama-cpp-python: repetition penalties look at the last 64 generated tokens


@dataclass(frozen=True)
class SpeculativeConfig:
    """How much to draft per round; the draft length adapts between min_draft and max_draft."""

    # Measured on 2 cores (docs/benchmarks.md): the 1.5B checks 2 to 4 tokens in the time of one
    # and a half, 9 in three; each token a draft model proposes costs half a 1.5B step, a looked-up
    # one nothing (8 did a little better than 12 or 16 on a RAG answer).
    max_draft: int = field(default=4, metadata={"help": "Most tokens a draft model proposes per round."})
    max_lookup: int = field(default=8, metadata={"help": "Most tokens prompt lookup proposes per round."})
    min_draft: int = field(default=2, metadata={"help": "Fewest tokens proposed per round (when the drafter has them)."})
    # A draft model stops proposing once its own confidence in the next token falls below this:
    # a token it is unsure of is likely rejected, and drafting it costs a draft step (as llama.cpp's p_min).
    p_min: float = field(default=0.5, metadata={"help": "A draft model stops proposing below this probability."})
    ngram_max: int = field(default=4, metadata={"help": "Prompt lookup: longest n-gram matched."})
    ngram_min: int = field(default=2, metadata={"help": "Prompt lookup: shortest n-gram matched."})

    def __post_init__(self) -> None:
        if not 1 <= self.min_draft <= min(self.max_draft, self.max_lookup):
            raise ConfigError(f"need 1 <= min_draft <= max_draft and max_lookup, got {self.min_draft}, {self.max_draft} "
                              f"and {self.max_lookup}")
        if not 0 <= self.p_min < 1:
            raise ConfigError(f"p_min must be in [0, 1), got {self.p_min}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ConfigError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min} and {self.ngram_max}")


@dataclass
class Draft:
    """Proposed tokens and, for sampled drafts, the distribution each was drawn from (None: the
    drafter proposed it outright, i.e. with probability 1, as prompt lookup does)."""

    tokens: list[int]
    probs: list | None = None


class Drafter(Protocol):
    max_draft: int  # most tokens it proposes per round
    def propose(self, ids: Sequence[int], n: int, sampler: TokenSampler) -> Draft:
        """Up to `n` tokens likely to follow `ids` (the prompt and everything accepted so far)."""

    def close(self) -> None: ...


class Verifier(Protocol):
    """The model being sped up: one KV sequence it can extend by a batch and cut back."""

    n_past: int  # tokens in its cache

    def decode(self, tokens: Sequence[int], *, all_logits: bool):
        """Append `tokens`; their logits rows (all, or only the last one) as a float32 array."""

    def cut(self, n: int) -> None:
        """Keep the first `n` tokens of the cache."""


class TokenSampler:
    """Turns a logits row into the next token as the model's normal sampler would: llama.cpp's
    chain (penalties, top-k, top-p at temperature 1, then temperature), in numpy so that the
    full distribution is at hand for the acceptance rule."""

    def __init__(self, config: GenerationConfig, rng):
        self.config, self.rng = config, rng
        self.generated: list[int] = []  # what the penalty window looks at

    def penalised(self, logits, recent: Sequence[int] = ()):
        penalty = self.config.repetition_penalty
        if penalty == 1.0:
            return logits
        import numpy as np

        window = [*self.generated, *recent][-PENALTY_LAST_N:]
        if not window:
            return logits
        logits = logits.copy()
        ids = np.unique(np.asarray(window, dtype=np.int64))
        seen = logits[ids]
        logits[ids] = np.where(seen <= 0, seen * penalty, seen / penalty)
        return logits

    def probs(self, logits, recent: Sequence[int] = ()):
        """The distribution the next token is drawn from (float64, full vocabulary)."""
        import numpy as np

        cfg = self.config
        logits = self.penalised(logits, recent).astype(np.float64)
        ids = np.arange(len(logits))
        if 0 < cfg.top_k < len(logits):
            ids = np.argpartition(-logits, cfg.top_k - 1)[: cfg.top_k]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        kept = logits[ids]
        if cfg.top_p < 1.0:
            p = np.exp(kept - kept[0])
            cumulative = np.cumsum(p / p.sum())
            n = int(np.searchsorted(cumulative, cfg.top_p)) + 1  # the token that crosses top_p stays
            ids, kept = ids[:n], kept[:n]
        weights = np.exp((kept - kept[0]) / cfg.temperature)
        out = np.zeros(len(logits))
        out[ids] = weights / weights.sum()
        return out

    def pick(self, logits, recent: Sequence[int] = ()) -> int:
        """The next token: the argmax when greedy, else a draw from `probs`."""
        if self.config.greedy:
            return int(self.penalised(logits, recent).argmax())
        return self.draw(self.probs(logits, recent))

    def draw(self, probs) -> int:
        import numpy as np

        cumulative = np.cumsum(probs)
        return int(min(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"), len(probs) - 1))


def accept(sampler: TokenSampler, rows, draft: Draft, recent: Sequence[int]) -> list[int]:
    """Tokens to emit after checking `draft` against the model's logits `rows` (row i predicts the
    token after draft i - 1; the last row follows the whole draft): the agreeing prefix, then one
    token of the model's own (the correction at the first disagreement, or the one after a fully
    accepted draft). `recent` are the tokens before the draft not yet in `sampler.generated`."""
    out: list[int] = []
    for i, proposed in enumerate(draft.tokens):
        context = [*recent, *out]
        if sampler.config.greedy:
            token = sampler.pick(rows[i], context)
            out.append(token)
            if token != proposed:
                return out
            continue
        p = sampler.probs(rows[i], context)
        q_of = 1.0 if draft.probs is None else float(draft.probs[i][proposed])
        if q_of > 0 and sampler.rng.random() * q_of < p[proposed]:  # kept with probability min(1, p/q)
            out.append(proposed)
            continue
        import numpy as np

        if draft.probs is None:
            residual = p.copy()
            residual[proposed] = 0.0
        else:
            residual = np.maximum(p - draft.probs[i], 0.0)
        out.append(sampler.draw(residual if residual.sum() > 0 else p))
        return out
    out.append(sampler.pick(rows[len(draft.tokens)], [*recent, *out]))
    return out


def next_draft_length(n: int, kept: int, drafted: int, spec: SpeculativeConfig, limit: int) -> int:
    """Adapt the draft length (at most `limit`): longer while whole drafts pass, down to what passed
    (and one more) after a rejection, since a rejected token's batch row was paid for and wasted."""
    return min(limit, n + 2) if kept == drafted else max(spec.min_draft, kept + 1)


def speculate(
    target: Verifier, drafter: Drafter, prompt_ids: Sequence[int], config: GenerationConfig,
    spec: SpeculativeConfig, rng, *, is_end=lambda token: False, stats: dict | None = None,
) -> Iterator[int]:
    """Generate token ids after `prompt_ids` (already in `target`'s cache but for the last one,
    which `target` must not hold yet), drafting with `drafter`. Stops at max_tokens or an end
    token; the caller may stop earlier by closing the generator."""
    sampler = TokenSampler(config, rng)
    ids = list(prompt_ids)
    pending = [ids[-1]]  # tokens in `ids` the target has not evaluated yet
    remaining = config.max_tokens
    limit = getattr(drafter, "max_draft", spec.max_draft)
    n_draft = max(1, limit // 2)
    stats = {} if stats is None else stats
    stats.update(rounds=0, drafted=0, accepted=0)
    while remaining > 0:
        room = min(n_draft, remaining - 1)  # the model adds one token of its own to every round
        draft = drafter.propose(ids, room, sampler) if room > 0 else Draft([])
        rows = target.decode([*pending, *draft.tokens], all_logits=True)[len(pending) - 1:]
        out = accept(sampler, rows, draft, [])
        kept = len(out) - 1  # draft tokens accepted
        target.cut(target.n_past - len(draft.tokens) + kept)  # the last emitted token is not in it
        stats["rounds"] += 1
        stats["drafted"] += len(draft.tokens)
        stats["accepted"] += kept
        if draft.tokens:
            n_draft = next_draft_length(n_draft, kept, len(draft.tokens), spec, limit)
        for token in out[:remaining]:
            remaining -= 1
            sampler.generated.append(token)
            ids.append(token)
            yield token
            if is_end(token) and not config.ignore_eos:
                return
        pending = [ids[-1]]
