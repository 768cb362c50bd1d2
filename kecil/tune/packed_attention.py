"""Attention over packed rows, computed per example instead of over the whole row with a mask.

A packed row holds several examples that must not see each other (kecil/tune/packing.py).
transformers expresses that as a block-diagonal mask over the whole row, so attention costs
row-length² per row whatever the examples, and the mask sends SDPA down its masked path. Here
each example becomes a sequence of its own (padded to the longest example of the micro-batch) and
runs through SDPA's plain causal kernel — the FlashAttention idea of variable-length batches,
https://arxiv.org/abs/2307.08691, done with torch's own kernel. On a CPU with a bfloat16 base,
attention then runs in float32: torch's bfloat16 flash-attention backward measured 4.5 ms for a
256-token row of SmolLM2-135M (9 heads), the float32 one 1.4 ms for the same row as 4 examples.

The segments are read from the position ids, which restart at 0 for every example: the same
signal transformers uses for packed rows. Used only for training (tune), registered with
transformers' AttentionInterface under ATTENTION_NAME.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION_NAME = "kecil_packed"


class _Plan:
    """Where every token of a micro-batch goes when its examples become separate sequences."""

    def __init__(self, position_ids: torch.Tensor):
        rows, width = position_ids.shape
        starts = [(b, s) for b in range(rows) for s in (position_ids[b] == 0).nonzero().flatten().tolist()]
        segments = []  # (first flat token, length)
        for n, (b, s) in enumerate(starts):
            end = starts[n + 1][1] if n + 1 < len(starts) and starts[n + 1][0] == b else width
            segments.append((b * width + s, end - s))
        self.longest = max(length for _, length in segments)
        self.count = len(segments)
        # cost of a full causal row against one per example: choose the cheaper
        self.worth_it = self.count * self.longest**2 < rows * width**2
        if self.worth_it:
            slot = torch.arange(self.longest)
            # Slots past an example's end repeat its last token: as keys they lie after every real
            # query (causal attention never reads them); as queries their output is dropped.
            self.gather = torch.cat([first + slot.clamp(max=length - 1) for first, length in segments])
            self.scatter = torch.cat([n * self.longest + torch.arange(length) for n, (_, length) in enumerate(segments)])
        else:  # the block-diagonal causal mask over whole rows, (rows, 1, width, width)
            same = torch.cumsum(position_ids == 0, dim=1)  # example number of each token
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            self.mask = ((same[:, :, None] == same[:, None, :]) & causal)[:, None]


_cache: dict[str, object] = {"position_ids": None, "plan": None}


def _plan_for(position_ids: torch.Tensor, batch: int) -> _Plan:
    # Every layer of one forward gets the same position_ids tensor: the plan (and any mask) is made
    # once, keyed by that tensor (an expand() of it would be a new tensor in every layer), from the
    # CPU copy prepare_packed_rows was given where there is one, else read back from the device.
    if _cache["position_ids"] is not position_ids:
        _cache["position_ids"], _cache["plan"] = position_ids, _Plan(position_ids.expand(batch, -1).cpu())
    return _cache["plan"]


def prepare_packed_rows(model, host_position_ids: torch.Tensor, position_ids: torch.Tensor) -> None:
    """Plan the micro-batch whose position ids the model is about to get (`position_ids`, on its
    device) from their CPU copy, so no layer reads them back from a GPU (a wait per forward pass),
    and a model on the meta device (tests/same_device.py) trains too. No-op without packed attention."""
    base = getattr(model, "module", model)  # DDP's wrapper
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # peft's
    if getattr(base.config, "_attn_implementation", None) == ATTENTION_NAME:
        _cache["position_ids"], _cache["plan"] = position_ids, _Plan(host_position_ids)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention signature: query (batch, heads, length, dim), key/value
    (batch, kv_heads, length, dim); returns ((batch, length, heads, dim), None)."""
    position_ids = kwargs.get("position_ids")
    if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        raise RuntimeError("packed attention is for training on packed rows: call the model with position_ids, no mask, no cache")
    batch, heads, length, dim = query.shape
    plan = _plan_for(position_ids, batch)
    dtype = query.dtype
    compute = torch.float32 if dtype == torch.bfloat16 and query.device.type == "cpu" else dtype
    if not plan.worth_it:  # a few long examples: one masked pass over each row is cheaper
        out = F.scaled_dot_product_attention(
            query.to(compute), key.to(compute), value.to(compute), attn_mask=plan.mask.to(query.device), dropout_p=dropout,
            scale=scaling, enable_gqa=key.shape[1] != heads,
        )
        return out.to(dtype).transpose(1, 2).contiguous(), None
    gather = plan.gather.to(query.device)

    def by_example(states):  # (batch, h, length, dim) -> (examples, h, longest, dim)
        tokens = states.transpose(1, 2).reshape(batch * length, states.shape[1], dim)
        picked = tokens.index_select(0, gather).to(compute)
        return picked.view(plan.count, plan.longest, states.shape[1], dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        by_example(query), by_example(key), by_example(value), is_causal=True, dropout_p=dropout, scale=scaling,
        enable_gqa=key.shape[1] != heads,
    )
    out = out.transpose(1, 2).reshape(plan.count * plan.longest, heads, dim)
    return out.index_select(0, plan.scatter.to(query.device)).to(dtype).view(batch, length, heads, dim), None


def use_packed_attention(model, max_length: int) -> bool:
    """Switch `model` (a transformers causal LM, or peft's wrapper of one) to packed attention
    when its attention is plain scaled dot-product attention: no logit soft-capping, no sliding
    window shorter than a row. Returns whether it did."""
    from transformers import AttentionInterface

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    if getattr(config, "attn_logit_softcapping", None) or (getattr(config, "sliding_window", None) or max_length) < max_length:
        return False
    if getattr(config, "attention_dropout", 0.0):
        return False
    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    base.set_attn_implementation(ATTENTION_NAME)
    return True
