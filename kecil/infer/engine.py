"""The contract a server (and, next, the router) drives a loaded model through: submit a generation
with a callback, cancel it, tokenize, and score tokens — the same calls whichever engine runs it.

A `Backend` (kecil/infer/backend.py) is the single-caller interface `kecil generate` uses; an
`Engine` is what many concurrent callers share. Two engines implement it: the continuous-batching
llama.cpp engine (kecil/infer/llamacpp_batched.py) for GGUF files, and `SerialEngine`
(kecil/infer/serial_engine.py), any Backend behind a queue, for what runs on torch. Choosing one
is a lookup in ENGINES, as choosing a backend is in kecil/infer/load.py.
"""

from __future__ import annotations

import importlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from kecil.errors import ConfigError
from kecil.infer.generation import Chunk, GenerationConfig
from kecil.models.info import ModelInfo
from kecil.models.reference import ModelRef

# backend name (as in kecil.infer.load.BACKENDS) -> "module:Class" of the engine that serves it;
# imported only when chosen, so `kecil --help` never imports torch or llama.cpp.
ENGINES: dict[str, str] = {
    "llamacpp": "kecil.infer.llamacpp_batched:BatchedLlamaCppBackend",
    "torch": "kecil.infer.serial_engine:SerialEngine",
}


@dataclass(frozen=True)
class SamplingExtras:
    """What an OpenAI-style request may ask for beyond GenerationConfig."""

    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    grammar: str | None = None  # GBNF text; the root rule is `root`
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives reported per token (0-20)
    # Regexes (std::regex): given, the grammar holds only from where one first matches the answer
    # so far, on (llama.cpp's lazy grammar; see kecil/infer/tool_calls.py).
    grammar_triggers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ConfigError(f"{name} must be between -2 and 2, got {value}")
        if not 0 <= self.top_logprobs <= 20:
            raise ConfigError(f"top_logprobs must be between 0 and 20, got {self.top_logprobs}")

    def asks_for(self) -> list[str]:
        """The names of the extras this request uses (to say which an engine cannot serve)."""
        wanted = {"grammar": self.grammar is not None, "logprobs": self.logprobs,
                  "penalties": bool(self.frequency_penalty or self.presence_penalty)}
        return [name for name, used in wanted.items() if used]


class GenerationHandle:
    """A submitted generation. `cancel()` stops it at the engine's next step and frees its place;
    `done` is set once the engine has let go of it (finished, failed or cancelled)."""

    def __init__(self, wake: Callable[[], None]):
        self._wake = wake  # tells the engine's thread to look at its work again
        self.cancelled = False
        self.done = threading.Event()

    def cancel(self) -> None:
        if not self.done.is_set():
            self.cancelled = True
            self._wake()


@runtime_checkable
class Engine(Protocol):
    """A model shared by concurrent callers. Every method is safe to call from any thread."""

    name: ClassVar[str]  # the backend it runs on: "llamacpp" or "torch"
    extras: ClassVar[frozenset[str]]  # which SamplingExtras.asks_for() names it serves
    ref: ModelRef
    context_length: int  # tokens per request, prompt included
    parallel: int  # generations that run at once

    @property
    def load(self) -> tuple[int, int]:
        """(generations running, generations waiting)."""

    def submit(self, prompt_ids: list[int], config: GenerationConfig, emit: Callable[[Chunk], None],
               extras: SamplingExtras | None = None) -> GenerationHandle:
        """Queue a generation; `emit` is called from the engine's thread with each Chunk, the last
        one final (finish_reason "error" when the engine failed). Raises PromptTooLongError at once
        for a prompt that cannot fit, UnsupportedError for extras the engine cannot serve."""

    def score(self, ids: Sequence[int], *, start: int = 1) -> list[float]:
        """The natural-log probability of each of ids[start:] given the ids before it: how likely
        the model finds a text (a router's confidence in an answer is this, over its tokens)."""

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def chat_prompt_ids(self, messages, tools=None) -> list[int]: ...

    def close(self) -> None: ...


def engine_name(ref: ModelRef, backend: str | None = None) -> str:
    """The engine that serves `ref`: on `backend` if given, else on its format's usual backend."""
    from kecil.infer.load import DEFAULT_BACKEND, choose_backend

    return choose_backend(ref, backend or DEFAULT_BACKEND[ref.format]).name


def batches(ref: ModelRef, backend: str | None = None) -> bool:
    """Whether `ref`'s engine keeps a KV cache per parallel generation (what its memory scales with)."""
    return engine_class(engine_name(ref, backend)).batches


def engine_class(name: str) -> type:
    if name not in ENGINES:
        raise ConfigError(f"no engine for the {name!r} backend; engines: {', '.join(ENGINES)}")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def open_engine(
    ref: ModelRef,
    info: ModelInfo,
    *,
    backend: str | None = None,
    context_length: int,
    threads: int,
    parallel: int = 4,
    adapter: Path | None = None,
    device: str = "auto",
    draft: str | None = None,
) -> Engine:
    """Load `ref` on the engine for `backend` (None = by format) with `parallel` generations at
    once where the engine batches them; `adapter` is the file or folder that backend reads;
    `device` goes to an engine that can run on a GPU (load.device_options); `draft` (a draft model
    or "prompt-lookup") speeds up a request running alone (llama.cpp engine only)."""
    from kecil.infer.load import device_options

    name = engine_name(ref, backend)
    cls = engine_class(name)
    extra = {} if draft is None else {"draft": draft}
    if draft is not None and not getattr(cls, "drafts", False):
        raise ConfigError(f"--draft runs on the llama.cpp engine; {ref.name} is served by the {name} engine "
                          "(drop --draft, or serve a GGUF file: `kecil quantize` makes one)")
    return cls.open(ref, info, context_length=context_length, threads=threads, parallel=parallel, adapter=adapter,
                    **device_options(cls, device), **extra)


def drain(engine: Engine, prompt_ids: list[int], config: GenerationConfig,
          extras: SamplingExtras | None = None) -> Iterator[Chunk]:
    """A generation on `engine` as a Backend-style iterator of Chunks: what `stream_ids` of an
    engine is, so one caller can use a shared engine as it uses any backend."""
    chunks: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
    handle = engine.submit(prompt_ids, config, chunks.put, extras)

    def pieces() -> Iterator[Chunk]:
        try:
            while True:
                chunk = chunks.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            handle.cancel()  # a consumer that stops early frees the engine's place

    return pieces()


def log_softmax_rows(rows, targets: Sequence[int]) -> list[float]:
    """The natural-log probability of targets[i] under logits row i."""
    import numpy as np

    shifted = rows - rows.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return [float(shifted[i, t] - log_norm[i]) for i, t in enumerate(targets)]
