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
