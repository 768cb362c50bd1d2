"""Facts about the machine a model runs on: how many threads to use and which float precision the CPU computes natively.

Every floor above asks here (infer's loaders, compress, tune, eval, the benchmarks), so a rule such
as "one thread per physical core" is written once.
"""

from __future__ import annotations

import os

from kecil.errors import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16")


def physical_cores() -> int:
    """Physical cores: llama.cpp and torch both run best with one thread per core (a hyper-thread
    shares the core's vector units, so a second thread on it adds contention, not speed)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def threads_for_now() -> int:
    """Threads for a job that was not told how many: one per physical core, or one when the CPU is
    already busy (load above the core count). llama.cpp's and torch's workers wait for each other by
    spinning, so on a 2-core machine running other jobs 16 greedy answers of SmolLM2-135M took 42 s
    on 2 threads and 8.8 s on 1 (tune's replay answers; quantize measured the same for torch)."""
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = physical_cores()
    return 1 if busy > cores else cores


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16). Elsewhere
    torch emulates bfloat16 through float32, which is slower than float32 itself."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str) -> str:
    """The dtype a CPU model computes in for a requested precision: auto = bfloat16 where the CPU
    multiplies it natively, float32 elsewhere (the embedders; tune's frozen base on a CPU)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return precision


# --device: where a torch model runs. auto = the CUDA GPU when torch sees one, else the CPU.
DEVICE_HELP = "Where the torch model runs: auto (the CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N."


def device_field():
    """The `device` field every config that loads a torch model declares, so --device reads the same everywhere."""
    from dataclasses import field

    return field(default="auto", metadata={"help": DEVICE_HELP, "metavar": "auto|cpu|cuda|cuda:N"})


def check_device_name(device: str) -> None:
    """Refuse a device name that is none of auto, cpu, cuda, cuda:N, without importing torch (configs call it)."""
    name = device.strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return
    raise ConfigError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N (N the GPU's index, from 0)")


def resolve_device(device: str = "auto"):
    """The torch.device for a --device value; a DeviceError when CUDA is asked for and torch sees none."""
    import torch

    from kecil.errors import DeviceError

    check_device_name(device)
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
        raise DeviceError(f"--device {device}: torch {torch.__version__.split('+')[0]} finds no CUDA GPU ({build}); "
                          "pass --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU")
    index = int(name[5:]) if ":" in name else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"numbered 0 to {torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def half_dtype(device):
    """The half-precision dtype a model computes in on `device` (a CUDA torch.device): bfloat16 where
    the GPU supports it (Ampere on), else float16. A model on a GPU is never widened to float32:
    that doubles its memory and halves its speed for no accuracy a pretrained model can use."""
    import torch

    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
