"""The frozen base of a LoRA run: the dtype it is held in (float32 or bfloat16) and QLoRA's quantized weights."""

from __future__ import annotations

from kecil.errors import ConfigError


def base_precision(requested: str) -> str:
    """The dtype the frozen base is held in. bfloat16 halves its memory and runs the big matrix
    products on bf16 hardware; where bf16 is only emulated it is slower than float32, so auto
    picks it only where the CUDA GPU or the CPU (AVX512-BF16/AMX) computes it natively: on a CPU
    the same choice as the embedders'."""
    import torch

    from kecil.infer.hardware import resolve_precision

    if requested == "auto" and torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return resolve_precision(requested)


def to_bfloat16_base(model):
    """Hold the frozen model in bfloat16, but project to the vocabulary in float32: the logits feed
    the loss, and bfloat16's 8-bit mantissa would round a logit of 20 by ±0.06. peft then keeps
    the LoRA matrices in float32 (its autocast_adapter_dtype); the fused forward computes with
    bfloat16 copies of them, so the activations stay bfloat16."""
    import functools

    import torch

    head = model.get_output_embeddings()
    # The float32 head weight is kept as it is (frozen, so it never goes stale) rather than cast up
    # on every step: that cast was a 100 MB copy per step for a 49k-word vocabulary.
    weight = head.weight.detach()
    bias = None if head.bias is None else head.bias.detach()
    model.to(torch.bfloat16)
    head.forward = functools.partial(_float32_projection, weight, bias)
    return model


def _float32_projection(weight, bias, hidden):
    import torch.nn.functional as F

    return F.linear(hidden.float(), weight, bias)


def quantize_base(model, bits: int, group_size: int):
    """QLoRA (https://arxiv.org/abs/2305.14314, with kecil's group-wise int4/int8 in place of NF4):
    the frozen block linears become QuantizedLinear layers, in place, before LoRA goes on them."""
    import gc

    from kecil.infer.quantized_linear import QuantizedLinear, linear_targets

    targets = linear_targets(model, group_size)
    if not targets:
        raise ConfigError(f"no linear layer of this model has a multiple of {group_size} input columns: pass a smaller --base-group-size")
    for parent, name, linear in targets:
        setattr(parent, name, QuantizedLinear.from_linear(linear, bits=bits, group_size=group_size))
    gc.collect()  # the float weights just replaced
    return model
