"""Each stage's wall time and peak RAM, for the build report.

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

from kecil.infer.measure import peak_rss_bytes

SAMPLE_SECONDS = 0.2


@dataclass
class Usage:
    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    joules: float | None = None  # the CPU packages' energy over the stage, where RAPL is readable; never estimated


def energy_microjoules() -> int | None:
    """The CPU packages' energy counters summed (Linux powercap/RAPL), or None where none is readable
    (most VMs, and a non-root user on recent kernels). A counter wraps at max_energy_range_uj; a
    stage shorter than one wrap (minutes at full load) reads correctly, and a wrapped reading is dropped."""
    total, found = 0, False
    for zone in Path("/sys/class/powercap").glob("intel-rapl:[0-9]*"):
        if zone.name.count(":") != 1:  # a package, not one of its sub-zones (counted within it)
            continue
        try:
            total += int((zone / "energy_uj").read_text())
            found = True
        except (OSError, ValueError):
            return None
    return total if found else None


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

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], _tree_rss(me))

    sampler = threading.Thread(target=sample, name="kecil-build-rss", daemon=True)
    energy = energy_microjoules()
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
        after = energy_microjoules() if energy is not None else None
        if after is not None and after >= energy:
            usage.joules = (after - energy) / 1e6
