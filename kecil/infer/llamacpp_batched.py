"""Continuous batching on llama.cpp: concurrent generations share every decode step of one model.

One thread owns a llama.cpp context with a KV-cache stream per sequence (`parallel` of them) and
runs the decode loop. Each step puts one token of every running sequence, plus prompt tokens of
newly admitted ones (chunked, so a long prompt never stalls the others for long), into a single
`llama_batch`; a request that arrives while others are generating joins at the next step instead
of waiting for them to finish. This is the scheme of llama.cpp's own server (one slot per request),
driven from Python through llama-cpp-python's C bindings, whose calls release the GIL.

This module schedules; each sequence samples through kecil/infer/llamacpp_sampling.py. It is
the llama.cpp engine of kecil/infer/engine.py: `submit` for generations, `score` for the
log-probabilities of a given text, both sharing the batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from time import perf_counter
from typing import ClassVar

from kecil.errors import BackendError, ConfigError
from kecil.infer.backend import Backend
from kecil.infer.engine import GenerationHandle, SamplingExtras, drain
from kecil.infer.generation import Chunk, GenerationConfig, Timings, Usage
from kecil.infer.llamacpp_context import BatchContext
from kecil.infer.llamacpp_sampling import Sampling
from kecil.infer.llamacpp_slots import BatchSequence, Slots
from kecil.infer.streaming import TokenText
from kecil.models.info import ModelInfo
from kecil.models.reference import ModelRef

class BatchedLlamaCppBackend(Backend):
    """A GGUF model behind a continuous-batching decode loop; thread-safe.

    `context_length` is the window of each sequence; the KV cache holds `parallel` of them.
    `stream_ids` works like every backend's (and may be called from many threads at once);
    `submit` is the callback form a server uses.
    """

    name = "llamacpp"
    extras: ClassVar[frozenset[str]] = frozenset({"grammar", "logprobs", "penalties"})
    batches: ClassVar[bool] = True
    drafts: ClassVar[bool] = True  # speculative decoding with `draft` (kecil/infer/llamacpp_solo.py)

    @staticmethod
    def unsupported_reason(ref: ModelRef) -> str | None:
        if ref.format != "gguf":
            return "continuous batching runs GGUF files through llama.cpp; convert the model with `kecil quantize`"
        return None

    @classmethod
    def open(cls, ref: ModelRef, info: ModelInfo, *, context_length: int, threads: int, parallel: int = 4,
             adapter: Path | None = None, draft: str | None = None) -> BatchedLlamaCppBackend:
        return cls(ref, info, context_length=context_length, threads=threads, parallel=parallel, adapter=adapter, draft=draft)

    def __init__(
        self,
        ref: ModelRef,
        info: ModelInfo,
        *,
        context_length: int,
        threads: int,
        parallel: int = 4,
        batch_size: int = 512,
        adapter: Path | None = None,  # a GGUF LoRA file (`kecil tune` writes one as adapter.gguf)
        draft: str | None = None,  # a draft model or "prompt-lookup": speculation while one request runs
    ):
        if parallel < 1:
            raise ConfigError(f"parallel must be at least 1, got {parallel}")
        super().__init__(ref, info, context_length)
        reason = self.unsupported_reason(ref)
        if reason:
            raise BackendError(reason)
        self.parallel = parallel
        self.batch_size = max(batch_size, parallel)
        self._native = BatchContext(ref, context_length=context_length, parallel=parallel,
                                    batch_size=self.batch_size, threads=threads, adapter=adapter)
        self._lib, self._model, self._ctx = self._native.lib, self._native.model, self._native.ctx
        self._vocab = self._model.vocab
        self._sampling = Sampling(self._lib, self._native.internals, self._model, self._ctx)
        self.n_vocab = self._sampling.n_vocab
        self._batch = self._lib.llama_batch_init(self.batch_size, 0, 1)
        self.solo = None if draft is None else self._open_solo(draft, threads)
        self._pending: deque[BatchSequence] = deque()
        self._running: list[BatchSequence] = []
        self._slots = Slots(parallel)
        # Prompt tokens submitted, and how many of them a slot's cache spared from evaluation.
        self.prompt_tokens = self.prompt_tokens_reused = self.prompt_streams_copied = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"kecil-batch-{ref.name}", daemon=True)
        self._thread.start()

    def _open_solo(self, draft: str, threads: int):
        from kecil.infer.llamacpp_solo import SoloSpeculation

        try:
            return SoloSpeculation.open(draft, self._vocab, self.ref.name, self.context_length, threads)
        except BaseException:
            self._lib.llama_batch_free(self._batch)
            self._native.close()
            raise

    # --- the Backend interface -------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos, True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._model.detokenize(list(ids)).decode("utf-8", errors="replace")

    def is_end(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def stream_ids(self, prompt_ids: list[int], config: GenerationConfig, extras: SamplingExtras | None = None) -> Iterator[Chunk]:
        return drain(self, prompt_ids, config, extras)

    # --- the Engine interface ----------------------------------------------------------------
    @property
    def load(self) -> tuple[int, int]:
        """(running sequences, queued sequences); cancelled ones no longer count, though the
        engine frees their slots only at its next step."""
        with self._cond:
            return (sum(not s.handle.cancelled for s in self._running),
                    sum(not s.handle.cancelled for s in self._pending))

    def submit(
        self,
        prompt_ids: list[int],
        config: GenerationConfig,
        emit: Callable[[Chunk], None],
        extras: SamplingExtras | None = None,
    ) -> GenerationHandle:
        """Queue a generation; `emit` is called from the engine thread with each Chunk, the last
        one final. Raises PromptTooLongError at once for a prompt that cannot fit."""
        if not prompt_ids:
            raise ConfigError("the prompt is empty: there is nothing to continue")
        config = self.fit_to_context(prompt_ids, config)
        extras = extras or SamplingExtras()
        sequence = BatchSequence(list(prompt_ids), config, extras, emit, GenerationHandle(self._wake))
        if extras.grammar:  # compiled on the caller's thread (it reads only the vocabulary), so a
            # grammar llama.cpp refuses is the caller's error at once, not a failed generation later
            sequence.grammar = self._sampling.grammar(extras.grammar, extras.grammar_triggers)
        try:
            return self._queue(sequence)
        except BaseException:
            self._free_grammar(sequence)
            raise

    def score(self, ids: Sequence[int], *, start: int = 1) -> list[float]:
        """Log-probabilities of ids[start:], computed in the shared batch next to running generations."""
        ids = [int(t) for t in ids]
        if not 1 <= start <= len(ids):
            raise ConfigError(f"start must be in [1, {len(ids)}] (the first token has nothing before it), got {start}")
        self.fit_to_context(ids[:-1], GenerationConfig(max_tokens=1))  # refuses what cannot fit
        if start == len(ids):
            return []
        done: Future = Future()

        def emit(chunk: Chunk) -> None:  # only a failure reaches it: scores go to `done` directly
            if chunk.error is not None and not done.done():
                done.set_exception(BackendError(chunk.error))

        sequence = BatchSequence(ids[:-1], GenerationConfig(max_tokens=1), SamplingExtras(), emit,
                             GenerationHandle(self._wake), scored=done, score_ids=ids, score_from=start)
        self._queue(sequence)
        try:
            return done.result()
        finally:
            sequence.handle.cancel()

    def _queue(self, sequence: BatchSequence) -> GenerationHandle:
        with self._cond:
            if self._stopping:
                raise BackendError(f"{self.ref.name} has been unloaded; send the request again")
            self._pending.append(sequence)
            self._cond.notify()
        return sequence.handle

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # --- the decode loop -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._running and not self._pending:
                    self._cond.wait()
                if self._stopping:
                    break
                self._admit()
            if self._running:
                try:
                    self._step()
                except Exception as exc:  # never leave a client waiting on a dead thread
                    for sequence in list(self._running):
                        self._fail(sequence, exc)
        for sequence in [*self._running, *self._pending]:
            self._fail(sequence, BackendError(f"{self.ref.name} was unloaded while this request ran"))

    def _admit(self) -> None:
        while self._pending and self._slots.free:
            sequence = self._pending.popleft()
            if sequence.handle.cancelled:
                self._free_grammar(sequence)
                sequence.handle.done.set()
                continue
            sequence.slot, source = self._slots.take(sequence.prompt_ids, busy=bool(self._running))
            self._reuse_prefix(sequence, source)
            sequence.started = perf_counter()
            if sequence.scored is None:
                try:
                    sequence.sampler = self._sampling.chain(sequence.config, sequence.extras)
                except BackendError as exc:
                    if sequence.sampler is not None:
                        sequence.sampler.close()
                    self._slots.free.append(sequence.slot)
                    self._fail(sequence, exc)
                    continue
                sequence.text = TokenText(sequence.config, self.detokenize, self.is_end)
            self._running.append(sequence)

    def _reuse_prefix(self, sequence: BatchSequence, source: int | None) -> None:
        """Start `sequence` from the prompt prefix its slot (or `source`, copied in) holds."""
        prompt = sequence.prompt_ids
        # The last prompt token is always evaluated (its logits are needed); a scoring sequence
        # also re-evaluates every position whose log-probability it reports.
        limit = len(prompt) - 1 if sequence.scored is None else min(len(prompt) - 1, sequence.score_from - 1)
        keep = self._slots.reuse(self._lib, self._ctx.memory, sequence.slot, source, prompt, limit)
        sequence.fed = sequence.n_past = keep
        self.prompt_tokens += len(prompt)
        self.prompt_tokens_reused += keep
        self.prompt_streams_copied += source is not None

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        batch = self._batch
        i = batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        return i

    def _step(self) -> None:
        for sequence in list(self._running):
            if sequence.handle.cancelled:
                self._release(sequence)
        if not self._running:
            return
        if self.solo is not None and len(self._running) == 1 and not self._pending and self.solo.suits(self._running[0]):
            self.solo.step(self, self._running[0])
            return
        self._batch.n_tokens = 0
        # Tokens go in slot order: with a KV stream per sequence, llama.cpp puts sequences in one
        # micro-batch only while their ids run consecutively (llama_batch_allocr::split_equal),
        # and every break costs a whole extra pass through the model. Out of order, 16 sequences
        # took 16 passes per step; slots are handed out lowest first where nothing is gained by
        # another (_choose_slot).
        self._running.sort(key=lambda s: s.slot)
        decoding = sum(s.next_token is not None for s in self._running)
        room = self.batch_size - decoding  # every decoding sequence gets its token this step
        for sequence in self._running:
            sequence.batch_index = -1
            sequence.score_rows = []
            if sequence.next_token is not None:
                sequence.batch_index = self._add(sequence.next_token, sequence.n_past, sequence.slot, True)
                sequence.n_past += 1
                sequence.next_token = None
                continue
            take = min(len(sequence.prompt_ids) - sequence.fed, room)
            if take > 0:
                self._feed_prompt(sequence, take)
                room -= take
        if self._batch.n_tokens == 0:
            return
        status = self._lib.llama_decode(self._ctx.ctx, self._batch)
        if status != 0:
            raise BackendError(f"llama.cpp failed to decode a batch (status {status})")
        now = perf_counter()
        for sequence in list(self._running):
            if sequence.scored is not None:
                self._collect_scores(sequence)
            elif sequence.batch_index >= 0:
                self._sample(sequence, now)

    def _feed_prompt(self, sequence: BatchSequence, take: int) -> None:
        """Put the next `take` prompt tokens of `sequence` in the batch, asking for the logits of
        the last one (a generation samples from it) or of each scored position."""
        last = len(sequence.prompt_ids) - 1
        for j in range(sequence.fed, sequence.fed + take):
            if sequence.scored is not None:
                wanted = j + 1 >= sequence.score_from  # row j predicts the token at j + 1
                index = self._add(sequence.prompt_ids[j], sequence.n_past, sequence.slot, wanted)
                if wanted:
                    sequence.score_rows.append((index, j))
            else:
                index = self._add(sequence.prompt_ids[j], sequence.n_past, sequence.slot, j == last)
                if j == last:
                    sequence.batch_index = index
            sequence.n_past += 1
        sequence.fed += take
        self._slots.held[sequence.slot] = sequence.prompt_ids[:sequence.fed]  # a later request may copy it

    def _collect_scores(self, sequence: BatchSequence) -> None:
        for row, j in sequence.score_rows:
            sequence.scores.append(self._sampling.logprob(row, sequence.score_ids[j + 1]).logprob)
        if sequence.fed == len(sequence.prompt_ids):
            self._release(sequence)
            if not sequence.scored.done():
                sequence.scored.set_result(sequence.scores)

    def _sample(self, sequence: BatchSequence, now: float) -> None:
        token = self._sampling.sample(sequence.sampler, sequence.grammar, sequence.batch_index)
        if sequence.extras.logprobs:
            sequence.pending_logprobs.append(self._sampling.logprob(sequence.batch_index, token, sequence.extras.top_logprobs))
        self._take(sequence, token, now)

    def _take(self, sequence: BatchSequence, token: int, now: float) -> None:
        """Emit `token`, the next of `sequence`'s answer; finish it or make the token its next input."""
        sequence.generated.append(token)
        sequence.first = sequence.first or now
        sequence.last = now
        text = sequence.text.push(token)
        if text:  # tokens held back for a possible stop sequence keep their logprobs until released
            sequence.emit(Chunk(text, logprobs=tuple(sequence.pending_logprobs)))
            sequence.pending_logprobs = []
        if sequence.text.finish_reason is not None:
            self._finish(sequence)
        else:
            sequence.next_token = token

    def _finish(self, sequence: BatchSequence) -> None:
        tail = sequence.text.flush()
        end = sequence.last or perf_counter()
        first = sequence.first or end
        timings = Timings(
            prompt_tokens=len(sequence.prompt_ids),
            prompt_seconds=first - sequence.started,
            decode_tokens=max(sequence.text.received - 1, 0),
            decode_seconds=end - first,
        )
        usage = Usage(len(sequence.prompt_ids), sequence.text.produced)
        final = Chunk(tail, finish_reason=sequence.text.finish_reason, usage=usage, timings=timings, logprobs=tuple(sequence.pending_logprobs))
        self._release(sequence)
        sequence.emit(final)

    def _free_grammar(self, sequence: BatchSequence) -> None:
        if sequence.grammar is not None:
            self._sampling.free_grammar(sequence.grammar)
            sequence.grammar = None

    def _fail(self, sequence: BatchSequence, error: Exception) -> None:
        self._free_grammar(sequence)  # a sequence that never ran holds one too
        if sequence in self._running:
            self._release(sequence)
            # After a failed decode the slot's cells are not to be trusted: start it afresh.
            self._lib.llama_memory_seq_rm(self._ctx.memory, sequence.slot, -1, -1)
            self._slots.held[sequence.slot] = []
        message = error if isinstance(error, BackendError) else BackendError(f"generation failed: {error}")
        sequence.emit(Chunk("", finish_reason="error", error=str(message)))
        sequence.handle.done.set()

    def _release(self, sequence: BatchSequence) -> None:
        """Free the slot: drop its KV cells and sampler. Called only from the engine thread."""
        self._running.remove(sequence)
        kept = min(sequence.fed, len(sequence.prompt_ids))  # the prompt stays cached, the answer goes
        self._lib.llama_memory_seq_rm(self._ctx.memory, sequence.slot, kept, -1)
        self._slots.held[sequence.slot] = sequence.prompt_ids[:kept]
        if sequence.sampler is not None:
            sequence.sampler.close()
            sequence.sampler = None
        self._free_grammar(sequence)
        with self._cond:
            self._slots.free.append(sequence.slot)
        sequence.handle.done.set()

    # --- shutting down ---------------------------------------------------------------------
    def close(self) -> None:
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        if self.solo is not None:
            self.solo.close()
        self._lib.llama_batch_free(self._batch)
        self._native.close()
