"""Which ggml type each tensor gets for a llama.cpp file type (q4_k_m, q3_k_m, ...).

The "_M" mixes give the most sensitive tensors more bits (the output matrix, half of attn_v
and ffn_down, ...). kecil follows llama.cpp's own policy (`llama_tensor_get_type` in
src/llama-quant.cpp) so that a kecil file and a `llama-quantize` file of the same type have the
same layout and size, and any quality difference comes from how the weights were rounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf.constants import GGMLQuantizationType as T
from gguf.constants import LlamaFileType as F

from kecil.errors import ConfigError


@dataclass(frozen=True)
class QuantType:
    """A file type kecil can write."""

    name: str
    file_type: F
    default: T  # the type most 2-D tensors get
    bits: float  # rough bits per weight, for messages


QUANT_TYPES: dict[str, QuantType] = {
    q.name: q
    for q in (
        QuantType("f16", F.MOSTLY_F16, T.F16, 16),
        QuantType("q8_0", F.MOSTLY_Q8_0, T.Q8_0, 8.5),
        QuantType("q6_k", F.MOSTLY_Q6_K, T.Q6_K, 6.56),
        QuantType("q5_k_m", F.MOSTLY_Q5_K_M, T.Q5_K, 5.69),
        QuantType("q4_k_m", F.MOSTLY_Q4_K_M, T.Q4_K, 4.89),
        QuantType("q4_0", F.MOSTLY_Q4_0, T.Q4_0, 4.5),
        QuantType("q3_k_m", F.MOSTLY_Q3_K_M, T.Q3_K, 3.91),
        QuantType("q2_k", F.MOSTLY_Q2_K, T.Q2_K, 3.35),
    )
}
FLOAT_TYPES = frozenset({T.F32, T.F16, T.BF16})
_BLOCK = {T.Q4_0: 32, T.Q4_1: 32, T.Q5_0: 32, T.Q5_1: 32, T.Q8_0: 32, T.Q2_K: 256, T.Q3_K: 256, T.Q4_K: 256, T.Q5_K: 256, T.Q6_K: 256}
# A tensor whose rows do not split into the type's blocks falls back to a 32-block type.
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def quant_type(name: str) -> QuantType:
    """The QuantType called `name` (case-insensitive), or a ConfigError listing the choices."""
    found = QUANT_TYPES.get(name.strip().lower())
    if found is None:
        raise ConfigError(f"unknown quantization type {name!r}; pick one of: {', '.join(QUANT_TYPES)}")
    return found


def layer_of(name: str) -> int:
    match = _LAYER.match(name)
    return int(match.group(1)) if match else -1


def tensor_order(name: str) -> tuple[int, str]:
    """llama.cpp's tensor order (by layer, then name): the policy counts tensors in this order."""
    return layer_of(name), name


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """Only 2-D weight matrices are quantized; norms, biases and 1-D tensors keep their type."""
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name and "ffn_gate_inp.weight" not in name


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, category in (
        ("attn_qkv.weight", "attn_qkv"), ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"),
    ):  # fmt: skip
        if key in name:
            return category
    return "other"


def _more_bits(i: int, n: int) -> bool:
    # the first and last eighth of the layers, and every third layer between
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def choose_types(
    tensors: list[tuple[str, tuple[int, ...], T]], qtype: QuantType, *, n_layers: int, n_gqa: int, has_imatrix: bool = False
) -> dict[str, T]:
    """Target type of every tensor. `tensors` holds (name, ggml shape with columns first, current type).

    `has_imatrix` matters for q4_0 only, as in llama.cpp: the first eighth of ffn_down gets q4_1.
    """
    names = {name for name, _, _ in tensors}
    tied = "output.weight" not in names
    ordered = sorted(tensors, key=lambda t: tensor_order(t[0]))
    n_attn_v = sum(1 for name, _, _ in ordered if _category(name) in ("attn_v", "attn_qkv"))
    counters = {"attn_v": 0, "ffn_down": 0}
    chosen: dict[str, T] = {}
    for name, shape, current in ordered:
        torch_shape = tuple(reversed(shape))
        if not allows_quantization(name, torch_shape):
            chosen[name] = current
            continue
        new = qtype.default
        if new not in FLOAT_TYPES:
            new = _mix(name, shape[0], new, qtype.file_type, tied, counters, n_attn_v, n_layers, n_gqa, has_imatrix)
            new = _fit_block(new, shape[0])
        chosen[name] = new
    return chosen


def _mix(
    name: str, n_cols: int, new: T, ftype: F, tied: bool, counters: dict[str, int], n_attn_v: int, n_layers: int, n_gqa: int,
    has_imatrix: bool,
) -> T:
    category = _category(name)
    if category == "output" or (tied and category == "token_embd"):
        if n_cols % _BLOCK.get(new, 1):
            return T.Q8_0
        return new if new == T.Q8_0 else T.Q6_K
    if category in ("attn_v", "attn_qkv"):
        i = counters["attn_v"]
        counters["attn_v"] += 1
        if category == "attn_qkv":
            return {F.MOSTLY_Q3_K_M: T.Q4_K, F.MOSTLY_Q4_K_M: T.Q5_K, F.MOSTLY_Q5_K_M: T.Q6_K}.get(ftype, new)
        if ftype == F.MOSTLY_Q2_K:
            return T.Q4_K if n_gqa >= 4 else T.Q3_K
        if ftype == F.MOSTLY_Q3_K_M:
            return T.Q5_K if i < 2 else T.Q4_K
        if ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _more_bits(i, n_attn_v):
            return T.Q6_K
        return new
    if category == "ffn_down":
        i = counters["ffn_down"]
        counters["ffn_down"] += 1
        if ftype == F.MOSTLY_Q2_K:
            return T.Q3_K
        if ftype == F.MOSTLY_Q3_K_M:
            return T.Q5_K if i < n_layers // 16 else T.Q4_K
        if ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _more_bits(i, n_layers):
            return T.Q6_K
        if ftype == F.MOSTLY_Q4_0 and has_imatrix and i < n_layers // 8:
            return T.Q4_1  # llama.cpp guards the first ffn_down layers of an imatrix q4_0 the same way
        return new
    if category == "attn_output":
        return {F.MOSTLY_Q2_K: T.Q3_K, F.MOSTLY_Q3_K_M: T.Q4_K}.get(ftype, new)
    return new


def _fit_block(new: T, n_cols: int) -> T:
    if n_cols % _BLOCK.get(new, 1) == 0:
        return new
    fallback = _FALLBACK.get(new, new)
    return fallback if n_cols % _BLOCK.get(fallback, 1) == 0 else T.F16
