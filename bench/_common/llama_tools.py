"""llama.cpp's own tools (llama-bench above all), built once into kecil's cache and run from there.

They are the anchor for kecil's numbers: the same ggml sources and build flags as the
llama-cpp-python that kecil uses, without any Python in the loop.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from _common.isolation import IsolatedRun, run_isolated

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # must match the Makefile's LLAMA_CPP_PYTHON
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "build_llama_tools.sh"


def tools_bin() -> Path:
    cache = Path(os.environ.get("KECIL_HOME") or Path.home() / ".cache" / "kecil")
    return cache / "llama.cpp-tools" / LLAMA_CPP_PYTHON_VERSION / "bin"


def ensure_tools(build: bool) -> Path | None:
    """The tools' directory, building them first (10-15 minutes) if they are missing and
    `build` is true; None when they are missing and not built."""
    if (tools_bin() / "llama-bench").exists():
        return tools_bin()
    if not build:
        return None
    print(
        f"building llama.cpp's tools into {tools_bin()} (10-15 minutes, once) ...",
        file=sys.stderr,
        flush=True,
    )
    # The build log goes to stderr so stdout keeps only JSON lines.
    try:
        subprocess.run(["bash", str(BUILD_SCRIPT), LLAMA_CPP_PYTHON_VERSION], check=True, stdout=sys.stderr)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{BUILD_SCRIPT.name} failed with exit code {exc.returncode} (its log is above)") from None
    return tools_bin()


def run_llama_bench(
    bin_dir: Path, model: Path, *, prompt_tokens: int, new_tokens: int, depths: list[int], threads: int,
    repetitions: int, timeout: float,
) -> tuple[list[dict], str | None, IsolatedRun]:
    """Run llama-bench once for pp<prompt_tokens> and tg<new_tokens> at each depth; returns its
    JSON test records, the CPU variant library it loaded, and the process record (for peak RSS)."""
    cmd = [
        str(bin_dir / "llama-bench"), "-m", str(model),
        "-p", str(prompt_tokens), "-n", str(new_tokens), "-d", ",".join(map(str, depths)),
        "-t", str(threads), "-r", str(repetitions), "-o", "json",
    ]  # fmt: skip
    run = run_isolated(cmd, timeout=timeout)
    if run.returncode == -signal.SIGILL:
        raise RuntimeError(
            f"llama-bench died of an illegal instruction in {cpu_variant(run.stderr)}: move that "
            f"libggml-cpu-*.so out of {bin_dir} (the AMX variant is set aside for this reason)"
        )
    if run.returncode != 0:
        raise RuntimeError(f"llama-bench exited with {run.returncode}: {last_line(run.stderr)}")
    return json.loads(run.stdout), cpu_variant(run.stderr), run


def cpu_variant(text: str) -> str | None:
    """The ggml CPU variant named in a loader message or a /proc/self/maps listing."""
    found = re.findall(r"libggml-cpu-([\w-]+?)\.so", text)
    return found[-1] if found else None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
