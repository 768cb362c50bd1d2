"""Any Backend behind a queue: the engine for models that run on torch, one request at a time.

torch has no batched KV cache here, so requests take turns on one worker thread; the queue gives
them the same `submit` / `score` contract as the batching llama.cpp engine (kecil/infer/engine.py).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import ClassVar

from kecil.errors import BackendError, ConfigError, UnsupportedError
from kecil.infer.backend import Backend
from kecil.infer.engine import GenerationHandle, SamplingExtras, drain, log_softmax_rows
from kecil.infer.generation import Chunk, GenerationConfig
from kecil.models.info import ModelInfo
from kecil.models.reference import ModelRef


class SerialEngine(Backend):
    """A Backend shared by many callers: generations, logits and scoring run one at a time, in
    order, on one worker thread. It is itself a Backend, so what takes a Backend (kecil.rag's
    answers, say) can run on it while it serves."""

    extras: ClassVar[frozenset[str]] = frozenset()  # no grammar, logprobs or penalties on torch
    batches: ClassVar[bool] = False
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")  # the torch backend's

    @classmethod
    def open(cls, ref: ModelRef, info: ModelInfo, *, context_length: int, threads: int, parallel: int = 1,
             adapter: Path | None = None, device: str = "auto") -> SerialEngine:
        from kecil.infer.load import backend_class

        lora = {} if adapter is None else {"adapter": adapter}
        return cls(backend_class("torch")(ref, info, context_length=context_length, threads=threads, device=device, **lora))

    def __init__(self, backend: Backend):
        super().__init__(backend.ref, backend.info, backend.context_length)
        self.backend = backend
        self.name = backend.name
        self.parallel = 1
        self._jobs: queue.Queue = queue.Queue()
        self._waiting = 0
        self._busy = False
        self._thread = threading.Thread(target=self._work, name=f"kecil-serial-{backend.ref.name}", daemon=True)
        self._thread.start()

    # What the backend already does for one caller needs no queue: it is pure (tokenizer, template).
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self.backend.tokenize(text, add_bos=add_bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.backend.detokenize(ids)

    def stream_ids(self, prompt_ids: list[int], config: GenerationConfig, extras: SamplingExtras | None = None):
        return drain(self, prompt_ids, config, extras)

    def logits(self, ids: Sequence[int], *, start: int = 0):
        return self._call(lambda: self.backend.logits(ids, start=start).copy())

    @property
    def load(self) -> tuple[int, int]:
        return int(self._busy), self._waiting

    def submit(self, prompt_ids: list[int], config: GenerationConfig, emit: Callable[[Chunk], None],
               extras: SamplingExtras | None = None) -> GenerationHandle:
        unsupported = [name for name in (extras.asks_for() if extras else []) if name not in self.extras]
        if unsupported:
            raise UnsupportedError(
                f"{self.ref.name} runs on the {self.name} engine, which serves no {' or '.join(unsupported)}; "
                "serve a GGUF file for those (`kecil quantize` makes one)")
        if not prompt_ids:
            raise ConfigError("the prompt is empty: there is nothing to continue")
        config = self.backend.fit_to_context(prompt_ids, config)
        handle = GenerationHandle(lambda: None)  # the worker checks `cancelled` before each token
        self._enqueue(("generate", list(prompt_ids), config, emit, handle))
        return handle

    def score(self, ids: Sequence[int], *, start: int = 1) -> list[float]:
        ids = [int(t) for t in ids]
        if not 1 <= start <= len(ids):
            raise ConfigError(f"start must be in [1, {len(ids)}] (the first token has nothing before it), got {start}")
        if start == len(ids):
            return []
        rows = self.logits(ids[:-1], start=start - 1)  # row i predicts ids[start + i]
        return log_softmax_rows(rows, ids[start:])

    def _call(self, fn: Callable):
        """`fn()` on the worker thread, between generations; its result or exception comes back here."""
        done: Future = Future()
        self._enqueue(("call", fn, done))
        return done.result()

    def _enqueue(self, job: tuple) -> None:
        if not self._thread.is_alive():
            raise BackendError(f"{self.ref.name} has been unloaded; send the request again")
        self._waiting += 1
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._waiting -= 1
            self._busy = True
            try:
                kind, *args = job
                if kind == "call":
                    fn, done = args
                    try:
                        done.set_result(fn())
                    except Exception as exc:  # the caller gets the error, the worker lives on
                        done.set_exception(exc)
                else:
                    self._generate(*args)
            finally:
                self._busy = False

    def _generate(self, prompt_ids: list[int], config: GenerationConfig, emit, handle: GenerationHandle) -> None:
        if handle.cancelled:
            handle.done.set()
            return
        stream = self.backend.stream_ids(prompt_ids, config)
        try:
            for chunk in stream:
                if handle.cancelled:
                    break
                emit(chunk)
        except Exception as exc:  # reported to the client, never a dead worker
            emit(Chunk("", finish_reason="error", error=str(exc)))
        finally:
            stream.close()
            handle.done.set()

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self.backend.close()

