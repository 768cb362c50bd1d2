"""The frozen base of a LoRA run: the device it trains on, the dtype it is held in (float32 or
bfloat16) and QLoRA's quantized weights."""

from __future__ import annotations

from kecil.errors import ConfigError


def tune_accelerator(device: str):
    """The accelerate Accelerator a run trains with, on `device` (--device: auto, cpu, cuda, cuda:N).

    One process normally; under `accelerate launch --multi_gpu` one per GPU (each takes its own,
    so only auto or cuda make sense there), or per CPU process over gloo when there is no GPU
    (accelerate only goes multi-CPU when told cpu=True)."""
    import os

    import torch
    from accelerate import Accelerator

    from kecil.infer.hardware import resolve_device
    from kecil.infer.requirements import require

    require("tune")  # a too-old transformers or peft fails here in one line, not at the first step
    chosen = resolve_device(device)  # a clear DeviceError when CUDA is asked for and absent
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched and chosen.type == "cuda" and ":" in device:
        raise ConfigError(f"--device {device} under accelerate launch: each process takes its own GPU, so pass --device cuda (or auto)")
    if chosen.type == "cuda" and not launched:
        torch.cuda.set_device(chosen)  # accelerate's single process uses the current CUDA device
    return Accelerator(cpu=chosen.type != "cuda")


def base_precision(requested: str, device=None) -> str:
    """The dtype the frozen base is held in on `device` (a torch.device; None = CUDA when there is
    one). bfloat16 halves its memory and runs the big matrix products on bf16 hardware; where bf16
    is only emulated it is slower than float32, so auto picks it only where the CUDA GPU or the CPU
    (AVX512-BF16/AMX) computes it natively: on a CPU the same choice as the embedders'."""
    import torch

    from kecil.infer.hardware import resolve_precision

    on_gpu = torch.cuda.is_available() if device is None else device.type == "cuda"
    if requested == "auto" and on_gpu:
        with torch.cuda.device(device):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return resolve_precision(requested)


def to_bfloat16_base(model):
    """Hold the frozen model in bfloat16, but project to the vocabulary in float32: the logits feed
    the loss, and bfloat16's 8-bit mantissa would round a logit of 20 by ±0.06. peft then keeps
    the LoRA matrices in float32 (its autocast_adapter_dtype); the fused forward computes with
    bfloat16 copies of them, so the activations stay bfloat16."""
    import torch

    from kecil.tune.fused_lora import Float32Projection

    head = model.get_output_embeddings()
    # The float32 head weight is kept as it is (frozen, so it never goes stale) rather than cast up
    # on every step: that cast was a 100 MB copy per step for a 49k-word vocabulary.
    projection = Float32Projection(head.weight, head.bias)
    model.to(torch.bfloat16)
    # A child of the head, so that moving the model (accelerate's prepare, .to(device)) moves the
    # float32 copy with it; called in place of the head's own forward.
    head.float32_projection = projection
    head.forward = projection.forward
    return model


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


def load_base(ref, *, device: str, threads: int | None, precision: str, base_bits: int | None, base_group_size: int,
              cut_length: int):
    """(accelerator, frozen base model, tokenizer, precision): the model in the dtype and form it trains in."""
    import warnings

    import torch

    # peft asks transformers a deprecated question on every wrap; the warning is not the user's business.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    from kecil.infer.load import physical_cores
    from kecil.infer.torch_backend import load_transformers
    from kecil.tune.packed_attention import use_packed_attention

    accelerator = tune_accelerator(device)  # one process, or one per GPU under `accelerate launch --multi_gpu`
    torch.set_num_threads(threads or max(1, physical_cores() // accelerator.num_processes))
    precision = base_precision(precision, accelerator.device)
    # A bfloat16 base on a GPU is loaded there in bfloat16; a float32 one in float32 on the CPU (prepare moves it).
    model, tokenizer = load_transformers(ref, accelerator.device if precision == "bfloat16" else None)
    if precision == "bfloat16":
        model = to_bfloat16_base(model)
    if base_bits:
        model = quantize_base(model, base_bits, base_group_size)
    use_packed_attention(model, cut_length)
    return accelerator, model, tokenizer, precision
