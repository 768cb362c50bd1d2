"""Continuous batching on llama.cpp: concurrent generations share every decode step of one model.

One thread owns a llama.cpp context with a KV-cache stream per sequence (`parallel` of them) and
runs the decode loop. Each step puts one token of every running sequence, plus prompt tokens of
newly admitted ones (chunked, so a long prompt never stalls the others for long), into a single
`llama_batch`; a request that arrives while others are generating joins at the next step instead
of waiting for them to finish. This is the scheme of llama.cpp's own server (one slot per request),
driven from Python through llama-cpp-python's C bindings, whose calls release the GIL.

Each sequence samples with its own llama.cpp sampler chain, built exactly as the single-sequence
llamacpp backend builds it, so a seeded request gives the same text alone, in a batch, or through
`kecil generate`.
"""

from __future__ import annotations

import ctypes
import queue
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from kecil.errors import BackendError, ConfigError
from kecil.infer.backend import Backend
from kecil.infer.generation import Chunk, GenerationConfig, Timings, TokenLogprob, Usage
from kecil.infer.llamacpp_runtime import import_llama_cpp
from kecil.infer.streaming import TokenText
from kecil.models.info import ModelInfo
from kecil.models.reference import ModelRef

PENALTY_LAST_N = 64  # llama-cpp-python's default window for repetition penalties, kept for parity


def _token_data_dtype():
    import numpy as np

    return np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data

@dataclass(frozen=True)
class SamplingExtras:
    """What an OpenAI-style request may ask for beyond GenerationConfig."""

    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    grammar: str | None = None  # GBNF text; the root rule is `root`
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives reported per token (0-20)

    def __post_init__(self) -> None:
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ConfigError(f"{name} must be between -2 and 2, got {value}")
        if not 0 <= self.top_logprobs <= 20:
            raise ConfigError(f"top_logprobs must be between 0 and 20, got {self.top_logprobs}")


class GenerationHandle:
    """A submitted generation. `cancel()` stops it at the next decode step and frees its slot."""

    def __init__(self, engine: BatchedLlamaCppBackend):
        self._engine = engine
        self.cancelled = False
        self.done = threading.Event()

    def cancel(self) -> None:
        if not self.done.is_set():
            self.cancelled = True
            self._engine._wake()


@dataclass(eq=False)
class _Sequence:
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
    grammar: int | None = None  # a llama_sampler pointer, kept out of the chain (see _sample_constrained)
    text: TokenText | None = None
    started: float = 0.0  # when prompt processing began
    first: float = 0.0  # when the first token was sampled
    last: float = 0.0
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)


class BatchedLlamaCppBackend(Backend):
    """A GGUF model behind a continuous-batching decode loop; thread-safe.

    `context_length` is the window of each sequence; the KV cache holds `parallel` of them.
    `stream_ids` works like every backend's (and may be called from many threads at once);
    `submit` is the callback form a server uses.
    """

    name = "llamacpp"

    @staticmethod
    def unsupported_reason(ref: ModelRef) -> str | None:
        if ref.format != "gguf":
            return "continuous batching runs GGUF files through llama.cpp; convert the model with `kecil quantize`"
        return None

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
    ):
        if parallel < 1:
            raise ConfigError(f"parallel must be at least 1, got {parallel}")
        super().__init__(ref, info, context_length)
        reason = self.unsupported_reason(ref)
        if reason:
            raise BackendError(reason)
        self.parallel = parallel
        self.batch_size = max(batch_size, parallel)
        llama_cpp = import_llama_cpp()
        from llama_cpp import _internals

        self._lib, self._internals = llama_cpp, _internals
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        try:
            self._model = _internals.LlamaModel(path_model=str(ref.path), params=params, verbose=False)
            cparams = llama_cpp.llama_context_default_params()
            # One KV stream per sequence, each `context_length` long: a request can always use
            # the whole window, and no request can crowd another out of the cache.
            cparams.n_ctx = context_length * parallel
            cparams.n_seq_max = parallel
            cparams.kv_unified = False
            cparams.n_batch = self.batch_size
            cparams.n_ubatch = min(self.batch_size, 512)
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # as in llamacpp.py
            cparams.no_perf = True
            self._ctx = _internals.LlamaContext(model=self._model, params=cparams, verbose=False)
            self._lora = None
            if adapter is not None:
                self._apply_lora(Path(adapter))
        except (ValueError, RuntimeError) as exc:
            self._close_native()
            raise BackendError(
                f"llama.cpp could not load {ref.path} for serving ({exc}); check it with `kecil info {ref.spec}`"
                " or lower --parallel / --context"
            ) from None
        self._vocab = self._model.vocab
        self.n_vocab = self._model.n_vocab()
        self._batch = llama_cpp.llama_batch_init(self.batch_size, 0, 1)
        self._pending: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._free_slots = list(range(parallel))
        # The prompt tokens each slot's KV stream still holds from its last request: a new request
        # in that slot evaluates only what differs (requests to one server mostly share a chat
        # template and system prompt), as llama.cpp's server does.
        self._cached: list[list[int]] = [[] for _ in range(parallel)]
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"kecil-batch-{ref.name}", daemon=True)
        self._thread.start()

    # --- the Backend interface -------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos, True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._model.detokenize(list(ids)).decode("utf-8", errors="replace")

    def is_end(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def stream_ids(self, prompt_ids: list[int], config: GenerationConfig, extras: SamplingExtras | None = None) -> Iterator[Chunk]:
        chunks: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        handle = self.submit(prompt_ids, config, chunks.put, extras)

        def drain() -> Iterator[Chunk]:
            try:
                while True:
                    chunk = chunks.get()
                    yield chunk
                    if chunk.finish_reason is not None:
                        return
            finally:
                handle.cancel()  # a consumer that stops early frees the slot

        return drain()

    # --- submitting work -------------------------------------------------------------------
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
        handle = GenerationHandle(self)
        sequence = _Sequence(list(prompt_ids), config, extras or SamplingExtras(), emit, handle)
        with self._cond:
            if self._stopping:
                raise BackendError(f"{self.ref.name} has been unloaded; send the request again")
            self._pending.append(sequence)
            self._cond.notify()
        return handle

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
        while self._pending and self._free_slots:
            sequence = self._pending.popleft()
            if sequence.handle.cancelled:
                sequence.handle.done.set()
                continue
            sequence.slot = min(self._free_slots)  # lowest first: see _step
            self._free_slots.remove(sequence.slot)
            self._reuse_prefix(sequence)
            sequence.started = perf_counter()
            try:
                sequence.sampler = self._make_sampler(sequence.config, sequence.extras)
                if sequence.extras.grammar:
                    sequence.grammar = self._make_grammar(sequence.extras.grammar)
            except BackendError as exc:
                if sequence.sampler is not None:
                    sequence.sampler.close()
                self._free_slots.append(sequence.slot)
                self._fail(sequence, exc)
                continue
            sequence.text = TokenText(sequence.config, self.detokenize, self.is_end)
            self._running.append(sequence)

    def _reuse_prefix(self, sequence: _Sequence) -> None:
        """Keep the KV cells of the prompt prefix this slot already holds; drop the rest."""
        cached, prompt = self._cached[sequence.slot], sequence.prompt_ids
        keep = 0
        for a, b in zip(cached, prompt[:-1]):  # the last prompt token is always evaluated: its logits are needed
            if a != b:
                break
            keep += 1
        self._lib.llama_memory_seq_rm(self._ctx.memory, sequence.slot, keep, -1)
        self._cached[sequence.slot] = prompt[:keep]
        sequence.fed = sequence.n_past = keep

    def _make_grammar(self, gbnf: str):
        grammar = self._lib.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
        if not grammar:
            raise BackendError("llama.cpp rejected the response grammar (see the kecil.llamacpp log for why)")
        return grammar

    def _make_sampler(self, config: GenerationConfig, extras: SamplingExtras):
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
        self._batch.n_tokens = 0
        # Tokens go in slot order, and slots are handed out lowest first: with a KV stream per
        # sequence, llama.cpp puts sequences in one micro-batch only while their ids run
        # consecutively (llama_batch_allocr::split_equal), and every break costs a whole extra
        # pass through the model. Out of order, 16 sequences took 16 passes per step.
        self._running.sort(key=lambda s: s.slot)
        decoding = sum(s.next_token is not None for s in self._running)
        room = self.batch_size - decoding  # every decoding sequence gets its token this step
        for sequence in self._running:
            sequence.batch_index = -1
            if sequence.next_token is not None:
                sequence.batch_index = self._add(sequence.next_token, sequence.n_past, sequence.slot, True)
                sequence.n_past += 1
                sequence.next_token = None
                continue
            left = len(sequence.prompt_ids) - sequence.fed
            take = min(left, room)
            if take <= 0:
                continue
            for j in range(sequence.fed, sequence.fed + take):
                last = j == len(sequence.prompt_ids) - 1
                index = self._add(sequence.prompt_ids[j], sequence.n_past, sequence.slot, last)
                sequence.n_past += 1
                if last:
                    sequence.batch_index = index
            sequence.fed += take
            room -= take
        if self._batch.n_tokens == 0:
            return
        status = self._lib.llama_decode(self._ctx.ctx, self._batch)
        if status != 0:
            raise BackendError(f"llama.cpp failed to decode a batch (status {status})")
        now = perf_counter()
        for sequence in list(self._running):
            if sequence.batch_index >= 0:
                self._sample(sequence, now)

    def _sample(self, sequence: _Sequence, now: float) -> None:
        if sequence.grammar is None:  # sample and accept in one C call: the fast path
            token = self._lib.llama_sampler_sample(sequence.sampler.sampler, self._ctx.ctx, sequence.batch_index)
        else:
            token = self._sample_constrained(sequence)
        sequence.first = sequence.first or now
        sequence.last = now
        if sequence.extras.logprobs:
            sequence.pending_logprobs.append(self._logprob(sequence, token))
        text = sequence.text.push(token)
        if text:  # tokens held back for a possible stop sequence keep their logprobs until released
            sequence.emit(Chunk(text, logprobs=tuple(sequence.pending_logprobs)))
            sequence.pending_logprobs = []
        if sequence.text.finish_reason is not None:
            self._finish(sequence)
        else:
            sequence.next_token = token

    def _logits(self, sequence: _Sequence):
        import numpy as np

        row = self._lib.llama_get_logits_ith(self._ctx.ctx, sequence.batch_index)
        return np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))

    def _candidates(self, ids, logits):
        """A llama_token_data_array over numpy memory (kept alive by the returned array)."""
        import numpy as np

        data = np.empty(len(ids), dtype=_token_data_dtype())
        data["id"], data["logit"], data["p"] = ids, logits, 0.0
        lib = self._lib
        array = lib.llama_token_data_array(data.ctypes.data_as(lib.llama_token_data_p), len(ids), -1, False)
        return data, array

    def _sample_constrained(self, sequence: _Sequence) -> int:
        """Grammar-constrained sampling the way llama.cpp's own server does it: sample freely, keep
        the token if the grammar allows it, and only otherwise mask the whole vocabulary and sample
        again. Masking 49k candidates costs far more than checking one, and most tokens pass."""
        import numpy as np

        lib, chain = self._lib, sequence.sampler.sampler
        logits = self._logits(sequence)
        ids = np.arange(self.n_vocab, dtype=np.int32)
        keep, array = self._candidates(ids, logits)
        lib.llama_sampler_apply(chain, ctypes.byref(array))
        token = array.data[array.selected].id
        one, single = self._candidates(np.array([token], dtype=np.int32), np.array([1.0], dtype=np.float32))
        lib.llama_sampler_apply(sequence.grammar, ctypes.byref(single))
        if not np.isfinite(one["logit"][0]):
            keep, array = self._candidates(ids, logits)
            lib.llama_sampler_apply(sequence.grammar, ctypes.byref(array))
            lib.llama_sampler_apply(chain, ctypes.byref(array))
            token = array.data[array.selected].id
        lib.llama_sampler_accept(sequence.grammar, token)
        lib.llama_sampler_accept(chain, token)
        return int(token)

    def _logprob(self, sequence: _Sequence, token: int) -> TokenLogprob:
        import numpy as np

        logits = self._logits(sequence)
        shifted = logits - logits.max()
        logsumexp = float(np.log(np.exp(shifted).sum()))
        top: tuple[tuple[str, float], ...] = ()
        if sequence.extras.top_logprobs:
            best = np.argpartition(-shifted, sequence.extras.top_logprobs)[: sequence.extras.top_logprobs]
            best = best[np.argsort(-shifted[best])]
            top = tuple((self._piece(int(t)), float(shifted[t]) - logsumexp) for t in best)
        return TokenLogprob(self._piece(token), float(shifted[token]) - logsumexp, top)

    def _piece(self, token: int) -> str:
        return self._model.token_to_piece(token, True).rstrip(b"\0").decode("utf-8", errors="replace")

    def _finish(self, sequence: _Sequence) -> None:
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

    def _fail(self, sequence: _Sequence, error: Exception) -> None:
        if sequence in self._running:
            self._release(sequence)
            # After a failed decode the slot's cells are not to be trusted: start it afresh.
            self._lib.llama_memory_seq_rm(self._ctx.memory, sequence.slot, -1, -1)
            self._cached[sequence.slot] = []
        message = error if isinstance(error, BackendError) else BackendError(f"generation failed: {error}")
        sequence.emit(Chunk("", finish_reason="error", error=str(message)))
        sequence.handle.done.set()

    def _release(self, sequence: _Sequence) -> None:
        """Free the slot: drop its KV cells and sampler. Called only from the engine thread."""
        self._running.remove(sequence)
        kept = min(sequence.fed, len(sequence.prompt_ids))  # the prompt stays cached, the answer goes
        self._lib.llama_memory_seq_rm(self._ctx.memory, sequence.slot, kept, -1)
        self._cached[sequence.slot] = sequence.prompt_ids[:kept]
        if sequence.sampler is not None:
            sequence.sampler.close()
            sequence.sampler = None
        if sequence.grammar is not None:
            self._lib.llama_sampler_free(sequence.grammar)
            sequence.grammar = None
        with self._cond:
            self._free_slots.append(sequence.slot)
        sequence.handle.done.set()

    # --- shutting down ---------------------------------------------------------------------
    def close(self) -> None:
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        self._lib.llama_batch_free(self._batch)
        self._close_native()

    def _apply_lora(self, adapter: Path) -> None:
        """Load the GGUF LoRA and set it on the context, as llama-cpp-python's Llama does for lora_path."""
        lib = self._lib
        self._lora = lib.llama_adapter_lora_init(self._model.model, str(adapter).encode("utf-8"))
        if not self._lora:
            self._lora = None
            raise ValueError(f"the LoRA file {adapter} does not fit this model")
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._lora)
        scales = (ctypes.c_float * 1)(1.0)
        if lib.llama_set_adapters_lora(self._ctx.ctx, adapters, 1, scales):
            raise ValueError(f"llama.cpp could not set the LoRA {adapter}")

    def _close_native(self) -> None:
        lora = getattr(self, "_lora", None)
        if lora is not None:
            self._lib.llama_adapter_lora_free(lora)  # before the model it belongs to
            self._lora = None
        for name in ("_ctx", "_model"):
            native = getattr(self, name, None)
            if native is not None:
                native.close()
                setattr(self, name, None)
