"""Measuring a model in a fresh process: size on disk, peak RAM, load time, prompt and decode speed, and optionally perplexity.

A fresh process so the peak resident memory belongs to this model alone: not to an evaluation
that loaded other models before it, nor to a quantization whose calibration held a float copy in
torch. `kecil eval`'s system figures, `kecil quantize`'s report and `kecil fit` all measure here.
`fill_context` makes the prompt fill the window so the peak includes a full KV cache (what
`kecil fit` needs). The child reports progress and its result as JSON lines on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kecil import errors
from kecil.errors import BackendError, KecilError

WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")
SENTENCE = "The quick brown fox jumps over the lazy dog while the small model counts tokens. "
Progress = Callable[[int, int], None]  # (done, total) perplexity chunks


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
    perplexity: float | None = None  # of `perplexity_text`, when one was given
    perplexity_tokens: int = 0


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
    perplexity_text: str | None = None,
    perplexity_context: int = 512,
    timeout: float | None = 900.0,
    progress: Progress | None = None,
) -> SystemFigures:
    """Load `model` in a new process, score `perplexity_text` if given (llama.cpp's method, windows of
    `perplexity_context` tokens), run one prompt and decode, and report the figures."""
    request = dict(model=model, backend=backend, context=context, threads=threads, prompt_tokens=prompt_tokens,
                   decode_tokens=decode_tokens, fill_context=fill_context, perplexity_text=perplexity_text,
                   perplexity_context=perplexity_context)  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # stderr to a file: a chatty child must never block on a full pipe while stdout is being read.
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "kecil.infer.measure"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            text=True, env=env,
        )  # fmt: skip
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            child.kill()

        timer = threading.Timer(timeout, stop) if timeout else None
        if timer:
            timer.start()
        try:
            child.stdin.write(json.dumps(request))
            child.stdin.close()
            result = None
            for line in child.stdout:
                message = json.loads(line) if line.startswith("{") else {}
                if "progress" in message and progress:
                    progress(*message["progress"])
                elif "figures" in message or "error" in message:
                    result = message
            returncode = child.wait()
        finally:
            if timer:
                timer.cancel()
            if child.poll() is None:  # the caller was interrupted: the child must not outlive it
                child.kill()
                child.wait()
        if timed_out.is_set():
            raise BackendError(f"measuring {model} took longer than {timeout:.0f} s: try a smaller --context")
        if result and "error" in result:
            raise _rebuilt(result)
        if returncode != 0 or not result:
            stderr.seek(0)
            reason = (stderr.read().strip().splitlines() or ["no output"])[-1]
            raise BackendError(f"measuring {model} in a subprocess failed ({reason})")
    return SystemFigures(**result["figures"])


def _rebuilt(result: dict) -> KecilError:
    """The child's error, as the same class when it is built from a message alone."""
    kind = getattr(errors, str(result.get("kind")), None)
    if isinstance(kind, type) and issubclass(kind, KecilError):
        try:
            return kind(result["error"])
        except TypeError:  # e.g. PromptTooLongError, built from numbers
            pass
    return BackendError(result["error"])


def _probe(model: str, backend, context, threads, prompt_tokens: int, decode_tokens: int, fill_context: bool,
           perplexity_text: str | None = None, perplexity_context: int = 512) -> SystemFigures:  # fmt: skip
    from time import perf_counter

    from kecil.infer.generation import GenerationConfig, collect
    from kecil.infer.load import load_model
    from kecil.infer.scoring import perplexity

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
        # the peak of running the model, read before scoring: perplexity's full-vocabulary float64
        # rows (log-softmax over 49k tokens per position) are the scorer's memory, not the model's
        peak = peak_rss_bytes()
        scored = None
        if perplexity_text is not None:
            scored = perplexity(engine, perplexity_text, context=perplexity_context, progress=_report_progress)
        return SystemFigures(
            backend=engine.name,
            context=engine.context_length,
            size_bytes=size_on_disk(engine.ref.path),
            peak_rss_bytes=peak,
            load_seconds=load_seconds,
            prompt_tokens=timings.prompt_tokens,
            prompt_tokens_per_second=timings.prompt_tokens_per_second,
            decode_tokens=timings.decode_tokens,
            decode_tokens_per_second=timings.decode_tokens_per_second,
            perplexity=scored.perplexity if scored else None,
            perplexity_tokens=scored.tokens if scored else 0,
        )


def _report_progress(done: int, total: int) -> None:
    print(json.dumps({"progress": [done, total]}), flush=True)


def proc_bytes(path: str, key: str) -> int | None:
    """A "KEY:   N kB" figure of a /proc file (meminfo, status) in bytes, or None where unreadable."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent through fork and exec, so a child of a big process would report the parent's."""
    import resource

    peak = proc_bytes("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


if __name__ == "__main__":
    try:
        figures = _probe(**json.loads(sys.stdin.read()))
        print(json.dumps({"figures": asdict(figures)}), flush=True)
    except KecilError as exc:
        print(json.dumps({"error": str(exc), "kind": type(exc).__name__}), flush=True)
        sys.exit(1)
