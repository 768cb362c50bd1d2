"""Speculative decoding inside the batched llama.cpp engine, for the steps where one request runs
alone (most of a CPU user's time): its next token and a draft go into the batch together and the
model keeps the agreeing prefix (kecil/infer/speculative.py). With two or more requests running,
the engine decodes them together as usual: a batch already fills the pass that speculation would,
and drafting for each would cost more than it saves on two cores.

Requests whose sampling needs llama.cpp's own sampler chain are not sped up: grammars, logprobs,
frequency/presence or repetition penalties, and seeded sampling (a seeded request must repeat
exactly whether it ran alone or beside others, and the chain's random stream is not numpy's).
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter

from kecil.errors import BackendError
from kecil.infer.speculative import Draft, SpeculativeConfig, TokenSampler, accept, next_draft_length


@dataclass
class SoloState:
    """A request's speculation so far: its sampler (and random stream) and current draft length."""

    sampler: TokenSampler
    n_draft: int


class SoloSpeculation:
    """The drafter of one served model and the step that uses it; engine-thread only."""

    def __init__(self, drafter, spec: SpeculativeConfig):
        self.drafter, self.spec = drafter, spec
        self.stats = {"rounds": 0, "drafted": 0, "accepted": 0}

    @classmethod
    def open(cls, draft: str, vocab, target_name: str, context_length: int, threads: int) -> SoloSpeculation:
        from kecil.infer.drafting import open_drafter

        spec = SpeculativeConfig()
        return cls(open_drafter(draft, target_vocab=vocab, target_name=target_name, context_length=context_length,
                                threads=threads, spec=spec), spec)

    @staticmethod
    def suits(sequence) -> bool:
        config = sequence.config
        return (sequence.next_token is not None and sequence.scored is None and sequence.grammar is None
                and not sequence.extras.asks_for() and config.repetition_penalty == 1.0
                and (config.greedy or config.seed is None))

    def step(self, engine, sequence) -> None:
        """One round for `sequence`, alone in the engine: draft, verify in one batch, emit what passed."""
        import numpy as np

        state = sequence.speculation
        if state is None:
            sampler = TokenSampler(sequence.config, np.random.default_rng())
            state = sequence.speculation = SoloState(sampler, max(1, self.drafter.max_draft // 2))
        state.sampler.generated = sequence.generated
        room = min(state.n_draft, sequence.config.max_tokens - sequence.text.produced - 1,
                   engine.context_length - sequence.n_past - 2)
        ids = [*sequence.prompt_ids, *sequence.generated]  # ends with next_token, not yet evaluated
        draft = self.drafter.propose(ids, room, state.sampler) if room > 0 else Draft([])
        engine._batch.n_tokens = 0
        for j, token in enumerate([sequence.next_token, *draft.tokens]):
            engine._add(token, sequence.n_past + j, sequence.slot, True)
        status = engine._lib.llama_decode(engine._ctx.ctx, engine._batch)
        if status != 0:
            raise BackendError(f"llama.cpp failed to decode a batch (status {status})")
        rows = [engine._sampling.logits(i) for i in range(len(draft.tokens) + 1)]  # views: read before the next decode
        out = accept(state.sampler, rows, draft, [])
        kept = len(out) - 1
        sequence.n_past += 1 + kept  # the model's own last token is fed next step, as any sampled one
        engine._lib.llama_memory_seq_rm(engine._ctx.memory, sequence.slot, sequence.n_past, -1)
        sequence.next_token = None
        if draft.tokens:
            state.n_draft = next_draft_length(state.n_draft, kept, len(draft.tokens), self.spec, self.drafter.max_draft)
        self.stats["rounds"] += 1
        self.stats["drafted"] += len(draft.tokens)
        self.stats["accepted"] += kept
        now = perf_counter()
        for token in out:
            engine._take(sequence, token, now)
            if sequence.next_token is None:  # finished (stop, length or an end token)
                return
            sequence.next_token = None
        sequence.next_token = out[-1]

    def close(self) -> None:
        self.drafter.close()
