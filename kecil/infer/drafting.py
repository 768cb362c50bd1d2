"""Where speculative decoding's proposals come from (kecil/infer/speculative.py): a smaller model
with the same vocabulary, or the prompt itself (prompt lookup: an answer that quotes its sources
repeats n-grams of the prompt, so the tokens that followed the last n-gram there are a good guess).

A proposal only ever costs or saves time: the model checks every one, so a bad drafter makes
decoding slower, never different.
"""

from __future__ import annotations

from collections.abc import Sequence

from kecil.errors import BackendError, ConfigError
from kecil.infer.speculative import PROMPT_LOOKUP, Draft, SpeculativeConfig, TokenSampler


class LlamaSequence:
    """One KV sequence of a llama.cpp context, extended by batches and cut back: the model side of
    speculation (a `Verifier`) and the draft model's own cache."""

    def __init__(self, lib, ctx, n_vocab: int, *, batch_size: int = 512, seq: int = 0):
        self._lib, self._ctx, self.n_vocab, self._seq = lib, ctx, n_vocab, seq
        self._memory = lib.llama_get_memory(ctx)
        self._batch_size = batch_size
        self._batch = lib.llama_batch_init(batch_size, 0, 1)
        self.ids: list[int] = []  # what the cache holds

    @property
    def n_past(self) -> int:
        return len(self.ids)

    def decode(self, tokens: Sequence[int], *, all_logits: bool):
        """Append `tokens` to the cache; the logits of each (all_logits) or of the last only."""
        import ctypes

        import numpy as np

        lib, batch = self._lib, self._batch
        rows = np.empty((len(tokens) if all_logits else min(1, len(tokens)), self.n_vocab), dtype=np.float32)
        for begin in range(0, len(tokens), self._batch_size):
            piece = tokens[begin : begin + self._batch_size]
            final = begin + len(piece) == len(tokens)
            for k, token in enumerate(piece):
                batch.token[k] = token
                batch.pos[k] = len(self.ids) + k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = self._seq
                batch.logits[k] = all_logits or (final and k == len(piece) - 1)
            batch.n_tokens = len(piece)
            status = lib.llama_decode(self._ctx, batch)
            if status != 0:
                self.cut(0)
                raise BackendError(f"llama.cpp failed to evaluate {len(piece)} tokens (llama_decode returned {status})")
            self.ids.extend(int(t) for t in piece)
            wanted = range(len(piece)) if all_logits else (range(len(piece) - 1, len(piece)) if final else ())
            for k in wanted:
                pointer = ctypes.cast(lib.llama_get_logits_ith(self._ctx, k), ctypes.POINTER(ctypes.c_float))
                rows[begin + k if all_logits else 0] = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        return rows

    def cut(self, n: int) -> None:
        if n < len(self.ids) or n == 0:
            if not self._lib.llama_memory_seq_rm(self._memory, self._seq, n, -1):
                self._lib.llama_memory_seq_rm(self._memory, self._seq, -1, -1)  # cannot cut mid-way: start over
                n = 0
        del self.ids[n:]

    def follow(self, ids: Sequence[int], *, logits: bool):
        """Make the cache hold `ids`, evaluating only what differs from what it holds; with
        `logits`, the last token is always evaluated and its row returned."""
        shared = 0
        for a, b in zip(self.ids, ids):
            if a != b:
                break
            shared += 1
        self.cut(min(shared, len(ids) - 1) if logits else shared)
        rest = list(ids[len(self.ids):])
        rows = self.decode(rest, all_logits=False) if rest else None
        return rows[-1] if logits else None

    def close(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            self._lib.llama_batch_free(batch)


class PromptLookup:
    """Proposes the tokens that followed the latest earlier occurrence of the text's last n-gram
    (longest n first), as in Saxena's prompt-lookup decoding; no model, almost no time."""

    def __init__(self, spec: SpeculativeConfig):
        self.max_draft = spec.max_lookup
        self._sizes = range(spec.ngram_max, spec.ngram_min - 1, -1)
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> where the text after its latest occurrence starts
        self._indexed = 0  # n-grams ending before this position are in _latest
        self._tail: int | None = None  # ids[_indexed - 1], to notice a different text

    def propose(self, ids: Sequence[int], n: int, sampler: TokenSampler) -> Draft:
        if self._indexed > len(ids) or (self._indexed and ids[self._indexed - 1] != self._tail):
            self._latest, self._indexed = {}, 0  # another text: index afresh
        end_limit = len(ids) - 1  # the final n-gram must not find itself
        for end in range(self._indexed + 1, end_limit + 1):
            for size in self._sizes:
                if end >= size:
                    self._latest[tuple(ids[end - size : end])] = end
        self._indexed = max(self._indexed, end_limit)
        self._tail = ids[self._indexed - 1] if self._indexed else None
        for size in self._sizes:
            if len(ids) > size:
                start = self._latest.get(tuple(ids[len(ids) - size :]))
                if start is not None:
                    return Draft([int(t) for t in ids[start : start + n]])
        return Draft([])

    def close(self) -> None:
        pass


class DraftModel:
    """A smaller GGUF model with the same vocabulary, drafting greedily (or, when sampling, from
    its own distribution under the same settings) on its own llama.cpp context."""

    def __init__(self, spec_text: str, target_vocab, *, target_name: str, context_length: int, threads: int,
                 spec: SpeculativeConfig):
        from kecil.infer.llamacpp_context import BatchContext
        from kecil.models.reference import resolve

        ref = resolve(spec_text)
        if ref.format != "gguf":
            raise ConfigError(f"--draft {spec_text}: a draft model runs on llama.cpp, so it must be a GGUF file "
                              "(`kecil quantize` makes one)")
        self.ref, self._spec, self.max_draft = ref, spec, spec.max_draft
        self._native = BatchContext(ref, context_length=context_length, parallel=1, batch_size=512, threads=threads)
        try:
            lib, model = self._native.lib, self._native.model
            check_same_vocabulary(lib, target_vocab, model.vocab, target=target_name, draft=ref.name)
            self._seq = LlamaSequence(lib, self._native.ctx.ctx, model.n_vocab())
        except BaseException:
            self._native.close()
            raise

    def propose(self, ids: Sequence[int], n: int, sampler: TokenSampler) -> Draft:
        import numpy as np

        row = self._seq.follow(ids, logits=True)
        tokens: list[int] = []
        probs = None if sampler.config.greedy else []
        for i in range(n):
            if probs is None:
                token = int(row.argmax())
                shifted = np.exp(row - row[token])
                if i >= 1 and 1.0 / shifted.sum() < self._spec.p_min:  # unsure: likely rejected
                    break
            else:
                q = sampler.probs(row, tokens)
                token = sampler.draw(q)
                probs.append(q)
            tokens.append(token)
            if i + 1 < n:
                row = self._seq.decode([token], all_logits=False)[0]
        return Draft(tokens, probs)

    def close(self) -> None:
        seq, self._seq = getattr(self, "_seq", None), None
        if seq is not None:
            seq.close()
        self._native.close()


class LookupFirst:
    """Prompt lookup where the text repeats the prompt, the draft model elsewhere: a looked-up
    draft costs nothing to make, a draft model's costs a pass of the draft per token."""

    def __init__(self, lookup: PromptLookup, model: DraftModel):
        self.lookup, self.model = lookup, model
        self.max_draft = lookup.max_draft  # a model's draft stays within its own limit (propose's n is capped)

    def propose(self, ids: Sequence[int], n: int, sampler: TokenSampler) -> Draft:
        found = self.lookup.propose(ids, n, sampler)
        return found if len(found.tokens) >= 2 else self.model.propose(ids, min(n, self.model.max_draft), sampler)

    def close(self) -> None:
        self.model.close()


def vocabulary_sample(lib, vocab) -> tuple[int, list[bytes]]:
    """A vocabulary's size and the text of 256 tokens spread over it (and its special tokens)."""
    n = lib.llama_vocab_n_tokens(vocab)
    ids = sorted({*range(0, n, max(1, n // 256)), n - 1, lib.llama_vocab_eos(vocab), lib.llama_vocab_bos(vocab)})
    return n, [lib.llama_vocab_get_text(vocab, i) if 0 <= i < n else b"" for i in ids]


def check_same_vocabulary(lib, target_vocab, draft_vocab, *, target: str, draft: str) -> None:
    """Refuse a draft model whose token ids mean other text than the model's: its proposals would
    be checked as if they were the model's own tokens."""
    (n_target, target_texts), (n_draft, draft_texts) = vocabulary_sample(lib, target_vocab), vocabulary_sample(lib, draft_vocab)
    if n_target != n_draft:
        raise ConfigError(f"--draft {draft} has a vocabulary of {n_draft:,} tokens and {target} one of {n_target:,}: "
                          "a draft model must share the model's tokenizer (pick a smaller model of the same family, "
                          f"or use --draft {PROMPT_LOOKUP})")
    differ = sum(a != b for a, b in zip(target_texts, draft_texts))
    if differ:
        raise ConfigError(f"--draft {draft} has as many tokens as {target} but {differ} of {len(target_texts)} sampled "
                          f"tokens differ: a draft model must share the model's tokenizer (or use --draft {PROMPT_LOOKUP})")


def open_drafter(draft: str, *, target_vocab, target_name: str, context_length: int, threads: int,
                 spec: SpeculativeConfig | None = None):
    """The drafter `--draft` names: prompt lookup, a draft model checked against the target's
    vocabulary, or both as "prompt-lookup+MODEL" (lookup first, the model where it finds nothing)."""
    spec = spec or SpeculativeConfig()
    if draft == PROMPT_LOOKUP:
        return PromptLookup(spec)
    both = draft.startswith(PROMPT_LOOKUP + "+")
    model = DraftModel(draft[len(PROMPT_LOOKUP) + 1:] if both else draft, target_vocab, target_name=target_name,
                       context_length=context_length, threads=threads, spec=spec)
    return LookupFirst(PromptLookup(spec), model) if both else model
