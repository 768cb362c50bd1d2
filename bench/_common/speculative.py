"""Speculative decoding on a RAG-style answer: Qwen2.5-Coder-1.5B alone, with the 0.5B drafting,
and with prompt lookup, in kecil and in llama.cpp's own llama-server (--model-draft, --spec-type
ngram-simple): same models, same prompt token ids, same number of greedy tokens (EOS ignored).

Each configuration runs in a fresh process per round (kecil: a worker of bench/generate.py;
llama.cpp: a llama-server started for it, asked once to warm up, then measured); configurations
take turns round after round, and each number is the median over rounds. Decode tokens/s is
timed from the first generated token to the last in both (llama-server's predicted_per_second).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

TARGET, DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
CONTEXT = 2048
SOURCE = (
    "Mount Rinjani National Park: rules for climbers (2024 edition). The trail opens on 1 April and closes on "
    "31 December; it is closed during the rainy season and after any eruption warning. Every climber must register "
    "at the Sembalun or Senaru office with a passport or identity card, pay an entrance fee of 150,000 rupiah per "
    "day for foreign visitors and 10,000 rupiah per day for Indonesian citizens, and hire a licensed guide or porter "
    "from the official list. Groups are limited to ten climbers per guide. Camping is allowed only at Plawangan "
    "Sembalun, Plawangan Senaru and Segara Anak; camping anywhere else is fined 1,000,000 rupiah. Fires are "
    "forbidden above 2,000 metres; use a gas stove. All rubbish must be carried down and shown at the exit office, "
    "where each climber's bag is weighed against its weight on entry. Swimming in Segara Anak lake is forbidden. "
    "Drones need a permit from the park office in Mataram. Climbers who leave the marked trail lose their permit."
)
QUESTION = (f"Source:\n{SOURCE}\n\nQuestion: What must a climber do and not do on Mount Rinjani? Answer using only the "
            "source, as a numbered list that quotes the source's own words for every rule.")
KECIL_KINDS = ("kecil 1.5B", "kecil 1.5B + 0.5B draft", "kecil 1.5B + prompt lookup", "kecil 1.5B + lookup, else 0.5B draft")
# The batched engine of `kecil serve --draft` with one request running (it speculates when alone).
SERVE_KIND = "kecil serve engine 1.5B + 0.5B draft, 1 request"
SERVER_KINDS = ("llama-server 1.5B", "llama-server 1.5B + 0.5B draft", "llama-server 1.5B + ngram lookup",
                "llama-server 1.5B + ngram lookup, 0.5B draft")
# llama-server's draft settings made like kecil's (SpeculativeConfig): a draft model proposes up
# to 4 tokens and stops below p = 0.5 (llama-server's defaults: 3 tokens, p_min 0); n-gram lookup
# matches 3 tokens (its default, 12, finds little in a short answer) and proposes up to 8.
SERVER_DRAFT_ARGS = ["--spec-draft-n-max", "4", "--spec-draft-p-min", "0.5"]
SERVER_NGRAM_ARGS = ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3", "--spec-ngram-simple-size-m", "8"]


def model_paths() -> tuple[Path, Path] | None:
    from kecil.models.builtins import builtin_path
    from kecil.errors import ModelNotFoundError

    try:
        return builtin_path(TARGET), builtin_path(DRAFT)
    except ModelNotFoundError:
        return None


def kecil_worker(kind: str, *, threads: int, new_tokens: int, runs: int) -> dict:
    """Measure one kecil configuration in this process (bench/generate.py --worker)."""
    from kecil.infer.generation import GenerationConfig
    from kecil.infer.load import load_model

    target, draft = model_paths()
    draft_arg = {"kecil 1.5B": None, "kecil 1.5B + 0.5B draft": str(draft), "kecil 1.5B + prompt lookup": "prompt-lookup",
                 "kecil 1.5B + lookup, else 0.5B draft": f"prompt-lookup+{draft}", SERVE_KIND: str(draft)}[kind]
    config = GenerationConfig(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    if kind == SERVE_KIND:
        from kecil.infer.llamacpp_batched import BatchedLlamaCppBackend
        from kecil.models.info import inspect_model
        from kecil.models.reference import resolve

        ref = resolve(str(target))
        opened = BatchedLlamaCppBackend(ref, inspect_model(ref), context_length=CONTEXT, threads=threads, parallel=4, draft=draft_arg)
    else:
        opened = load_model(str(target), context_length=CONTEXT, threads=threads, draft=draft_arg)
    with opened as model:
        ids = model.chat_prompt_ids([{"role": "user", "content": QUESTION}])
        _drain(model.stream_ids(ids, GenerationConfig(max_tokens=16, temperature=0)))  # warm-up
        speeds, accepted, drafted, text = [], 0, 0, ""
        if kind == SERVE_KIND:
            model.solo.stats.update(accepted=0, drafted=0)  # counters run on: count the measured runs only
        for _ in range(runs):
            last, pieces = _drain(model.stream_ids(ids, config))
            speeds.append(last.timings.decode_tokens_per_second)
            stats = model.speculation if draft_arg and kind != SERVE_KIND else {}
            accepted, drafted = accepted + stats.get("accepted", 0), drafted + stats.get("drafted", 0)
            text = "".join(pieces)
        if kind == SERVE_KIND:
            accepted, drafted = model.solo.stats["accepted"], model.solo.stats["drafted"]
    return {"kind": kind, "decode_tokens_per_s": speeds, "accepted": accepted, "drafted": drafted,
            "prompt_ids": ids, "text": text}


def _drain(stream):
    pieces, last = [], None
    for chunk in stream:
        pieces.append(chunk.text)
        last = chunk
    return last, pieces


def server_round(kind: str, tools: Path, *, prompt_ids: list[int], threads: int, new_tokens: int, runs: int,
                 log_dir: Path) -> dict:
    """Start llama-server for `kind`, warm it up, and time `runs` completions of `prompt_ids`."""
    target, draft = model_paths()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(tools / "llama-server"), "-m", str(target), "--host", "127.0.0.1", "--port", str(port), "-np", "1",
           "-c", str(CONTEXT), "-t", str(threads), "-tb", str(threads), "-fa", "on", "--no-webui"]
    if "draft" in kind:
        cmd += ["--model-draft", str(draft), "-td", str(threads), "-tbd", str(threads), *SERVER_DRAFT_ARGS]
    if "lookup" in kind:
        cmd += SERVER_NGRAM_ARGS
    if "draft" in kind:
        types = "ngram-simple,draft-simple" if "lookup" in kind else "draft-simple"
        cmd += ["--spec-type", types] if "lookup" not in kind else []
        cmd[cmd.index("--spec-type") + 1] = types
    with open(log_dir / f"{kind.replace(' ', '_').replace('+', '')}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc)
            _complete(url, prompt_ids, 16)  # warm-up
            speeds, accepted, drafted, text = [], 0, 0, ""
            for _ in range(runs):
                reply = _complete(url, prompt_ids, new_tokens)
                timings = reply["timings"]
                speeds.append(timings["predicted_per_second"])
                accepted += timings.get("draft_n_accepted", 0)
                drafted += timings.get("draft_n", 0)
                text = reply.get("content", "")
                last_timings = timings
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"kind": kind, "decode_tokens_per_s": speeds, "accepted": accepted, "drafted": drafted, "text": text,
            "server_timings": last_timings}


def _complete(url: str, prompt_ids: list[int], n: int) -> dict:
    body = {"prompt": prompt_ids, "n_predict": n, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
            "stream": False}
    request = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("llama-server did not become ready in time")
