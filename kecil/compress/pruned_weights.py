"""Cutting a model down to a smaller uniform shape: its config, and its weights sliced to keep
the heads, neurons and channels (or layers) that pruning chose (kecil/compress/prune.py)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kecil.errors import InvalidModelError


@dataclass(frozen=True)
class Shape:
    """The widths that change: the same in every layer."""

    layers: int
    heads: int  # query heads
    kv_heads: int
    intermediate: int
    hidden: int


def model_shape(config) -> Shape:
    heads = config.num_attention_heads
    return Shape(config.num_hidden_layers, heads, getattr(config, "num_key_value_heads", None) or heads,
                 config.intermediate_size, config.hidden_size)  # fmt: skip



def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def reshaped(config, shape: Shape):
    import copy

    new = copy.deepcopy(config)
    new.head_dim = head_dim_of(config)  # explicit: heads x head_dim no longer equals the hidden size
    new.num_hidden_layers, new.num_attention_heads, new.num_key_value_heads = shape.layers, shape.heads, shape.kv_heads
    new.intermediate_size, new.hidden_size = shape.intermediate, shape.hidden
    return new


def _top(scores, keep: int):
    import torch

    return torch.sort(torch.topk(scores, keep).indices).values


def narrow(model, shape: Shape, scores: dict):
    """(the new config, the state dict cut to `shape`) keeping the most important of each."""
    import torch

    old = model_shape(model.config)
    head_dim, group, new_group = head_dim_of(model.config), old.heads // old.kv_heads, shape.heads // shape.kv_heads
    channels = _top(scores["channels"], shape.hidden)
    per_layer = []
    for i in range(old.layers):
        heads = scores["heads"][i]
        if shape.kv_heads == old.kv_heads:  # the best `new_group` query heads of each KV group
            q = torch.cat([k * group + _top(heads[k * group : (k + 1) * group], new_group) for k in range(old.kv_heads)])
            kv = torch.arange(old.kv_heads)
        else:  # group size 1: a head and its KV head go together
            kv = q = _top(heads, shape.heads)
        per_layer.append((_rows(q, head_dim), _rows(kv, head_dim), _top(scores["neurons"][i], shape.intermediate)))
    scale = math.sqrt(shape.hidden / old.hidden)  # see _gemma_post_norm
    rescale = shape.hidden != old.hidden and hasattr(model.get_input_embeddings(), "embed_scale")
    state = {}
    for name, w in model.state_dict().items():
        match = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
        if not match:
            state[name] = _cut_outer(name, w, channels, old)
            continue
        q, kv, neurons = per_layer[int(match.group(1))]
        cut = _cut_layer(match.group(2), w, q, kv, neurons, channels, old, head_dim)
        if rescale and re.search(r"post_(attention|feedforward)_layernorm\.weight$", name):
            cut = _gemma_post_norm(cut, scale)
        state[name] = cut
    return reshaped(model.config, shape), state


def _gemma_post_norm(weight, scale: float):
    """Gemma multiplies the embedding by sqrt(hidden size), which shrinks with the hidden width.
    Every read of the residual stream goes through an RMSNorm, which ignores a common scale, so
    scaling what each layer adds to the stream by the same factor keeps the model's function:
    Gemma's norms multiply by (1 + weight)."""
    return scale * (1 + weight) - 1


def _rows(heads, head_dim: int):
    import torch

    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def _cut_layer(name: str, w, q, kv, neurons, channels, old: Shape, head_dim: int):
    import torch

    kind = name.rsplit(".", 1)[0].split(".")[-1]  # q_proj, gate_up_proj, input_layernorm ...
    is_weight = name.endswith(".weight")
    q_rows, kv_rows = old.heads * head_dim, old.kv_heads * head_dim
    rows = {
        "q_proj": q, "k_proj": kv, "v_proj": kv, "gate_proj": neurons, "up_proj": neurons, "o_proj": channels, "down_proj": channels,
        "qkv_proj": torch.cat([q, q_rows + kv, q_rows + kv_rows + kv]),
        "gate_up_proj": torch.cat([neurons, old.intermediate + neurons]),
    }.get(kind)
    columns = {"o_proj": q, "down_proj": neurons}.get(kind, channels)
    if rows is not None:
        w = w[rows]
        return w[:, columns].contiguous() if is_weight and w.ndim == 2 else w.contiguous()
    if w.ndim == 1 and "norm" in kind:
        return w if w.shape[0] != old.hidden or kind in ("q_norm", "k_norm") else w[channels].contiguous()
    raise InvalidModelError(f"kecil does not know how to prune the tensor {name} ({tuple(w.shape)}) of this architecture")


def _cut_outer(name: str, w, channels, old: Shape):
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return w[:, channels].contiguous()
    if w.ndim == 1 and w.shape[0] == old.hidden and "norm" in name:
        return w[channels].contiguous()
    raise InvalidModelError(f"kecil does not know how to prune the tensor {name} ({tuple(w.shape)}) of this architecture")


def drop_layers(model, removed: list[int]):
    """(the new config, the state dict without the `removed` layers, the rest renumbered)."""
    import copy

    old = model_shape(model.config)
    kept = [i for i in range(old.layers) if i not in set(removed)]
    new_index = {old_i: new_i for new_i, old_i in enumerate(kept)}
    state = {}
    for name, w in model.state_dict().items():
        match = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
        if not match:
            state[name] = w
        elif int(match.group(1)) in new_index:
            state[f"model.layers.{new_index[int(match.group(1))]}.{match.group(2)}"] = w
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):  # Gemma 3 and Qwen2 keep each layer's attention kind (sliding or full)
        config.layer_types = [config.layer_types[i] for i in kept]
    return config, state


def build(config, state: dict):
    """The pruned model, loaded strictly: a tensor whose shape the new config does not expect fails here, not in the user's hands."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise InvalidModelError(f"the pruned weights do not fit the pruned config (missing {missing[:3]}, unexpected {unexpected[:3]}): please report this")
    if tied:
        model.tie_weights()
    return model.eval()
