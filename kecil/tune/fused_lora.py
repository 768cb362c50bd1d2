"""A faster LoRA training forward for CPUs: peft's maths in one autograd function per projection.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` (https://arxiv.org/abs/2106.09685)
as five tensor operations, each a pass over the activations, for each of the ~200 adapted
projections of a small model. On a CPU that element-wise work was half of a training step
(docs/benchmarks.md, bench/tune.py), and a third of it was drawing dropout's random floats:
torch's CPU generator makes one 32-bit draw per element. Here, per projection:

- the keep-mask comes from 16-bit slices of 64-bit draws (four elements per draw) of torch's own
  generator, so seeding and checkpointed RNG state work as before; the drop probability is
  rounded to a multiple of 1/65536 (0.05 becomes 0.0500031) and the survivors are scaled by the
  exact inverse of the rounded keep share, so the expectation is unchanged;
- the scale and the add fold into one `addmm`;
- backward keeps the input (which q/k/v, and gate/up, share: saved once, not one dropped copy per
  projection) and the mask as bytes, and recomputes the dropped input, so activations take less
  memory as well;
- the mask is applied by multiplying with 0/1 bytes: torch's CPU kernels for boolean masks
  (`where`, `masked_fill`, `~`) are not vectorised, and took 80 µs on a (256, 576) bfloat16
  input where the multiplication takes 30.

Only the forward changes: modules, parameter names, saved adapters, merging and export stay
peft's. Anything this path does not cover (a merged or disabled adapter, several adapters, DoRA
and other variants, an input whose dtype differs from the adapter's, as with a bfloat16 base)
runs peft's own forward.
"""

from __future__ import annotations

import types

import torch

_LEVELS = 1 << 16  # 16-bit random integers


def keep_mask(shape: torch.Size, p: float, device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """A uint8 mask of `shape` on `device` (the input's), 1 where an element is kept (probability
    ~1-p), and that probability."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)  # the full 64 bits
    draws = words.view(torch.int16)[:n].view(shape)
    kept_levels = round((1.0 - p) * _LEVELS)
    return (draws >= (_LEVELS // 2 - kept_levels)).view(torch.uint8), kept_levels / _LEVELS


def _dropped(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """x as (tokens, features), with the dropped elements zeroed."""
    flat_x = x.reshape(-1, x.shape[-1])
    return flat_x if keep is None else flat_x * keep.reshape(flat_x.shape)


class _LoraDelta(torch.autograd.Function):
    """out = base_out + scale · ((x ⊙ keep) Aᵀ) Bᵀ, where `scale` already holds 1/keep-share."""

    @staticmethod
    def forward(ctx, base_out, x, weight_a, weight_b, keep, scale: float):
        hidden = _dropped(x, keep) @ weight_a.t()  # (tokens, rank): small, kept for B's gradient
        out = torch.addmm(base_out.reshape(-1, base_out.shape[-1]), hidden, weight_b.t(), alpha=scale)
        ctx.save_for_backward(x, weight_a, weight_b, keep, hidden)
        ctx.scale = scale
        return out.view(base_out.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight_a, weight_b, keep, hidden = ctx.saved_tensors
        need_base, need_x, need_a, need_b = ctx.needs_input_grad[:4]
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden = (grad @ weight_b).mul_(ctx.scale)
        grad_a = grad_b = grad_x = None
        if need_b:
            grad_b = (grad.t() @ hidden).mul_(ctx.scale)
        if need_a:
            grad_a = grad_hidden.t() @ _dropped(x, keep)  # recomputed rather than saved
        if need_x:
            grad_x = grad_hidden @ weight_a
            if keep is not None:
                grad_x.mul_(keep.reshape(grad_x.shape))
            grad_x = grad_x.view(x.shape)
        return (grad_out if need_base else None), grad_x, grad_a, grad_b, None, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapters = [a for a in self.active_adapters if a in self.lora_A]
    # args/kwargs include peft's adapter_names (mixed-adapter batches)
    if (
        self.disable_adapters or self.merged or len(adapters) != 1 or adapters[0] in self.lora_variant
        or args or kwargs or not x.is_floating_point()
    ):
        return self._peft_forward(x, *args, **kwargs)
    name = adapters[0]
    weight_a, weight_b = self.lora_A[name].weight, self.lora_B[name].weight
    base_out = self.base_layer(x)
    if x.dtype != base_out.dtype:  # a base layer that changes dtype (none of kecil's does)
        return self._peft_forward(x)
    if weight_a.dtype != x.dtype:
        # A bfloat16 base: the adapter computes in bfloat16 too (its float32 weights cast, a few
        # thousand numbers, not the activations), and autograd casts the gradients back.
        weight_a, weight_b = weight_a.to(x.dtype), weight_b.to(x.dtype)
    scale = float(self.scaling[name])
    p = getattr(self.lora_dropout[name], "p", 0.0)
    keep = None
    if self.training and p > 0:
        keep, kept_share = keep_mask(x.shape, p, x.device)
        scale /= kept_share
    return _LoraDelta.apply(base_out, x, weight_a, weight_b, keep, scale)


def use_fused_lora(model) -> int:
    """Give every peft LoRA linear of `model` the fused forward, in place; returns how many."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:  # subclasses (bnb, other backends) keep their own forward
            module._peft_forward = types.MethodType(Linear.forward, module)
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count


class Float32Projection(torch.nn.Module):
    """The vocabulary projection of a bfloat16 base in float32 (tune/base_model.py: to_bfloat16_base):
    a frozen float32 copy of the head's weight and bias, held as non-persistent buffers, so they
    move with the model (accelerate's prepare, .to(device)) and are never saved with it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        # .to() shares a float32 weight rather than copying it: the head's own is replaced by its
        # bfloat16 cast right after, so the float32 storage ends up held here alone.
        self.register_buffer("weight", weight.detach().to(torch.float32), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.float(), self.weight, self.bias)
