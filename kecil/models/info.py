"""What is inside a model (size, shape, quantization, tokens) and how much RAM running it takes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kecil.errors import ConfigError, InvalidModelError
from kecil.models.hf_dir import HFModelDir, check_hf_dir
from kecil.models.reference import ModelRef
from kecil.scratch import format_bytes  # noqa: F401 (kecil.models.info.format_bytes is where callers look)

if TYPE_CHECKING:  # gguf_header imports gguf and numpy; info is imported by light commands too
    from kecil.models.gguf_header import GGUFHeader

MiB = 1024 * 1024
BACKENDS = ("llamacpp", "torch")
# llama.cpp's default n_batch/n_ubatch: prompts are processed in chunks of this many tokens.
LLAMACPP_BATCH = 512
# Process RSS before loading any weights. torch: measured on this machine after importing
# torch + transformers and running a tiny model (348 MiB), rounded up. llama.cpp: llama_cpp
# was not importable when this was written, so this is a conservative guess (Python, numpy,
# the ggml libraries), not a measurement; measure it with the real SmolLM2 and replace it.
RUNTIME_OVERHEAD = {"llamacpp": 128 * MiB, "torch": 384 * MiB}
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int8": 1}


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a model that commands print and memory estimates need."""

    ref: ModelRef
    architecture: str
    parameters: int  # element count of all weight tensors; tied embeddings counted once
    file_size: int  # bytes on disk: the GGUF, or the weight files of an HF folder
    quantization: str  # "Q4_1", "Q4_K_M", ... for GGUF; the dtype ("bfloat16", ...) for HF
    context_length: int  # the context the model was trained for
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos: bool


@dataclass(frozen=True)
class MemoryEstimate:
    """RAM needed to run a model at one context length on one backend, by part."""

    backend: str
    context_length: int
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes


def inspect_model(ref: ModelRef) -> ModelInfo:
    """Read a resolved model's metadata (headers and small JSON files only, never the weights)."""
    return _INSPECTORS[ref.format](ref)


def estimate_memory(info: ModelInfo, context_length: int, backend: str) -> MemoryEstimate:
    """Estimate the RAM `backend` needs to run `info`'s model with a `context_length`-token window."""
    if context_length < 1:
        raise ConfigError(
            f"the context length must be at least 1 token, not {context_length}: pass a positive --context"
        )
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; backends: {', '.join(BACKENDS)}")
    if backend == "llamacpp":
        if info.ref.format != "gguf":
            raise ConfigError(
                f"the llamacpp backend runs GGUF files and {info.ref.name} is a Hugging Face folder: "
                "use the torch backend, or convert the folder to GGUF"
            )
        # llama.cpp maps the file as is, so weights cost their on-disk size; the KV cache is f16.
        weights, kv_bytes = info.file_size, 2
    else:
        # torch dequantizes a GGUF to float32; an HF folder loads in its own dtype.
        kv_bytes = 4 if info.ref.format == "gguf" else DTYPE_BYTES.get(info.quantization, 4)
        weights = info.parameters * kv_bytes
    # Keys and values for every layer and position: 2 × layers × context × kv heads × head dim.
    # For sliding-window models (gemma2/3) this is an upper bound: local layers keep fewer positions.
    kv_cache = 2 * info.n_layers * context_length * info.n_kv_heads * info.head_dim * kv_bytes
    # Working memory for one batch of up to 512 tokens, in float32. Without flash attention the
    # largest live tensor is either the attention scores (heads × context per token) or the
    # logits (vocabulary per token), next to a few hidden-size activations. This is a rough
    # model of llama.cpp's graph allocator, not a copy of it; expect tens of percent either way.
    batch = min(LLAMACPP_BATCH, context_length)
    compute = 4 * batch * (max(info.vocab_size, info.n_heads * context_length) + 4 * info.hidden_size)
    return MemoryEstimate(backend, context_length, weights, kv_cache, compute, RUNTIME_OVERHEAD[backend])


def describe(info: ModelInfo, estimate: MemoryEstimate | None = None) -> list[tuple[str, str]]:
    """Human-readable (label, value) rows about a model, for `kecil info` and friends."""
    ref = info.ref
    rows = [
        ("Model", ref.name + (" (built-in)" if ref.builtin else "")),
        ("Path", str(ref.path)),
        ("Format", "GGUF" if ref.format == "gguf" else "Hugging Face folder"),
        ("Architecture", info.architecture),
        ("Parameters", format_count(info.parameters)),
        ("File size", format_bytes(info.file_size)),
        ("Quantization", info.quantization),
        # No thousands separators: users type these numbers back as --context 8192.
        ("Context length", f"{info.context_length} tokens"),
        ("Layers", str(info.n_layers)),
        ("Hidden size", str(info.hidden_size)),
        ("Attention heads", f"{info.n_heads} ({info.n_kv_heads} key/value, head size {info.head_dim})"),
        ("Vocabulary", f"{info.vocab_size} tokens"),
        ("Chat template", "yes" if info.chat_template else "none (a base model: use plain prompts)"),
        ("BOS token", f"{info.bos_token!r} ({'added to' if info.add_bos else 'not added to'} prompts)"),
        ("EOS token", repr(info.eos_token)),
    ]
    if estimate is not None:
        rows.append((
            f"RAM needed at {estimate.context_length} tokens ({estimate.backend})",
            f"{format_bytes(estimate.total_bytes)} (weights {format_bytes(estimate.weights_bytes)}, "
            f"KV cache {format_bytes(estimate.kv_cache_bytes)}, compute {format_bytes(estimate.compute_bytes)}, "
            f"runtime {format_bytes(estimate.overhead_bytes)}; an estimate)",
        ))
    return rows


def format_count(n: int) -> str:
    """134515008 -> '134.5M'."""
    for scale, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


# SI prefixes count in powers of 1000 and IEC ones (with an "i") in powers of 1024, as disks,
# Kubernetes and `ls --si` read them: 4GB is 4,000,000,000 bytes and 4GiB is 4,294,967,296.
_SIZE_UNITS = {"": 1, "B": 1} | {
    prefix + unit: (1024 if "I" in unit else 1000) ** power
    for power, prefix in enumerate("KMGT", start=1) for unit in ("", "B", "I", "IB")
}
SIZE_HELP = "GB/MB are powers of 1000, GiB/MiB powers of 1024"


def parse_bytes(text: str) -> int:
    """A memory size in bytes, the one reading of every size option: '4GB' -> 4_000_000_000
    (SI, powers of 1000), '4GiB' -> 4_294_967_296 (IEC, powers of 1024), '2048' -> 2048."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ConfigError(f"cannot read {text!r} as a memory size: write it like 300MB, 4GB or 1.5GiB ({SIZE_HELP})")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


# --- GGUF ----------------------------------------------------------------------------------
def _inspect_gguf(ref: ModelRef) -> ModelInfo:
    from gguf.constants import Keys

    from kecil.models.gguf_header import GGUFArray, read_gguf_header

    header = read_gguf_header(ref.path)
    arch = header.get(Keys.General.ARCHITECTURE)

    def number(key: str, default: int | None = None) -> int:
        value = header.get(key.format(arch=arch), default)
        if isinstance(value, GGUFArray):  # per-layer values (e.g. head counts); the largest bounds memory
            value = max(value.items or (0,))
        if value is None:
            raise InvalidModelError(
                f"{ref.path} lacks {key.format(arch=arch)} in its GGUF metadata: "
                "re-convert the model with a current llama.cpp"
            )
        return int(value)

    hidden = number(Keys.LLM.EMBEDDING_LENGTH)
    n_heads = number(Keys.Attention.HEAD_COUNT)
    tokens = header.get(Keys.Tokenizer.LIST)
    vocab = number(Keys.LLM.VOCAB_SIZE, tokens.length if isinstance(tokens, GGUFArray) else 0)
    special_ids = {k: header.get(k) for k in (Keys.Tokenizer.BOS_ID, Keys.Tokenizer.EOS_ID)}
    strings = header.array_items(Keys.Tokenizer.LIST, [i for i in special_ids.values() if isinstance(i, int)])
    bos, eos = (strings.get(special_ids[k]) for k in (Keys.Tokenizer.BOS_ID, Keys.Tokenizer.EOS_ID))
    add_bos = header.get(Keys.Tokenizer.ADD_BOS)
    if add_bos is None:
        # llama.cpp's own default when the key is absent: SentencePiece vocabularies add BOS.
        add_bos = header.get(Keys.Tokenizer.MODEL) in ("llama", "bert")
    template = header.get(Keys.Tokenizer.CHAT_TEMPLATE)
    return ModelInfo(
        ref=ref,
        architecture=ref.architecture,
        # The GGUF stores a tied output matrix once (no output.weight), so a plain sum counts it once.
        parameters=sum(t.n_elements for t in header.tensors),
        file_size=header.file_size,
        quantization=_gguf_quantization(header),
        context_length=number(Keys.LLM.CONTEXT_LENGTH),
        n_layers=number(Keys.LLM.BLOCK_COUNT),
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=number(Keys.Attention.HEAD_COUNT_KV, n_heads),
        head_dim=number(Keys.Attention.KEY_LENGTH, hidden // max(n_heads, 1)),
        vocab_size=int(vocab),
        chat_template=template if isinstance(template, str) and template else None,
        bos_token=bos,
        eos_token=eos,
        add_bos=bool(add_bos),
    )


def _gguf_quantization(header: GGUFHeader) -> str:
    """The file's declared type (general.file_type), else its most common matrix tensor type."""
    from gguf.constants import Keys, LlamaFileType

    try:
        file_type = LlamaFileType(header.get(Keys.General.FILE_TYPE))
        if file_type != LlamaFileType.GUESSED:
            return file_type.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        pass
    matrices = Counter(t.ggml_type.name for t in header.tensors if len(t.shape) >= 2)
    return matrices.most_common(1)[0][0] if matrices else "unknown"


# --- Hugging Face folder -------------------------------------------------------------------
def _inspect_hf(ref: ModelRef) -> ModelInfo:
    folder = check_hf_dir(ref.path)
    config = _complete_text_config(folder)
    hidden = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    tokenizer_config = _read_json(ref.path / "tokenizer_config.json")
    special_map = _read_json(ref.path / "special_tokens_map.json")
    bos, eos = (
        _token_text(tokenizer_config.get(key) or special_map.get(key))
        or _added_token(ref.path / "tokenizer.json", config.get(f"{key}_id"))
        for key in ("bos_token", "eos_token")
    )
    add_bos = tokenizer_config.get("add_bos_token")
    if add_bos is None:
        add_bos = _post_processor_adds(ref.path / "tokenizer.json", bos)
    return ModelInfo(
        ref=ref,
        architecture=ref.architecture,
        parameters=_hf_parameters(folder),
        file_size=sum(f.stat().st_size for f in folder.weight_files),
        quantization=_hf_dtype(folder, config),
        context_length=int(config["max_position_embeddings"]),
        n_layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
        head_dim=int(config.get("head_dim") or hidden // n_heads),
        vocab_size=int(config["vocab_size"]),
        chat_template=_hf_chat_template(ref.path, tokenizer_config),
        bos_token=bos,
        eos_token=eos,
        add_bos=bool(add_bos),
    )


_REQUIRED_HF_KEYS = (
    "hidden_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings", "vocab_size",
)


def _complete_text_config(folder: HFModelDir) -> Mapping[str, Any]:
    """The text model's config; when config.json leaves keys at their defaults, ask transformers."""
    config = folder.text_config
    if all(key in config for key in _REQUIRED_HF_KEYS):
        return config
    # Slow path (imports transformers, ~4 s): only for configs that leave values at their defaults.
    from transformers import AutoConfig

    try:
        loaded = AutoConfig.from_pretrained(folder.path, local_files_only=True).get_text_config()
    except Exception as error:  # transformers raises many types for a config it cannot build
        missing = [key for key in _REQUIRED_HF_KEYS if key not in config]
        raise InvalidModelError(
            f"{folder.path / 'config.json'} lacks {', '.join(missing)} and transformers could not fill them in "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}): "
            "re-download config.json from the model's original repository"
        ) from None
    return {**loaded.to_dict(), **config}


def _hf_parameters(folder: HFModelDir) -> int:
    # transformers saves a tied lm_head once (as the embedding); older checkpoints that also
    # wrote lm_head.weight would count it twice, so it is skipped when the config says tied.
    config = folder.text_config
    tied = bool(config.get("tie_word_embeddings", folder.config.get("tie_word_embeddings", False)))
    if folder.safetensors:
        return sum(
            t.n_elements
            for header in folder.safetensors
            for t in header.tensors
            if not (tied and t.name.endswith("lm_head.weight"))
        )
    import torch  # only old pytorch_model*.bin folders need torch to see their shapes

    seen, total = set(), 0
    for path in folder.weight_files:
        # mmap: the tensors stay on disk; their addresses tell shared (tied) tensors apart.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
            raise InvalidModelError(
                f"torch cannot read {path} ({str(error).splitlines()[0] if str(error) else type(error).__name__}): "
                "re-download it, or convert the folder to safetensors"
            ) from None
        for name, tensor in state.items():
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if key not in seen and not (tied and name.endswith("lm_head.weight")):
                seen.add(key)
                total += tensor.numel()
    return total


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8"}


def _hf_dtype(folder: HFModelDir, config: Mapping[str, Any]) -> str:
    keys = ("dtype", "torch_dtype")  # transformers 5 writes dtype, older versions torch_dtype
    declared = next((c[k] for c in (config, folder.config) for k in keys if c.get(k)), None)
    if isinstance(declared, str) and declared != "auto":
        return declared.removeprefix("torch.")
    stored = Counter(t.dtype for header in folder.safetensors for t in header.tensors if len(t.shape) >= 2)
    if stored:
        name = stored.most_common(1)[0][0]
        return _SAFETENSORS_DTYPES.get(name, name.lower())
    return "float32"


def _hf_chat_template(path: Path, tokenizer_config: Mapping[str, Any]) -> str | None:
    """The template from chat_template.jinja (transformers 5), tokenizer_config.json, or chat_template.json."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8") or None
    template = tokenizer_config.get("chat_template") or _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template else None


def _token_text(token: Any) -> str | None:
    if isinstance(token, dict):  # AddedToken serialised as {"content": ..., ...}
        token = token.get("content")
    return token if isinstance(token, str) else None


def _added_token(tokenizer_json: Path, token_id: Any) -> str | None:
    """The text of special token `token_id` from tokenizer.json's added tokens, if it is there."""
    if not isinstance(token_id, int) or not tokenizer_json.is_file():
        return None
    added = _read_json(tokenizer_json).get("added_tokens") or []
    return next((t.get("content") for t in added if isinstance(t, dict) and t.get("id") == token_id), None)


def _post_processor_adds(tokenizer_json: Path, bos: str | None) -> bool:
    """Whether tokenizer.json's post-processor puts the BOS token in front of a single sequence."""
    if bos is None or not tokenizer_json.is_file():
        return False
    processor = _read_json(tokenizer_json).get("post_processor") or {}
    processors = processor.get("processors", [processor]) if processor.get("type") == "Sequence" else [processor]
    for step in processors:
        for piece in step.get("single", []) if step.get("type") == "TemplateProcessing" else []:
            if piece.get("SpecialToken", {}).get("id") == bos:
                return True
    return False


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from an optional side file; missing or malformed side files count as empty."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


_INSPECTORS: dict[str, Callable[[ModelRef], ModelInfo]] = {"gguf": _inspect_gguf, "hf": _inspect_hf}
