"""Running one measurement in its own process, so peak memory belongs to that engine alone."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class IsolatedRun:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mib: float  # the child's own high-water mark, from the kernel's rusage
    wall_seconds: float


def run_isolated(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> IsolatedRun:
    """Run `cmd` to completion and return its output and peak RSS.

    os.wait4 gives the rusage of exactly this child; RUSAGE_CHILDREN would report the largest
    of all children this process ever waited for, mixing engines together. The output goes to
    temporary files because Popen.communicate would reap the child before wait4 could.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode == -9 and wall >= timeout:
        stderr += f"\ntimed out after {timeout:.0f}s"
    # ru_maxrss is in KiB on Linux.
    return IsolatedRun(proc.returncode, stdout, stderr, usage.ru_maxrss / 1024, wall)
