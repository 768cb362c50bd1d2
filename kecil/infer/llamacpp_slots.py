"""Which KV stream (slot) each request of the batched llama.cpp engine runs in, which prompt
tokens each stream still holds, so that a new request evaluates only what differs, and the
requests themselves (BatchSequence) as the engine tracks them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from time import perf_counter

from kecil.infer.backend import shared_prefix_length
from kecil.infer.engine import GenerationHandle, SamplingExtras
from kecil.infer.generation import Chunk, GenerationConfig, TokenLogprob
from kecil.infer.streaming import TokenText

# Prompt tokens a copied cache must save before a new request starts from another slot's KV
# stream: across streams llama.cpp copies the source's whole buffer (every layer, the full
# context), which for a small model costs about what evaluating a few prompt tokens does.
COPY_GAIN = 8


class Slots:
    """The engine's slots: which are free, what each holds, when each was last handed out.

    Used from the engine thread only; the caller guards `free` where other threads read it.
    """

    def __init__(self, parallel: int):
        self.parallel = parallel
        self.free = list(range(parallel))
        # The prompt tokens each stream holds: a free slot keeps its last request's prompt (requests
        # to one server mostly share a chat template and system prompt, as llama.cpp's server
        # finds); a running one, what it has fed so far.
        self.held: list[list[int]] = [[] for _ in range(parallel)]
        self.last_used = [0.0] * parallel  # 0 = never

    def take(self, prompt: list[int], *, busy: bool) -> tuple[int, int | None]:
        """A free slot for `prompt`, and the slot whose stream to copy into it first (or None).

        A decode step is fastest while the busy slots run consecutively (see the engine's _step),
        so a busy engine hands out the lowest free slot. An idle engine has no order to keep: it
        takes a free slot whose whole held prompt begins `prompt`, else the least recently used
        one (an empty one first), so the prompts the others hold stay for their next turn. Then,
        when another slot, free or busy, holds a longer prefix of `prompt` (the same question
        again, the next turn of a conversation, a shared system prompt), its stream is worth
        copying over, as llama-server reuses its best-matching slot.
        """
        shared = [shared_prefix_length(tokens, prompt) for tokens in self.held]
        if busy:
            slot = min(self.free)
        else:
            whole = [s for s in self.free if self.held[s] and shared[s] >= len(self.held[s])]
            slot = (max(whole, key=lambda s: (shared[s], -s)) if whole
                    else min(self.free, key=lambda s: (self.last_used[s], s)))
        self.free.remove(slot)
        self.last_used[slot] = perf_counter()
        source = max(range(self.parallel), key=lambda s: (shared[s], -s))
        return slot, (source if shared[source] - shared[slot] >= COPY_GAIN else None)

    def reuse(self, lib, memory, slot: int, source: int | None, prompt: list[int], limit: int) -> int:
        """Keep in `slot`'s KV stream the prefix of `prompt` it holds, at most `limit` tokens, after
        copying `source`'s stream into it when given; drop the rest. Returns the tokens kept."""
        if source is not None:
            lib.llama_memory_seq_rm(memory, slot, -1, -1)
            # Across KV streams llama.cpp copies the whole stream buffer at the next decode, so
            # the copy holds exactly the cells `source` has now, even while `source` runs on.
            lib.llama_memory_seq_cp(memory, source, slot, -1, -1)
        keep = min(shared_prefix_length(self.held[slot if source is None else source], prompt), limit)
        lib.llama_memory_seq_rm(memory, slot, keep, -1)
        self.held[slot] = prompt[:keep]
        return keep


@dataclass(eq=False)
class BatchSequence:
    """One request in the batched engine: its prompt, the slot it holds and where it stands."""

    prompt_ids: list[int]
    config: GenerationConfig
    extras: SamplingExtras
    emit: Callable[[Chunk], None]
    handle: GenerationHandle
    submitted: float = field(default_factory=perf_counter)
    slot: int = -1
    fed: int = 0  # prompt tokens already in the KV cache
    n_past: int = 0
    next_token: int | None = None  # sampled, not yet fed back
    batch_index: int = -1  # row of this step's logits to sample from, -1 = none this step
    sampler: object = None
    grammar: int | None = None  # a llama_sampler pointer, kept out of the chain (see Sampling.sample)
    text: TokenText | None = None
    started: float = 0.0  # when prompt processing began
    first: float = 0.0  # when the first token was sampled
    last: float = 0.0
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)  # sampled tokens, the end token too
    speculation: object = None  # a SoloState once the request has run speculatively (llamacpp_solo.py)
    # Scoring instead of generating (Engine.score): log-probabilities of prompt_ids[score_from:].
    scored: Future | None = None
    score_ids: list[int] = field(default_factory=list)  # the whole scored text (prompt_ids less its last token)
    score_from: int = 0
    score_rows: list[tuple[int, int]] = field(default_factory=list)  # (batch row, prompt position) this step
    scores: list[float] = field(default_factory=list)
