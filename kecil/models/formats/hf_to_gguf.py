"""Convert a Hugging Face model folder of a supported architecture into a GGUF file llama.cpp loads.

Tensor names come from gguf-py's TensorNameMap; what differs between architectures (rotary
layout of Q/K in Llama-style models, Gemma's `1 + weight` norms and query scale, tied
embeddings) is one small table, `_ARCH`. The tokenizer and chat template go in through
`hf_vocab`. The file is written beside `output` under a temporary name and renamed when whole.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from kecil.errors import ConfigError, InvalidModelError, UnsupportedArchitectureError
from kecil.models.formats.hf_vocab import add_vocab
from kecil.models.hf_dir import HFModelDir, check_hf_dir

Progress = Callable[[int, int], None]  # (tensors written, tensors in all)

OUT_TYPES = ("f32", "f16", "bf16", "q8_0", "auto")
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_TENSOR_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}


@dataclass(frozen=True)
class _ArchRules:
    """What one architecture needs beyond the shared conversion."""

    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool = False  # HF stores rotary halves split; llama.cpp's "normal" rope wants them interleaved
    norm_shift: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp's by w
    query_prescale: bool = False  # Gemma: llama.cpp fixes the attention scale, HF reads query_pre_attn_scalar
    sentencepiece_space_prefix: bool | None = None


_ARCH: dict[str, _ArchRules] = {
    "llama": _ArchRules(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": _ArchRules(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": _ArchRules(gguf.MODEL_ARCH.QWEN2),
    "qwen3": _ArchRules(gguf.MODEL_ARCH.QWEN3),
    "gemma2": _ArchRules(gguf.MODEL_ARCH.GEMMA2, norm_shift=1.0, query_prescale=True, sentencepiece_space_prefix=False),
    "gemma3": _ArchRules(gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0, query_prescale=True, sentencepiece_space_prefix=False),
    "phi3": _ArchRules(gguf.MODEL_ARCH.PHI3),
}
# Multimodal wrappers keep the language model under another prefix; their vision parts are skipped.
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."))
_SKIPPED = re.compile(r"(^|\.)(vision_tower|vision_model|multi_modal_projector|audio_tower)\.|rotary_emb\.inv_freq$")


@dataclass
class _Tensor:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]  # torch order (rows, columns)
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]


def convert_hf_to_gguf(hf_dir: str | os.PathLike, output: str | os.PathLike, *, out_type: str = "f16", progress: Progress | None = None) -> Path:
    """Write the Hugging Face model in `hf_dir` to the GGUF file `output`; returns its path.

    `out_type` is the type of the 2-D weights: f32, f16, bf16, q8_0, or auto (the folder's own
    float type: bf16 stays bf16, f32 stays f32). Norms and other 1-D tensors stay f32.
    """
    if out_type not in OUT_TYPES:
        raise ConfigError(f"unknown GGUF output type {out_type!r}; choose one of: {', '.join(OUT_TYPES)}")
    model = check_hf_dir(Path(hf_dir))
    rules = _ARCH.get(model.architecture)
    if rules is None:
        raise UnsupportedArchitectureError(f"kecil cannot convert architecture {model.architecture} to GGUF yet")
    config = dict(model.text_config)
    output = Path(output)
    weight_type = _resolve_out_type(out_type, model)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[rules.gguf_arch])
    writer.add_file_type(_FILE_TYPES[weight_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(writer, model.architecture, config)
    tokens = add_vocab(writer, model.path, int(config.get("vocab_size") or 0), sentencepiece_space_prefix=rules.sentencepiece_space_prefix)
    writer.add_name(_model_name(model.path.name, tokens))
    tensors = list(_plan_tensors(model, rules, config, _TENSOR_TYPES[weight_type]))
    return write_gguf(writer, tensors, output, progress)


def write_gguf(writer: gguf.GGUFWriter, tensors: list[_Tensor], output: Path, progress: Progress | None) -> Path:
    """Stream the tensors into `output` through a temporary file, renamed only when complete."""
    from kecil.models.formats.gguf_io import atomic_output, encode_tensor

    for t in tensors:
        shape = t.shape
        nbytes = _nbytes(t.qtype, shape)
        writer.add_tensor_info(t.gguf_name, _byte_shape(t.qtype, shape), np.dtype(np.uint8), nbytes, raw_dtype=t.qtype)
    with atomic_output(output) as temp:
        writer.write_header_to_file(path=temp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, t in enumerate(tensors, start=1):
            writer.write_tensor_data(encode_tensor(t.load(), t.qtype))
            if progress:
                progress(done, len(tensors))
        writer.close()
    return output


def _model_name(name: str, tokens: set[str]) -> str:
    # llama.cpp gives Phi-3's SentencePiece specials extra attributes when general.name mentions
    # phi3, and aborts if those tokens are missing (a Phi-3 with a BPE vocabulary, like Phi-4-mini).
    if re.search(r"phi-?3", name, re.IGNORECASE) and not {"</s>", "<unk>", "<s>", "<|endoftext|>"} <= tokens:
        return re.sub(r"(?i)phi-?3", "Phi 3", name)
    return name


def _nbytes(qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def _byte_shape(qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...]) -> tuple[int, ...]:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * type_size)


def _resolve_out_type(out_type: str, model: HFModelDir) -> str:
    if out_type != "auto":
        return out_type
    dtypes = {t.dtype for header in model.safetensors for t in header.tensors}
    if "BF16" in dtypes:
        return "bf16"
    return "f32" if dtypes == {"F32"} else "f16"


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from either transformers 5's `rope_parameters` or the older top-level keys."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    params = dict(params.get("full_attention", params))
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


def _add_hparams(writer: gguf.GGUFWriter, arch: str, config: dict[str, Any]) -> None:
    n_head = config["num_attention_heads"]
    n_embd = config["hidden_size"]
    head_dim = config.get("head_dim") or n_embd // n_head
    rope = _rope(config)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope["rope_theta"])
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    writer.add_rope_dimension_count(int(head_dim * partial))
    writer.add_vocab_size(config["vocab_size"])
    kind, factor = rope.get("rope_type", rope.get("type")), rope.get("factor")
    if kind == "linear" and factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif kind == "yarn" and factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind not in (None, "default", "llama3"):
        raise UnsupportedArchitectureError(f"rope scaling {kind!r} is not supported by kecil's converter yet")
    if arch in ("gemma2", "gemma3"):
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(config["final_logit_softcapping"])
        if arch == "gemma2":
            writer.add_attn_logit_softcapping(config.get("attn_logit_softcapping") or 0.0)
        if config.get("sliding_window"):
            writer.add_sliding_window(config["sliding_window"])
        local = (config.get("rope_parameters") or {}).get("sliding_attention", {})
        writer.add_rope_freq_base_swa(local.get("rope_theta", config.get("rope_local_base_freq", 10000.0)))
        if layer_types := config.get("layer_types"):
            writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
    if arch == "phi3":
        writer.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings") or config.get("max_position_embeddings", 4096))
        writer.add_sliding_window(config.get("sliding_window") or 0)
        if rope.get("long_factor"):
            raise UnsupportedArchitectureError("Phi-3 long-context (LongRoPE) models are not supported by kecil's converter yet")


def _llama3_rope_factors(config: dict[str, Any]) -> np.ndarray | None:
    """Per-frequency factors of Llama 3.1+'s rope scaling, which llama.cpp reads as a tensor."""
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_context / high, 1.0, np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth))
    )
    return factors.astype(np.float32)


def _plan_tensors(model: HFModelDir, rules: _ArchRules, config: dict[str, Any], weight_type) -> Iterator[_Tensor]:
    n_layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(rules.gguf_arch, n_layers)
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    tied = bool(config.get("tie_word_embeddings", model.config.get("tie_word_embeddings", False)))
    sources = _tensor_sources(model)
    query_scale = _gemma_query_scale(config, n_layers) if rules.query_prescale else 1.0
    for hf_name, (shape, load) in sources.items():
        name = _canonical(hf_name)
        if _SKIPPED.search(name):
            continue
        if name == "lm_head.weight" and (tied or rules.gguf_arch in (gguf.MODEL_ARCH.GEMMA2, gguf.MODEL_ARCH.GEMMA3)):
            continue  # llama.cpp reuses token_embd as the output matrix
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedArchitectureError(
                f"{model.path.name} has a tensor kecil does not know how to convert ({hf_name}); "
                f"this {model.architecture} variant is not supported"
            )
        transform = _transform(name, rules, n_head, n_kv, query_scale)
        qtype = weight_type if len(shape) == 2 and not name.endswith("norm.weight") else gguf.GGMLQuantizationType.F32
        if qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % 32:
            qtype = gguf.GGMLQuantizationType.F16
        yield _Tensor(hf_name, gguf_name, tuple(shape), qtype, _loader(load, transform))
    factors = _llama3_rope_factors(config)
    if factors is not None:
        yield _Tensor("rope_freqs", "rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32, lambda f=factors: f)


def _canonical(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _gemma_query_scale(config: dict[str, Any], n_layers: int) -> float:
    """Factor on the query that turns llama.cpp's fixed attention scale into the model's own.

    llama.cpp scales Gemma attention by 1/sqrt(head_dim) (by 1/sqrt(hidden/heads) for the 27B
    models, recognised by layer count); transformers by 1/sqrt(query_pre_attn_scalar). The two
    agree for every released Gemma, but not for any config (a small test model, say).
    """
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    scalar = config.get("query_pre_attn_scalar") or head_dim
    is_27b = n_layers in (46, 62)
    llama_cpp_scale = 1 / math.sqrt(config["hidden_size"] / config["num_attention_heads"] if is_27b else head_dim)
    return (1 / math.sqrt(scalar)) / llama_cpp_scale


def _transform(name: str, rules: _ArchRules, n_head: int, n_kv: int, query_scale: float) -> Callable[[np.ndarray], np.ndarray] | None:
    steps: list[Callable[[np.ndarray], np.ndarray]] = []
    if rules.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
        steps.append(lambda w: _permute(w, n_head))
    if rules.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
        steps.append(lambda w: _permute(w, n_kv))
    if rules.norm_shift and name.endswith("norm.weight"):
        steps.append(lambda w: w + rules.norm_shift)
    if query_scale != 1.0:
        # Gemma 3 normalises q after the projection, so the scale goes on that norm; Gemma 2 has none.
        if name.endswith("q_norm.weight") or (rules.gguf_arch == gguf.MODEL_ARCH.GEMMA2 and name.endswith("q_proj.weight")):
            steps.append(lambda w: w * np.float32(query_scale))
    if not steps:
        return None

    def apply(w: np.ndarray) -> np.ndarray:
        for step in steps:
            w = step(w)
        return w

    return apply


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from [first halves | second halves] to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _loader(load: Callable[[], np.ndarray], transform) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        w = load()
        return transform(w) if transform else w

    return run


def _tensor_sources(model: HFModelDir) -> dict[str, tuple[tuple[int, ...], Callable[[], np.ndarray]]]:
    """Every tensor in the folder: name -> (shape, loader returning float32 numpy)."""
    sources: dict[str, tuple[tuple[int, ...], Callable[[], np.ndarray]]] = {}
    for path in model.weight_files:
        if path.suffix == ".safetensors":
            header = next(h for h in model.safetensors if h.path == path)
            for t in header.tensors:
                sources[t.name] = (tuple(t.shape), lambda p=path, n=t.name: _read_safetensor(p, n))
        else:
            import torch

            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # torch raises many kinds for a corrupt pickle
                raise InvalidModelError(f"cannot read {path} ({type(error).__name__}): copy it again from the original model") from None
            for name, value in state.items():
                sources[name] = (tuple(value.shape), lambda v=value: v.float().numpy())
    return sources


def _read_safetensor(path: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return file.get_tensor(name).float().numpy()
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise InvalidModelError(f"cannot read tensor {name} from {path} ({error}): copy the file again") from None

