"""Each stage's wall time, peak RAM and energy (where the counters are readable), for the build report.

The process's own peak comes from the kernel (VmHWM in /proc/self/status), reset at the start of
each stage by writing 5 to /proc/self/clear_refs, so a stage is not charged with the peak of the
one before it. The stages also start processes of their own (kecil eval measures each model in a
fresh one), so a thread samples the resident memory of this process and its children together
(psutil) a few times a second; the report takes the larger of the two.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kecil.infer.measure import EnergyMeter, peak_rss_bytes

SAMPLE_SECONDS = 0.2
# The energy counters are read every few seconds: often enough to see each RAPL wrap (minutes at the
# least), seldom enough that NVML's start-up on every read costs nothing.
ENERGY_EVERY = 25


@dataclass
class Usage:
    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    joules: float | None = None  # the energy counters' rise over the stage (infer.measure), where readable; never estimated


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _tree_rss(process) -> int:
    import psutil

    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a child that ended between listing and reading
            pass
    return total


@contextmanager
def measured():
    """Yield a Usage filled in when the block ends (also when it raises)."""
    import psutil

    usage = Usage()
    reset = _reset_peak()
    me = psutil.Process()
    peak = [0]
    stop = threading.Event()
    meter = EnergyMeter()

    def sample() -> None:
        ticks = 0
        while not stop.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], _tree_rss(me))
            ticks += 1
            if meter.readable and ticks % ENERGY_EVERY == 0:
                meter.joules()

    sampler = threading.Thread(target=sample, name="kecil-build-rss", daemon=True)
    started = time.perf_counter()
    sampler.start()
    try:
        yield usage
    finally:
        stop.set()
        sampler.join()
        usage.seconds = time.perf_counter() - started
        kernel = peak_rss_bytes() if reset else None  # VmHWM since the reset
        peak[0] = max(peak[0], _tree_rss(me))
        usage.peak_rss_bytes = max(peak[0], kernel or 0) or None
        usage.joules = meter.joules()
