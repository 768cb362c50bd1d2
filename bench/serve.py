"""Serving throughput and latency: kecil serve against llama.cpp's C++ llama-server and
llama-cpp-python's own server, same model, same requests, same machine, one run.

Each server runs in its own process on loopback with the embedded default model. For each
concurrency (1, 4 and 16 clients by default) every client streams chat completions back to back
for a fixed time: 64-token answers (ignore_eos where the server has it) to short questions, with
the same system prompt for all servers. Reported per (server, clients): total generated
tokens/s, time to first token p50/p95, requests completed and failed. Servers take turns within
each round (this VM drifts over minutes) and the value is the median over --rounds.

Results are JSON lines on stdout, a table on stderr. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common when run from anywhere

from _common.llama_tools import ensure_tools  # noqa: E402
from _common.machine import cpu_model, physical_cores  # noqa: E402
from _common.model import MODEL_NAME, default_gguf  # noqa: E402
from _common.report import emit, table  # noqa: E402

BENCH = "serve"
SERVERS = ("kecil", "llama-server", "llama-cpp-python")
SYSTEM = "You are a helpful assistant."  # sent explicitly, so every server builds the same prompt
QUESTIONS = (
    "Tell me about the history of the bicycle.", "Explain how rain forms.", "Describe a busy market in the morning.",
    "Write a short story about a lighthouse keeper.", "What makes a good teacher?", "Explain photosynthesis simply.",
    "Describe the journey of a river to the sea.", "Why do people enjoy music?",
)
SLOTS = 16  # parallel sequences for the servers that batch (llama-server -np 16, kecil --parallel 16)
CONTEXT_PER_SLOT = 512
LOG_HINT = "$KECIL_HOME/bench-serve/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, gguf: Path, threads: int, tools: Path | None, log_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    python = sys.executable
    if name == "kecil":
        cmd = [python, "-m", "kecil", "serve", str(gguf), "--port", str(port), "--parallel", str(SLOTS),
               "--context", str(CONTEXT_PER_SLOT), "--threads", str(threads), "--no-embeddings", "--max-queue", "256",
               "--audit-log", str(log_dir / "kecil-audit.jsonl")]
    elif name == "llama-server":
        cmd = [str(tools / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "-np", str(SLOTS), "-c", str(SLOTS * CONTEXT_PER_SLOT), "-t", str(threads), "-tb", str(threads),
               "-fa", "on", "--jinja", "--no-webui"]
    else:
        # This llama-cpp-python build keeps ggml's CPU kernels as run-time-chosen libraries that a plain
        # import does not find: register the variant kecil would pick (setup only, not the hot path).
        launcher = ("import runpy, sys; from kecil.infer.llamacpp_runtime import import_llama_cpp; import_llama_cpp(); "
                    "sys.argv = ['llama_cpp.server'] + sys.argv[1:]; runpy.run_module('llama_cpp.server', run_name='__main__')")
        cmd = [python, "-c", launcher, "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", str(CONTEXT_PER_SLOT * 4), "--n_threads", str(threads), "--n_threads_batch", str(threads)]
    log = open(log_dir / f"{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, proc: subprocess.Popen, model: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see its log in {LOG_HINT}")
            try:
                r = await client.post(url + "/v1/chat/completions", json=request_body(model, 0, 4, stream=False))
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError("server did not answer in time")


def request_body(model: str, n: int, max_tokens: int, stream: bool = True) -> dict:
    body = {
        "model": model, "stream": stream, "max_tokens": max_tokens, "temperature": 0.7, "seed": n, "ignore_eos": True,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def one_request(client, url: str, model: str, n: int, max_tokens: int) -> tuple[float, int]:
    """(time to first token, tokens generated) of one streamed chat completion; raises on failure."""
    started = time.perf_counter()
    first, chunks, usage = None, 0, None
    async with client.stream("POST", url + "/v1/chat/completions", json=request_body(model, n, max_tokens)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(str(event["error"])[:200])
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    first = first or time.perf_counter()
    if first is None:
        raise RuntimeError("no tokens streamed")
    return first - started, usage if usage is not None else chunks


async def load(url: str, model: str, clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    ttfts: list[float] = []
    tokens = completed = failed = 0
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(w: int) -> None:
            nonlocal tokens, completed, failed
            n = w
            while time.perf_counter() < deadline:
                try:
                    ttft, got = await one_request(client, url, model, n, max_tokens)
                    ttfts.append(ttft)
                    tokens += got
                    completed += 1
                except Exception as exc:  # counted, and the reason kept for the report
                    failed += 1
                    errors.append(f"{type(exc).__name__}: {exc}")
                n += clients

        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - started  # in-flight requests finish and count
    ttfts.sort()
    return {
        "tokens_per_s": tokens / elapsed, "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
        "completed": completed, "failed": failed, "tokens": tokens, "seconds": elapsed, "errors": errors[:3],
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ", ".join(SERVERS))
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=20, help="load time per (server, clients) per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-build", action="store_true", help="skip llama-server when its build is missing")
    args = parser.parse_args(argv)

    threads = args.threads or physical_cores()
    servers = args.servers.split(",")
    levels = [int(c) for c in args.clients.split(",")]
    gguf = default_gguf()
    tools = ensure_tools(build=not args.no_build) if "llama-server" in servers else None
    if "llama-server" in servers and tools is None:
        servers.remove("llama-server")
    log_dir = Path(os.environ.get("KECIL_HOME") or Path.home() / ".cache" / "kecil") / "bench-serve"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"{BENCH}: {MODEL_NAME} ({gguf.name}) on {cpu_model()}, {threads} threads, {args.seconds:g} s per run, "
          f"{args.rounds} rounds; server logs in {log_dir}", file=sys.stderr, flush=True)

    running = {}
    try:
        for name in servers:  # all up at once; an idle server costs nothing, so turns can interleave
            proc, url = start(name, gguf, threads, tools, log_dir)
            running[name] = (proc, url)
            asyncio.run(wait_ready(url, proc, model_id(name, gguf)))
        raw: dict[tuple[str, int], list[dict]] = {}
        for round_no in range(1, args.rounds + 1):
            for clients in levels:
                for name in servers:
                    _, url = running[name]
                    result = asyncio.run(load(url, model_id(name, gguf), clients, args.seconds, args.max_tokens))
                    raw.setdefault((name, clients), []).append(result)
                    print(f"  round {round_no} {name:17s} {clients:2d} clients: {result['tokens_per_s']:6.1f} tok/s, "
                          f"{result['completed']} done, {result['failed']} failed {result['errors'][:1]}", file=sys.stderr, flush=True)
    finally:
        for proc, _ in running.values():
            stop(proc)

    rows = []
    common = {"bench": BENCH, "model": MODEL_NAME, "threads": threads, "max_tokens": args.max_tokens,
              "seconds": args.seconds, "rounds": args.rounds}
    summary: dict[tuple[str, int], dict] = {}
    for (name, clients), results in raw.items():
        med = {key: statistics.median([r[key] for r in results if r[key] is not None] or [0])
               for key in ("tokens_per_s", "ttft_p50_s", "ttft_p95_s")}
        med["completed"] = sum(r["completed"] for r in results)
        med["failed"] = sum(r["failed"] for r in results)
        summary[(name, clients)] = med
        emit(**common, engine=name, clients=clients, **med, per_round=[round(r["tokens_per_s"], 1) for r in results])
    for clients in levels:
        anchor = summary.get(("llama-server", clients))
        for name in servers:
            m = summary[(name, clients)]
            ratio = m["tokens_per_s"] / anchor["tokens_per_s"] if anchor and anchor["tokens_per_s"] else None
            if name == "kecil" and ratio is not None:
                emit(**common, metric="kecil_vs_llama_server_tokens_per_s", clients=clients, ratio=round(ratio, 3))
            rows.append((name, clients, m["tokens_per_s"], m["ttft_p50_s"], m["ttft_p95_s"], m["completed"], m["failed"], ratio))
    table(f"{BENCH}: streamed {args.max_tokens}-token chat answers, medians of {args.rounds} rounds",
          ("server", "clients", "tok/s", "TTFT p50 s", "TTFT p95 s", "requests", "failed", "vs llama-server"), rows)
    return 0


def model_id(name: str, gguf: Path) -> str:
    return gguf.name[:-5] if name == "kecil" else "default"  # llama.cpp's servers accept any name


if __name__ == "__main__":
    sys.exit(main())
