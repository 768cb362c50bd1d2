"""A llama.cpp model and context set up for continuous batching: one KV stream per sequence, the
flags llama.cpp's own tools use, and an optional GGUF LoRA — the native half of the batched engine
(kecil/infer/llamacpp_batched.py), kept apart so that file is only the scheduler."""

from __future__ import annotations

import ctypes
from pathlib import Path

from kecil.errors import BackendError
from kecil.infer.llamacpp_runtime import import_llama_cpp
from kecil.models.reference import ModelRef


class BatchContext:
    """The native objects of one served model; `close()` frees them in the order llama.cpp needs."""

    def __init__(self, ref: ModelRef, *, context_length: int, parallel: int, batch_size: int, threads: int,
                 adapter: Path | None = None):
        llama_cpp = import_llama_cpp()
        from llama_cpp import _internals

        self.lib, self.internals = llama_cpp, _internals
        self.model = self.ctx = self._lora = None
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        try:
            self.model = _internals.LlamaModel(path_model=str(ref.path), params=params, verbose=False)
            cparams = llama_cpp.llama_context_default_params()
            # One KV stream per sequence, each `context_length` long: a request can always use
            # the whole window, and no request can crowd another out of the cache.
            cparams.n_ctx = context_length * parallel
            cparams.n_seq_max = parallel
            cparams.kv_unified = False
            cparams.n_batch = batch_size
            cparams.n_ubatch = min(batch_size, 512)
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # as in llamacpp.py
            cparams.no_perf = True
            self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
            if adapter is not None:
                self._apply_lora(Path(adapter))
        except (ValueError, RuntimeError) as exc:
            self.close()
            raise BackendError(
                f"llama.cpp could not load {ref.path} for serving ({exc}); check it with `kecil info {ref.spec}`"
                " or lower --parallel / --context"
            ) from None

    def _apply_lora(self, adapter: Path) -> None:
        """Load the GGUF LoRA and set it on the context, as llama-cpp-python's Llama does for lora_path."""
        lib = self.lib
        self._lora = lib.llama_adapter_lora_init(self.model.model, str(adapter).encode("utf-8"))
        if not self._lora:
            self._lora = None
            raise ValueError(f"the LoRA file {adapter} does not fit this model")
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._lora)
        scales = (ctypes.c_float * 1)(1.0)
        if lib.llama_set_adapters_lora(self.ctx.ctx, adapters, 1, scales):
            raise ValueError(f"llama.cpp could not set the LoRA {adapter}")

    def close(self) -> None:
        if self._lora is not None:
            self.lib.llama_adapter_lora_free(self._lora)  # before the model it belongs to
            self._lora = None
        for name in ("ctx", "model"):
            native = getattr(self, name)
            if native is not None:
                native.close()
                setattr(self, name, None)
