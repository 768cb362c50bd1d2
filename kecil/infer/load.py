"""Opening a model for inference: resolve the MODEL argument, pick a backend, load it.

Backends are a lookup table, not an if-chain: a new engine is one more row in BACKENDS.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from kecil.errors import BackendError, ConfigError
from kecil.infer.backend import Backend
from kecil.infer.hardware import check_device_name, device_field, physical_cores
from kecil.models.info import inspect_model
from kecil.models.reference import ModelRef, resolve

# name -> "module:Class"; imported only when chosen, so `kecil --help` never imports torch.
BACKENDS: dict[str, str] = {
    "llamacpp": "kecil.infer.llamacpp:LlamaCppBackend",
    "torch": "kecil.infer.torch_backend:TorchBackend",
}
DEFAULT_BACKEND = {"gguf": "llamacpp", "hf": "torch"}
ADAPTER_GGUF = "adapter.gguf"  # the GGUF LoRA that `kecil tune` writes next to the PEFT adapter
DEFAULT_CONTEXT = 4096  # enough for chat and RAG prompts; the KV cache stays small on a laptop


@dataclass(frozen=True)
class LoadOptions:
    """How to open a model. Every field has a sensible default for a CPU laptop."""

    backend: str | None = None  # "llamacpp" or "torch"; None = by format (GGUF → llamacpp, HF → torch)
    context_length: int | None = None  # None = the model's trained context, at most DEFAULT_CONTEXT
    threads: int | None = None  # None = number of physical cores
    device: str = device_field()  # torch backend only: auto, cpu, cuda, cuda:N
    draft: str | None = field(default=None, metadata={"metavar": "MODEL", "help": (
        "Speculative decoding: a smaller model with the same tokenizer proposes tokens that MODEL checks in one batch "
        "(same output, faster), or 'prompt-lookup' to propose n-grams from the prompt (answers that quote their sources), "
        "or 'prompt-lookup+MODEL' for both (the lookup where the text repeats the prompt, the model elsewhere). "
        "llamacpp backend only.")})

    def __post_init__(self) -> None:
        check_device_name(self.device)
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        if self.context_length is not None and self.context_length < 16:
            raise ConfigError(f"context length must be at least 16 tokens, got {self.context_length}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.draft is not None and not self.draft.strip():
            raise ConfigError("--draft needs a model (a built-in name or .gguf file) or 'prompt-lookup'")


def backend_class(name: str) -> type[Backend]:
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def choose_backend(ref: ModelRef, requested: str | None) -> type[Backend]:
    name = requested or DEFAULT_BACKEND[ref.format]
    cls = backend_class(name)
    reason = cls.unsupported_reason(ref)
    if reason:
        usable = [n for n in BACKENDS if n != name and backend_class(n).unsupported_reason(ref) is None]
        raise BackendError(f"{reason} (backends that can run {ref.name}: {', '.join(usable) or 'none'})")
    return cls


def load_model(
    spec: str | ModelRef | None = None,
    *,
    backend: str | None = None,
    context_length: int | None = None,
    threads: int | None = None,
    adapter: str | Path | None = None,
    device: str = "auto",
    draft: str | None = None,
) -> Backend:
    """Load MODEL (a built-in name, a GGUF path or a Hugging Face folder; None = the default),
    with the LoRA `adapter` applied if given (a `kecil tune` output folder, or a GGUF LoRA file),
    on `device` where the backend can choose one (torch: auto, cpu, cuda, cuda:N), with speculative
    decoding when `draft` names a draft model or "prompt-lookup" (kecil/infer/speculative.py)."""
    options = LoadOptions(backend, context_length, threads, device=device, draft=draft)
    ref = spec if isinstance(spec, ModelRef) else resolve(spec)
    info = inspect_model(ref)
    requested = options.backend
    if adapter is not None and requested is None:
        requested = adapter_backend(ref, Path(adapter).expanduser())
    cls = choose_backend(ref, requested)
    extra = {} if adapter is None else {"adapter": adapter_for_backend(Path(adapter).expanduser(), cls.name)}
    extra |= device_options(cls, options.device)
    if options.draft is not None:
        if cls.name != "llamacpp":
            raise ConfigError(f"--draft runs on the llamacpp backend; {ref.name} would run on {cls.name} "
                              "(drop --draft, or use a GGUF file: `kecil quantize` makes one)")
        extra["draft"] = options.draft
    n_ctx = options.context_length or min(info.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    if info.context_length and n_ctx > info.context_length:
        raise ConfigError(
            f"{ref.name} was trained for a context of {info.context_length} tokens; --context {n_ctx} is beyond it"
        )
    return cls(ref, info, context_length=n_ctx, threads=options.threads or physical_cores(), **extra)


def has_gguf_adapter(adapter: Path) -> bool:
    """Whether `adapter` is a GGUF LoRA file or a `kecil tune` folder holding one."""
    return adapter.is_file() or (adapter / ADAPTER_GGUF).is_file()


def adapter_backend(ref: ModelRef, adapter: Path) -> str:
    """The backend that runs `ref` with `adapter`: its usual one, except that a PEFT folder without
    its GGUF twin runs through transformers (torch) even for a GGUF model."""
    return DEFAULT_BACKEND[ref.format] if has_gguf_adapter(adapter) else "torch"


def adapter_for_backend(adapter: Path, backend: str) -> Path:
    """The file or folder of `adapter` that `backend` reads: the PEFT folder for torch, the GGUF
    LoRA file for llamacpp (`kecil tune` writes both, the GGUF as ADAPTER_GGUF inside the folder)."""
    if not adapter.exists():
        raise ConfigError(f"no such adapter: {adapter}; pass the -o folder of a finished `kecil tune` run")
    if backend == "torch":
        if adapter.is_dir() and (adapter / "adapter_config.json").is_file():
            return adapter
        raise ConfigError(
            f"{adapter} is not a PEFT adapter folder (no adapter_config.json); the torch backend needs the "
            "-o folder of `kecil tune` (a GGUF LoRA file runs with --backend llamacpp)"
        )
    gguf = adapter / ADAPTER_GGUF if adapter.is_dir() else adapter
    if not gguf.is_file():
        raise ConfigError(
            f"{adapter} has no {ADAPTER_GGUF} for llama.cpp (kecil tune writes it for architectures "
            "llama.cpp can load as GGUF): use --backend torch"
        )
    return gguf


def device_options(cls, device: str) -> dict:
    """The keyword that passes `device` to backend or engine class `cls`: {"device": ...} for one that
    runs on a GPU, nothing for a CPU-only one, which refuses an explicit CUDA request rather than
    quietly running on the CPU."""
    if "cuda" in cls.devices:
        return {"device": device}
    if device.strip().lower() not in ("auto", "cpu"):
        raise ConfigError(f"the {cls.name} backend runs on the CPU in kecil; --device {device} needs --backend torch "
                          "(a Hugging Face folder, or a GGUF file dequantized to float)")
    return {}
