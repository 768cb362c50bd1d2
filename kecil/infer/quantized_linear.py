"""Layers with int8/int4 weights for the torch backend, and loading a folder of them (written by kecil.compress.weight_only).

A `QuantizedLinear` stores integer codes and per-group scales (int4: asymmetric, with a per-group
minimum; int8: symmetric) and dequantizes on the fly, so activations stay in float. It is an
nn.Linear subclass whose `weight` is computed from the codes, which lets PEFT put LoRA adapters
on it (QLoRA-style training on a frozen quantized base). It lives here, below compress/, so that
`load_model(DIR, backend="torch")` can open a quantized folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kecil.errors import InvalidModelError

CONFIG_FILE = "kecil_weight_only.json"  # marks a weight-only folder: bits, group size, quantized modules
WEIGHTS_FILE = "model.safetensors"


class QuantizedLinear(nn.Linear):
    """A linear layer with int4/int8 weights and per-group scales, dequantized in forward."""

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int, bias: bool, dtype=torch.float32):
        nn.Module.__init__(self)  # not nn.Linear.__init__: there is no float weight to allocate
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        groups = in_features // group_size
        code_columns = in_features // 2 if bits == 4 else in_features  # two int4 codes per byte
        self.register_buffer("codes", torch.zeros(out_features, code_columns, dtype=torch.uint8 if bits == 4 else torch.int8))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=dtype))
        self.register_buffer("mins", torch.zeros(out_features, groups, dtype=dtype) if bits == 4 else None)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits: int, group_size: int) -> QuantizedLinear:
        w = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, bits=bits, group_size=group_size, bias=linear.bias is not None, dtype=linear.weight.dtype)
        grouped = w.reshape(w.shape[0], -1, group_size)
        if bits == 8:
            scale = grouped.abs().amax(-1).clamp(min=1e-12) / 127
            codes = torch.round(grouped / scale[..., None]).clamp(-127, 127).to(torch.int8).reshape(w.shape)
            layer.codes.copy_(codes)
        else:
            low, high = grouped.amin(-1), grouped.amax(-1)
            scale = ((high - low) / 15).clamp(min=1e-12)
            q = torch.round((grouped - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8).reshape(w.shape)
            layer.codes.copy_(q[:, 0::2] | (q[:, 1::2] << 4))
            layer.mins.copy_(low)
        layer.scales.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dequantized float weight (computed, not stored)."""
        if self.bits == 8:
            q = self.codes.float().reshape(self.out_features, -1, self.group_size)
            w = q * self.scales.float()[..., None]
        else:
            low, high = self.codes & 0x0F, self.codes >> 4
            q = torch.stack((low, high), dim=-1).reshape(self.out_features, -1, self.group_size).float()
            w = q * self.scales.float()[..., None] + self.mins.float()[..., None]
        return w.reshape(self.out_features, self.in_features).to(self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return nn.functional.linear(x, self.weight.to(x.dtype), bias)
        # Training through a frozen quantized base (QLoRA): autograd would keep every layer's
        # dequantized float weight alive until backward — the whole float model again. The weight
        # is recomputed from the codes in backward instead, so only the codes stay resident.
        out = _DequantizedMatmul.apply(x, self)
        return out if bias is None else out + bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, group_size={self.group_size}"


class _DequantizedMatmul(torch.autograd.Function):
    """x @ Wᵀ for a QuantizedLinear, with W dequantized again in backward rather than saved.
    The base weight is frozen, so only the input's gradient is computed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:
        ctx.layer = layer
        return x @ layer.weight.to(x.dtype).t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.weight.to(grad.dtype), None


def linear_targets(model: nn.Module, group_size: int) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, linear) for every linear inside the transformer blocks (embeddings and
    the output head stay float: they are lookups or the last, most sensitive product)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    found = []
    for parent in decoder.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and child.in_features % group_size == 0:
                found.append((parent, name, child))
    return found


def is_weight_only_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def load_weight_only(directory: str | Path) -> nn.Module:
    """The model in a weight-only folder, with its QuantizedLinear layers, in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    try:
        settings = json.loads((directory / CONFIG_FILE).read_text())
        config = AutoConfig.from_pretrained(directory)
        state = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, ValueError) as error:
        raise InvalidModelError(f"{directory} is not a kecil weight-only model ({error}): write one with kecil quantize --to int4") from None
    bits, group_size = settings["bits"], settings["group_size"]
    model = AutoModelForCausalLM.from_config(config)
    for parent, name, linear in linear_targets(model, group_size):
        setattr(parent, name, QuantizedLinear(linear.in_features, linear.out_features, bits=bits, group_size=group_size, bias=linear.bias is not None))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise InvalidModelError(f"{directory} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]}): save it again")
    if tied:
        model.tie_weights()
    model.kecil_weight_only = {"bits": bits, "group_size": group_size}
    return model.eval()
