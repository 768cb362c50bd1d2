"""Torch weight-only quantization: int8 or int4 weights with one scale per group of input columns.

Each nn.Linear in the transformer blocks becomes a `QuantizedLinear` that stores integer codes
and per-group scales (int4: asymmetric, with a per-group minimum; int8: symmetric) and
dequantizes on the fly, so activations stay in float. `QuantizedLinear` is an nn.Linear subclass
whose `weight` is computed from the codes, which lets PEFT put LoRA adapters on it (QLoRA-style
training on a frozen quantized base). Saved and reloaded with safetensors; `load_model(DIR,
backend="torch")` (and so `kecil generate DIR`) runs a saved folder. The layer itself lives in
kecil/infer/quantized_linear.py so that the torch backend can load it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from torch import nn

from kecil.errors import ConfigError
from kecil.infer.quantized_linear import CONFIG_FILE, WEIGHTS_FILE, QuantizedLinear, linear_targets, load_weight_only
from kecil.scratch import owned_prefix

__all__ = ["QuantizedLinear", "quantize_weights", "save_quantized", "load_quantized"]

GROUP_SIZES = (32, 64, 128)
BITS = (4, 8)


def _check(bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise ConfigError(f"weight-only quantization supports {BITS} bits, not {bits}: pick 4 or 8")
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"group size {group_size} is not supported: pick one of {', '.join(map(str, GROUP_SIZES))}")


def quantize_weights(model: nn.Module, bits: int = 4, group_size: int = 64) -> nn.Module:
    """Replace the block linears of `model` by QuantizedLinear, in place; returns `model`."""
    _check(bits, group_size)
    targets = linear_targets(model, group_size)
    if not targets:
        raise ConfigError(f"no linear layer of this model has a multiple of {group_size} input columns: try a smaller group size")
    for parent, name, linear in targets:
        setattr(parent, name, QuantizedLinear.from_linear(linear, bits=bits, group_size=group_size))
    model.kecil_weight_only = {"bits": bits, "group_size": group_size}
    return model


def save_quantized(model: nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """Write `model` (after quantize_weights) as config.json + model.safetensors + kecil_weight_only.json,
    with `tokenizer`'s files when given (a folder to run with `kecil generate DIR` needs them)."""
    from safetensors.torch import save_file

    settings = getattr(model, "kecil_weight_only", None)
    if settings is None:
        raise ConfigError("the model has no quantized weights: call quantize_weights(model) before save_quantized")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    modules = [name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # Tied embeddings share storage with the output head; safetensors refuses shared tensors.
    seen: dict[int, str] = {}
    for key in list(state):
        ptr = state[key].data_ptr()
        if ptr in seen:
            del state[key]
        else:
            seen[ptr] = key
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps({**settings, "modules": modules}, indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def write_weight_only(model_spec: str, output: Path, *, bits: int, group_size: int) -> Path:
    """Load `model_spec` (a built-in name, GGUF file or HF folder) as a float torch model, quantize its
    weights and write the folder `output`: built beside it under a temporary name, renamed when whole."""
    from kecil.infer.torch_backend import load_transformers
    from kecil.models.reference import resolve

    _check(bits, group_size)
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output} already exists: int4/int8 output is a folder; pick a new -o path or remove it")
    if not output.parent.is_dir():
        raise ConfigError(f"the output folder {output.parent} does not exist: create it or pick another -o path")
    model, tokenizer = load_transformers(resolve(model_spec))
    quantize_weights(model.float().eval(), bits=bits, group_size=group_size)
    temp = Path(tempfile.mkdtemp(prefix=owned_prefix(output.name), suffix=".part", dir=output.parent))
    try:
        save_quantized(model, temp, tokenizer)
        if output.exists():
            output.rmdir()  # empty, checked above
        temp.rename(output)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return output


def load_quantized(directory: str | Path) -> nn.Module:
    """The model saved by save_quantized, with its QuantizedLinear layers, in eval mode."""
    return load_weight_only(directory)
