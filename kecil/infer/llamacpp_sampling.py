"""Sampling for the batched llama.cpp engine: each sequence's sampler chain, its response grammar,
and the log-probabilities of what it picks — the per-token half of kecil/infer/llamacpp_batched.py,
whose other half schedules sequences into batches.

The chain is built exactly as llama-cpp-python's `Llama.generate` builds it (the single-sequence
backend in kecil/infer/llamacpp.py), so a seeded request gives the same text alone, in a batch,
or through `kecil generate`.
"""

from __future__ import annotations

import ctypes
import random

from kecil.errors import UnsupportedError
from kecil.infer.engine import SamplingExtras
from kecil.infer.generation import GenerationConfig, TokenLogprob

PENALTY_LAST_N = 64  # llama-cpp-python's default window for repetition penalties, kept for parity


def _token_data_dtype():
    import numpy as np

    return np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


def log_softmax_at(logits, token: int, top: int = 0, piece=str) -> TokenLogprob:
    """The log-probability of `token` in a row of logits, with the `top` likeliest alternatives
    (each named by `piece(token_id)`)."""
    import numpy as np

    shifted = logits - logits.max()
    log_norm = float(np.log(np.exp(shifted).sum()))
    alternatives: tuple[tuple[str, float], ...] = ()
    if top:
        best = np.argpartition(-shifted, top)[:top]
        best = best[np.argsort(-shifted[best])]
        alternatives = tuple((piece(int(t)), float(shifted[t]) - log_norm) for t in best)
    return TokenLogprob(piece(token), float(shifted[token]) - log_norm, alternatives)


class Sampling:
    """Samplers of one llama.cpp context. Used only from the engine's decode thread, but for
    `grammar`, which reads only the vocabulary: a request's grammar is compiled when it is submitted."""

    def __init__(self, lib, internals, model, ctx):
        self._lib, self._internals, self._model, self._ctx = lib, internals, model, ctx
        self._vocab = model.vocab
        self.n_vocab = model.n_vocab()

    def chain(self, config: GenerationConfig, extras: SamplingExtras):
        """The chain llama-cpp-python's Llama.generate builds (see llamacpp.py)."""
        sampler = self._internals.LlamaSampler()
        sampler.add_penalties(
            n_vocab=self.n_vocab,
            penalty_last_n=PENALTY_LAST_N,
            penalty_repeat=config.repetition_penalty,
            penalty_freq=extras.frequency_penalty,
            penalty_present=extras.presence_penalty,
        )
        if config.greedy:
            sampler.add_greedy()
        else:
            sampler.add_top_k(config.top_k)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(config.top_p, 1)
            sampler.add_min_p(0.0, 1)
            sampler.add_temp(config.temperature)
            sampler.add_dist(config.seed if config.seed is not None else random.getrandbits(32))
        return sampler

    def grammar(self, gbnf: str, triggers: tuple[str, ...] = ()):
        """A llama_sampler pointer for the GBNF grammar, kept out of the chain (see `sample`);
        with `triggers`, a lazy one that holds only once one of them matches the answer."""
        if triggers:
            patterns = (ctypes.c_char_p * len(triggers))(*(t.encode("utf-8") for t in triggers))
            grammar = self._lib.llama_sampler_init_grammar_lazy_patterns(
                self._vocab, gbnf.encode("utf-8"), b"root", patterns, len(triggers), None, 0)
        else:
            grammar = self._lib.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
        if not grammar:
            raise UnsupportedError("llama.cpp cannot follow the grammar this request's schema makes (the kecil.llamacpp "
                                   "log says why): simplify the schema (smaller minItems, maxItems or maxLength, "
                                   "fewer properties)")
        return grammar

    def free_grammar(self, grammar) -> None:
        self._lib.llama_sampler_free(grammar)

    def sample(self, chain, grammar, row: int) -> int:
        """The next token from batch row `row`'s logits, accepted by the chain (and grammar)."""
        if grammar is None:  # sample and accept in one C call: the fast path
            return self._lib.llama_sampler_sample(chain.sampler, self._ctx.ctx, row)
        return self._sample_constrained(chain.sampler, grammar, row)

    def logits(self, row: int):
        """Batch row `row`'s logits as a numpy view (valid until the next decode)."""
        import numpy as np

        pointer = self._lib.llama_get_logits_ith(self._ctx.ctx, row)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))

    def logprob(self, row: int, token: int, top: int = 0) -> TokenLogprob:
        return log_softmax_at(self.logits(row), token, top, self.piece)

    def piece(self, token: int) -> str:
        return self._model.token_to_piece(token, True).rstrip(b"\0").decode("utf-8", errors="replace")

    def _candidates(self, ids, logits):
        """A llama_token_data_array over numpy memory (kept alive by the returned array)."""
        import numpy as np

        data = np.empty(len(ids), dtype=_token_data_dtype())
        data["id"], data["logit"], data["p"] = ids, logits, 0.0
        lib = self._lib
        array = lib.llama_token_data_array(data.ctypes.data_as(lib.llama_token_data_p), len(ids), -1, False)
        return data, array

    def _sample_constrained(self, chain, grammar, row: int) -> int:
        """Grammar-constrained sampling the way llama.cpp's own server does it: sample freely, keep
        the token if the grammar allows it, and only otherwise mask the whole vocabulary and sample
        again. Masking 49k candidates costs far more than checking one, and most tokens pass."""
        import numpy as np

        lib = self._lib
        logits = self.logits(row)
        ids = np.arange(self.n_vocab, dtype=np.int32)
        keep, array = self._candidates(ids, logits)
        lib.llama_sampler_apply(chain, ctypes.byref(array))
        token = array.data[array.selected].id
        one, single = self._candidates(np.array([token], dtype=np.int32), np.array([1.0], dtype=np.float32))
        lib.llama_sampler_apply(grammar, ctypes.byref(single))
        if not np.isfinite(one["logit"][0]):
            keep, array = self._candidates(ids, logits)
            lib.llama_sampler_apply(grammar, ctypes.byref(array))
            lib.llama_sampler_apply(chain, ctypes.byref(array))
            token = array.data[array.selected].id
        lib.llama_sampler_accept(grammar, token)
        lib.llama_sampler_accept(chain, token)
        return int(token)
