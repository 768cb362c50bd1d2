"""Writing a PEFT LoRA adapter as a GGUF LoRA file that llama.cpp applies to a GGUF base model.

The layout is llama.cpp's (its convert_lora_to_gguf.py): `general.type` "adapter",
`adapter.type` "lora", `adapter.lora.alpha`, and for each adapted matrix the two factors named
after the base tensor, `blk.N.attn_q.weight.lora_a` (r × n_in, as PEFT stores A) and
`.lora_b` (n_out × r). llama.cpp scales B·A by alpha / r, as PEFT does. Llama-family GGUFs store
the rows of Q and K interleaved per rotary pair rather than split in halves, so B's rows of
those projections are reordered the same way the base weights were.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kecil.errors import ConfigError

# kecil architecture -> (gguf-py architecture name, whether Q/K rows are permuted in GGUF)
_GGUF_ARCH = {
    "llama": ("LLAMA", True),
    "mistral": ("LLAMA", True),
    "qwen2": ("QWEN2", False),
    "qwen3": ("QWEN3", False),
    "gemma2": ("GEMMA2", False),
    "gemma3": ("GEMMA3", False),
    "phi3": ("PHI3", False),
}


def _permute(w, n_head: int):
    """Each head's rows from [first halves | second halves] to interleaved rotary pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_adapter_gguf(
    adapter_dir: Path, output: Path, *, architecture: str, n_layers: int, n_head: int, n_kv_head: int
) -> Path:
    """Write the PEFT adapter in `adapter_dir` as a GGUF LoRA at `output` (renamed into place whole)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    if architecture not in _GGUF_ARCH:
        raise ConfigError(f"no GGUF LoRA layout for architecture {architecture}; use the adapter with --backend torch")
    arch_name, permute_qk = _GGUF_ARCH[architecture]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_rslora") or config.get("use_dora"):
        raise ConfigError("rsLoRA and DoRA adapters have no GGUF LoRA form; use the adapter with --backend torch")
    names = gguf.get_tensor_name_map(arch, n_layers)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight -> model.layers.0.self_attn.q_proj
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise ConfigError(f"the adapter holds a tensor a GGUF LoRA cannot carry ({key}); use it with --backend torch")
        pairs.setdefault(module, {})[part[0]] = value.astype(np.float32)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(config["lora_alpha"]))
    for module in sorted(pairs):
        base = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if base is None or module.endswith("lm_head"):
            raise ConfigError(f"llama.cpp has no place for a LoRA on {module}; use the adapter with --backend torch")
        a, b = pairs[module]["A"], pairs[module]["B"]
        if permute_qk and module.endswith("q_proj"):
            b = _permute(b, n_head)
        elif permute_qk and module.endswith("k_proj"):
            b = _permute(b, n_kv_head)
        writer.add_tensor(base + ".lora_a", np.ascontiguousarray(a))
        writer.add_tensor(base + ".lora_b", np.ascontiguousarray(b))
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    writer.write_header_to_file(path=temporary)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(temporary, output)
    return output
