"""System figures of a model, measured in a fresh subprocess: size on disk, peak RAM, load time,
prompt and decode speed.

A subprocess so the peak resident memory (ru_maxrss) belongs to this model alone, not to the
evaluation that loaded other models before it; `fill_context` makes the prompt fill the window
so the measured peak includes a full KV cache (what `kecil fit` needs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from kecil.errors import BackendError

WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")
SENTENCE = "The quick brown fox jumps over the lazy dog while the small model counts tokens. "


@dataclass(frozen=True)
class SystemFigures:
    backend: str
    context: int
    size_bytes: int
    peak_rss_bytes: int
    load_seconds: float
    prompt_tokens: int
    prompt_tokens_per_second: float
    decode_tokens: int
    decode_tokens_per_second: float


def size_on_disk(path: Path) -> int:
    """Bytes of the model's weights: the file, or a folder's weight files."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def measure(
    model: str,
    *,
    backend: str | None = None,
    context: int | None = None,
    threads: int | None = None,
    prompt_tokens: int = 128,
    decode_tokens: int = 64,
    fill_context: bool = False,
    timeout: float = 900.0,
) -> SystemFigures:
    """Load `model` in a new process, run one prompt and decode, and report the figures."""
    request = dict(model=model, backend=backend, context=context, threads=threads,
                   prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, fill_context=fill_context)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kecil.eval.system", json.dumps(request)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        raise BackendError(f"measuring {model} took longer than {timeout:.0f} s: try a smaller --context") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"measuring {model} in a subprocess failed ({reason})")
    return SystemFigures(**json.loads(lines[-1]))


def _probe(model: str, backend, context, threads, prompt_tokens: int, decode_tokens: int, fill_context: bool) -> SystemFigures:
    import resource
    from time import perf_counter

    from kecil.infer.generation import GenerationConfig, collect
    from kecil.infer.load import load_model

    started = perf_counter()
    engine = load_model(model, backend=backend, context_length=context, threads=threads)
    load_seconds = perf_counter() - started
    with engine:
        if fill_context:
            prompt_tokens = engine.context_length - decode_tokens
        unit = engine.tokenize(SENTENCE, add_bos=False)
        ids = engine.tokenize("", add_bos=engine.adds_bos)
        ids += unit * ((prompt_tokens - len(ids)) // len(unit) + 1)
        ids = ids[:prompt_tokens]
        config = GenerationConfig(temperature=0, max_tokens=decode_tokens, ignore_eos=True)
        timings = collect(engine.stream_ids(ids, config)).timings
        ref = engine.ref
        figures = SystemFigures(
            backend=engine.name,
            context=engine.context_length,
            size_bytes=size_on_disk(ref.path),
            peak_rss_bytes=peak_rss_bytes(resource),
            load_seconds=load_seconds,
            prompt_tokens=timings.prompt_tokens,
            prompt_tokens_per_second=timings.prompt_tokens_per_second,
            decode_tokens=timings.decode_tokens,
            decode_tokens_per_second=timings.decode_tokens_per_second,
        )
    return figures


def peak_rss_bytes(resource) -> int:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent through fork and exec, so a child of a big process would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


if __name__ == "__main__":
    from kecil.errors import KecilError

    try:
        print(json.dumps(asdict(_probe(**json.loads(sys.argv[1])))))
    except KecilError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)
