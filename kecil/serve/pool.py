"""The models a server offers, each loaded on its first request and unloaded least-recently-used
when loading another would pass the memory budget.

Each model runs on the engine kecil.infer.engine picks for it (a GGUF file on the batching
llama.cpp engine, a Hugging Face folder on torch one request at a time), all driven through the
same Engine contract, so the HTTP layer does not care which.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING

from kecil.errors import BackendError, ConfigError, KecilError
from kecil.models.info import estimate_memory, format_bytes, inspect_model
from kecil.models.reference import ModelRef, resolve
from kecil.serve.config import ServeConfig
from kecil.serve.protocol import APIError

if TYPE_CHECKING:
    from kecil.infer.engine import Engine

log = logging.getLogger("kecil.serve")


class LockedEmbedder:
    """An embedder used from several threads, one call at a time (the model is not thread-safe)."""

    def __init__(self, embedder):
        self._embedder, self._lock = embedder, threading.Lock()
        self.name, self.dimension, self.max_tokens = embedder.name, embedder.dimension, embedder.max_tokens

    def embed(self, texts, **kw):
        with self._lock:
            return self._embedder.embed(texts, **kw)

    def count_tokens(self, texts):
        with self._lock:
            return self._embedder.count_tokens(texts)

    def close(self) -> None:
        with self._lock:
            self._embedder.close()


@dataclass
class LoadedModel:
    name: str
    engine: Engine
    memory_bytes: int
    last_used: float


class ModelPool:
    """Named models: resolved at start-up (a typo fails at once), loaded lazily, evicted LRU."""

    def __init__(self, config: ServeConfig):
        import psutil

        from kecil.models.builtins import DEFAULT_MODEL

        self.config = config
        self.refs: dict[str, ModelRef] = {}
        for spec in config.models or (DEFAULT_MODEL,):
            ref = resolve(spec)
            name = served_name(ref)
            if name in self.refs:
                raise ConfigError(f"two models would both be served as {name!r}: pass each model once")
            self.refs[name] = ref
        self.adapters: dict[str, tuple[str | None, Path]] = {}  # served id -> (backend it needs, the file or folder it reads)
        self._add_adapters(config)
        self.budget = config.max_memory or int(psutil.virtual_memory().total * 0.75)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._embedders: dict[str, LockedEmbedder] = {}
        self._embedder_lock = threading.Lock()

    def _add_adapters(self, config: ServeConfig) -> None:
        """Each adapter is served on the first model (or the default) as a model of its own,
        BASE+NAME, next to the plain base: clients choose by id, and `/v1/models` lists both."""
        from kecil.infer.load import adapter_backend, adapter_for_backend

        base = self.default
        for adapter, path in config.served_adapters():
            served, path = f"{base}+{adapter}", Path(path).expanduser()
            if served in self.refs:
                raise ConfigError(f"the adapter {adapter!r} would be served as {served!r}, a model already served: rename it (NAME=PATH)")
            backend = adapter_backend(self.refs[base], path)
            # Checked now, so a wrong path fails at start-up rather than on the first request.
            self.adapters[served] = (backend, adapter_for_backend(path, backend))
            self.refs[served] = self.refs[base]

    @property
    def default(self) -> str:
        return next(iter(self.refs))

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def memory_needed(self, name: str, ref: ModelRef) -> int:
        from kecil.infer.engine import batches, engine_name

        info = inspect_model(ref)
        context = self.context_for(info)
        backend = self._backend_for(name)
        slots = self.config.parallel if batches(ref, backend) else 1  # a KV cache per parallel sequence
        return estimate_memory(info, context * slots, engine_name(ref, backend)).total_bytes

    def context_for(self, info) -> int:
        from kecil.infer.load import DEFAULT_CONTEXT

        context = self.config.context_length or min(info.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        if info.context_length and context > info.context_length:
            raise ConfigError(f"{info.ref.name} was trained for a context of {info.context_length} tokens; --context {context} is beyond it")
        return context

    async def get(self, name: str):
        """The engine serving `name`, loading it (and unloading idle models) if needed."""
        ref = self.refs.get(name)
        if ref is None:
            served = ", ".join(self.refs)
            raise APIError(404, f"the model {name!r} is not served here; models: {served}", code="model_not_found", param="model")
        loaded = self._loaded.get(name)
        if loaded is None:
            lock = self._locks.setdefault(name, asyncio.Lock())
            async with lock:  # concurrent first requests load the model once
                loaded = self._loaded.get(name)
                if loaded is None:
                    loaded = await self._load(name, ref)
        loaded.last_used = monotonic()
        self._loaded.move_to_end(name)
        return loaded.engine

    async def _load(self, name: str, ref: ModelRef) -> LoadedModel:
        need = self.memory_needed(name, ref)
        if need > self.budget:
            raise APIError(503, f"{name} needs about {format_bytes(need)} but the server's memory budget is "
                           f"{format_bytes(self.budget)}: restart with a larger --max-memory, fewer --parallel slots or a smaller --context",
                           type="server_error", code="insufficient_memory")
        while sum(m.memory_bytes for m in self._loaded.values()) + need > self.budget:
            idle = [m for m in self._loaded.values() if m.engine.load == (0, 0)]
            if not idle:
                raise APIError(503, f"{name} does not fit next to the models busy answering requests "
                               f"(budget {format_bytes(self.budget)}); retry shortly", type="server_error",
                               code="insufficient_memory", headers={"Retry-After": "5"})
            victim = min(idle, key=lambda m: m.last_used)
            log.info("unloading %s to make room for %s", victim.name, name)
            del self._loaded[victim.name]
            await asyncio.to_thread(victim.engine.close)
        log.info("loading %s", name)
        engine = await asyncio.to_thread(self._open, name, ref)
        loaded = LoadedModel(name, engine, need, monotonic())
        self._loaded[name] = loaded
        return loaded

    def _open(self, name: str, ref: ModelRef):
        from kecil.infer.engine import open_engine
        from kecil.infer.hardware import physical_cores

        info = inspect_model(ref)
        adapter = self.adapters[name][1] if name in self.adapters else None
        draft = {"draft": self.config.draft} if self.config.draft is not None and name == self.default else {}
        return open_engine(ref, info, backend=self._backend_for(name), context_length=self.context_for(info),
                           threads=self.config.threads or physical_cores(), parallel=self.config.parallel, adapter=adapter,
                           device=self.config.device, **draft)

    def _backend_for(self, name: str) -> str | None:
        """The backend model `name`'s adapter needs (a PEFT folder without its GGUF twin puts even
        a GGUF model on torch, dequantized); None = the model's usual one."""
        return self.adapters[name][0] if name in self.adapters else None

    def serves_embedding(self, name: str) -> bool:
        """Whether `name` is the embedding model served at /v1/embeddings; names are matched
        ignoring case, so the model card's "all-MiniLM-L6-v2" is "all-minilm-l6-v2"."""
        return bool(self.config.embedding_model) and name.lower() == self.config.embedding_model.lower()

    def embedder(self, name: str):
        """The embedding model served at /v1/embeddings (loaded once; small, so never evicted)."""
        if not self.serves_embedding(name):
            served = self.config.embedding_model or "none (started with --no-embeddings)"
            raise APIError(404, f"the embedding model {name!r} is not served here; embedding models: {served}",
                           code="model_not_found", param="model")
        return self.any_embedder(self.config.embedding_model)

    def any_embedder(self, name: str):
        """Embedding model `name`, shared by /v1/embeddings and knowledge-base retrieval."""
        with self._embedder_lock:
            if name not in self._embedders:
                try:
                    from kecil.infer.embeddings import load_embedder
                except ImportError:
                    raise APIError(501, "this kecil has no embedding support installed; run `make setup`", type="server_error") from None
                try:
                    self._embedders[name] = LockedEmbedder(load_embedder(name))
                except KecilError as exc:
                    raise APIError(503, str(exc), type="server_error") from None
            return self._embedders[name]

    def close(self) -> None:
        for loaded in list(self._loaded.values()):
            try:
                loaded.engine.close()
            except BackendError:
                pass
        self._loaded.clear()
        for embedder in self._embedders.values():
            embedder.close()
        self._embedders.clear()


def served_name(ref: ModelRef) -> str:
    """The id clients use: a built-in's name, else the file or folder name without .gguf."""
    if ref.builtin:
        return ref.name
    return ref.path.name[:-5] if ref.path.name.endswith(".gguf") else ref.path.name
