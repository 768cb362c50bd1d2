"""What the benchmarks run on: core count, CPU name, and how fast memory can be read."""

from __future__ import annotations

import platform
import time
from functools import cache

from kecil.infer.hardware import physical_cores  # noqa: F401  (the benchmarks' default thread count, as kecil's)


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_bandwidth_gb_per_s(threads: int, buffer_bytes: int, passes: int = 7) -> float:
    """Best-of-`passes` read bandwidth (GB/s, 1e9 bytes) of a multi-threaded sum over one buffer.

    A sum reads every byte once and writes nothing, which is what decoding does to the weights.
    The buffer is touched before timing so page faults are not counted.
    """
    import torch

    torch.set_num_threads(threads)
    buffer = torch.ones(buffer_bytes // 4, dtype=torch.float32)
    buffer.sum()
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best / 1e9
