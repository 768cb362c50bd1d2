"""Generation speed of kecil's two backends against the engines under them and llama.cpp itself.

On the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF), on one machine, with one
prompt, this measures prompt processing (tokens/s over a 512-token prompt), decoding (tokens/s
over 128 greedy tokens), load time and peak RSS for:

  kecil-llamacpp    kecil's llamacpp backend, through kecil's API
  kecil-torch       kecil's torch backend, through kecil's API
  llama-cpp-python  llama-cpp-python used directly (eval + create_completion)
  transformers      transformers used directly (from_pretrained(gguf_file=...) + generate)
  llama-bench       llama.cpp's own benchmark tool, built from the same sources (the anchor)

then this machine's memory-bandwidth limit for decoding, and the ratios that say how close
kecil gets. With Qwen2.5-Coder-1.5B installed (`kecil pull qwen2.5-coder-1.5b`), it then measures
speculative decoding on a RAG-style answer against llama.cpp's own (bench/_common/speculative.py;
--speculative only runs just that part). Each engine runs in its own process (so peak RSS is its own); speeds are medians
of --runs generations after one warm-up, and load time is the median over --load-runs fresh
processes. Results are JSON lines on stdout, a table on stderr. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common when run from anywhere

from _common.isolation import run_isolated  # noqa: E402
from _common.llama_tools import ensure_tools, last_line, run_llama_bench  # noqa: E402
from _common.machine import cpu_model, physical_cores  # noqa: E402
from _common.model import MODEL_NAME, default_gguf, weight_bytes_per_token  # noqa: E402
from _common.report import emit, median, table  # noqa: E402

BENCH = "generate"
ALL_ENGINES = ("kecil-llamacpp", "kecil-torch", "llama-cpp-python", "transformers", "llama-bench")
LLAMA_BENCH_REPETITIONS = 5  # llama-bench's own default
BANDWIDTH_BUFFER_BYTES = 1 << 30  # far larger than any cache, so this is DRAM bandwidth
TIMEOUT_SECONDS = 1800


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args)

    threads = args.threads or physical_cores()
    if args.speculative == "only":
        return _speculative(args, threads)
    gguf = default_gguf()
    engines = args.engines.split(",") if args.engines else list(ALL_ENGINES)
    unknown = set(engines) - set(ALL_ENGINES)
    if unknown:
        raise SystemExit(f"unknown engine(s) {sorted(unknown)}; choose from {', '.join(ALL_ENGINES)}")
    print(f"{BENCH}: {MODEL_NAME} ({gguf.name}) on {cpu_model()}, {threads} threads", file=sys.stderr, flush=True)

    common = {"bench": BENCH, "model": MODEL_NAME, "threads": threads}
    # Engines take turns, round after round: this VM's speed drifts by 10% and more over minutes,
    # and running each engine's measurements back to back would turn that drift into a ratio.
    raw: dict[str, list] = {engine: [] for engine in engines}
    failed: set[str] = set()
    for round_no in range(1, args.rounds + 1):
        for engine in engines:
            if engine in failed:
                continue
            print(f"  round {round_no}/{args.rounds}: {engine} ...", file=sys.stderr, flush=True)
            try:
                raw[engine].append(
                    _llama_bench_round(args, gguf, threads) if engine == "llama-bench" else _run_worker(engine, args, threads)
                )
            except RuntimeError as exc:
                emit(**common, engine=engine, status="failed", reason=str(exc))
                failed.add(engine)
    results: dict[str, dict] = {}
    for engine in engines:
        if engine in failed:
            continue
        results[engine] = (
            _report_llama_bench(raw[engine], common) if engine == "llama-bench" else _report_python_engine(engine, raw[engine], args, common)
        )

    _check_same_prompt(results, args, common)
    limit = _bandwidth_limit(gguf, threads, common, args)
    _ratios(results, limit, common, args)
    _table(results, args)
    spec_failed = _speculative(args, threads) if args.speculative == "auto" else 0
    return 1 if failed or spec_failed else 0


def _speculative(args, threads: int) -> int:
    """The speculative-decoding section: kecil's and llama-server's, interleaved round by round."""
    import tempfile

    from _common import speculative as spec

    common = {"bench": BENCH, "model": spec.TARGET, "threads": threads, "task": "rag-answer", "new_tokens": args.spec_tokens}
    if spec.model_paths() is None:
        emit(**common, status="skipped", reason=f"{spec.TARGET} is not installed: kecil pull {spec.TARGET}")
        return 0
    tools = ensure_tools(build=not args.no_build)
    kecil_kinds = [*spec.KECIL_KINDS, spec.SERVE_KIND]
    kinds = kecil_kinds + (list(spec.SERVER_KINDS) if tools is not None else [])
    print(f"{BENCH}: speculative decoding, {spec.TARGET} (+ {spec.DRAFT}), {threads} threads", file=sys.stderr, flush=True)
    raw: dict[str, list[dict]] = {kind: [] for kind in kinds}
    prompt_ids = None
    with tempfile.TemporaryDirectory() as log_dir:
        for round_no in range(1, args.rounds + 1):
            for kind in kinds:
                print(f"  round {round_no}/{args.rounds}: {kind} ...", file=sys.stderr, flush=True)
                if kind in kecil_kinds:
                    result, _ = _run_worker(f"spec:{kind}", args, threads, extra=["--spec-tokens", str(args.spec_tokens)])
                    prompt_ids = prompt_ids or result["prompt_ids"]
                else:
                    result = spec.server_round(kind, tools, prompt_ids=prompt_ids, threads=threads, new_tokens=args.spec_tokens,
                                               runs=args.runs, log_dir=Path(log_dir))
                raw[kind].append(result)
    speeds = {kind: median([v for r in rounds for v in r["decode_tokens_per_s"]]) for kind, rounds in raw.items()}
    rows = []
    for kind, rounds in raw.items():
        drafted, accepted = sum(r["drafted"] for r in rounds), sum(r["accepted"] for r in rounds)
        rate = accepted / drafted if drafted else None
        emit(**common, engine=kind, metric="decode_tokens_per_s", value=round(speeds[kind], 2), runs=len(rounds) * args.runs,
             prompt_tokens=len(prompt_ids), draft_acceptance=None if rate is None else round(rate, 3))
        rows.append([kind, speeds[kind], rate, speeds[kind] / speeds[spec.KECIL_KINDS[0]]])
    same = len({raw[k][-1]["text"] for k in kecil_kinds}) == 1
    emit(**common, metric="kecil_same_text_with_and_without_draft", value=same)
    for ours, theirs in zip(spec.KECIL_KINDS[1:], spec.SERVER_KINDS[1:]):
        if theirs in speeds:
            emit(**common, metric="ratio", engine=ours, against=theirs, value=round(speeds[ours] / speeds[theirs], 3))
    table(f"\n{BENCH}: speculative decoding, {args.spec_tokens} greedy tokens after a {len(prompt_ids)}-token RAG prompt, "
          f"medians over {args.rounds} interleaved rounds", ["configuration", "decode tok/s", "drafts accepted", "x kecil 1.5B"], rows)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", help=f"comma-separated subset of: {', '.join(ALL_ENGINES)} (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds in which every engine takes a turn in a fresh process")
    p.add_argument("--runs", type=int, default=1, help="measured generations per engine per round")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length, the same ids count everywhere")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per generation (EOS ignored)")
    p.add_argument("--threads", type=int, help="threads for every engine (default: physical cores)")
    p.add_argument("--no-build", action="store_true", help="skip llama-bench instead of building llama.cpp's tools")
    p.add_argument("--speculative", choices=("auto", "only", "off"), default="auto",
                   help="the speculative-decoding section on the 1.5B: after the rest (auto, when the model is installed), alone, or not")
    p.add_argument("--spec-tokens", type=int, default=128, help="tokens decoded per generation in the speculative section")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one engine in this process
    return p


def _worker(args) -> int:
    if args.worker == "bandwidth":
        from _common.machine import read_bandwidth_gb_per_s

        print(json.dumps({"gb_per_s": read_bandwidth_gb_per_s(args.threads, BANDWIDTH_BUFFER_BYTES)}))
        return 0
    if args.worker.startswith("spec:"):
        from _common.speculative import kecil_worker

        print(json.dumps(kecil_worker(args.worker[5:], threads=args.threads, new_tokens=args.spec_tokens, runs=args.runs)))
        return 0
    from _common.engines import measure

    result = measure(
        args.worker, threads=args.threads, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
        runs=args.runs,
    )  # fmt: skip
    print(json.dumps(result))
    return 0


def _run_worker(name: str, args, threads: int, extra: list[str] = ()) -> tuple[dict, float]:
    """Run one worker process; returns its result and its peak RSS in MiB."""
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name, "--threads", str(threads),
        "--runs", str(args.runs), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), *extra,
    ]  # fmt: skip
    run = run_isolated(cmd, timeout=TIMEOUT_SECONDS)
    if run.returncode != 0:
        raise RuntimeError(f"{name} worker exited with {run.returncode}: {last_line(run.stderr)}")
    return json.loads(run.stdout.strip().splitlines()[-1]), run.peak_rss_mib


def _report_python_engine(engine: str, rounds: list[tuple[dict, float]], args, common: dict) -> dict:
    """Medians over every round's runs; load time is each round's fresh process."""
    if any(full["status"] == "skipped" for full, _ in rounds):
        reason = next(full["reason"] for full, _ in rounds if full["status"] == "skipped")
        emit(**common, engine=engine, status="skipped", reason=reason)
        return {"status": "skipped"}
    merged = {key: [v for full, _ in rounds for v in full[key]]
              for key in ("prompt_tokens", "prompt_tokens_per_s", "decode_tokens_per_s", "decode_d0_tokens_per_s", "new_tokens")}  # fmt: skip
    full = {**rounds[0][0], **merged}
    loads = [r["load_seconds"] for r, _ in rounds]
    peak_rss = max(rss for _, rss in rounds)
    counts = set(full["prompt_tokens"])
    if counts != {args.prompt_tokens}:
        raise RuntimeError(f"{engine} processed prompts of {sorted(counts)} tokens, not {args.prompt_tokens}")
    produced = full["new_tokens"]
    out = {
        "prompt_tokens_per_s": median(full["prompt_tokens_per_s"]),
        "decode_tokens_per_s": median(full["decode_d0_tokens_per_s"]),
        "decode_tokens_per_s_at_depth": median(full["decode_tokens_per_s"]),
        "load_seconds": median(loads),
        "peak_rss_mib": peak_rss,
    }
    extra = {"cpu_variant": full["cpu_variant"]} if full.get("cpu_variant") else {}
    runs = len(full["prompt_tokens_per_s"])
    emit(**common, engine=engine, metric="prompt_tokens_per_s", value=round(out["prompt_tokens_per_s"], 2),
         runs=runs, prompt_tokens=args.prompt_tokens, **extra)  # fmt: skip
    # Decoding from an empty context (as llama-bench's tg) and after the prompt (depth).
    for key, depth in (("decode_tokens_per_s", 0), ("decode_tokens_per_s_at_depth", args.prompt_tokens)):
        emit(**common, engine=engine, metric="decode_tokens_per_s", value=round(out[key], 2),
             runs=runs, new_tokens=min(produced), depth=depth, **extra)  # fmt: skip
    emit(**common, engine=engine, metric="load_seconds", value=round(out["load_seconds"], 3), runs=len(loads))
    emit(**common, engine=engine, metric="peak_rss_mib", value=round(peak_rss, 1), runs=1)
    return {**full, **out, "new_tokens": produced}


def _llama_bench_round(args, gguf: Path, threads: int):
    bin_dir = ensure_tools(build=not args.no_build)
    if bin_dir is None:
        return None
    # Depth 0 is llama-bench's standard tg128; depth 512 decodes after a 512-token context, like
    # the Python engines do after their prompt.
    return run_llama_bench(
        bin_dir, gguf, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, depths=[0, args.prompt_tokens],
        threads=threads, repetitions=LLAMA_BENCH_REPETITIONS, timeout=TIMEOUT_SECONDS,
    )  # fmt: skip


def _report_llama_bench(rounds: list, common: dict) -> dict:
    """Median over rounds of llama-bench's own per-round mean (avg_ts of its repetitions)."""
    if any(r is None for r in rounds):
        reason = "llama.cpp's tools are not built (--no-build); run bench/build_llama_tools.sh"
        emit(**common, engine="llama-bench", status="skipped", reason=reason)
        return {"status": "skipped"}
    variant = rounds[0][1]
    peak = max(run.peak_rss_mib for _, _, run in rounds)
    out: dict = {"status": "ok", "peak_rss_mib": peak, "cpu_variant": variant}
    n = LLAMA_BENCH_REPETITIONS * len(rounds)
    shared = {**common, "engine": "llama-bench", "runs": n, "cpu_variant": variant}
    tests: dict[tuple, list[float]] = {}
    for records, _, _ in rounds:
        for r in records:
            tests.setdefault((r["n_prompt"], r["n_gen"], r["n_depth"]), []).append(r["avg_ts"])
    for (n_prompt, n_gen, n_depth), values in tests.items():
        value = median(values)
        if n_prompt and not n_depth:
            out["prompt_tokens_per_s"] = value
            emit(**shared, metric="prompt_tokens_per_s", value=round(value, 2), prompt_tokens=n_prompt, test=f"pp{n_prompt}")
        elif n_gen:
            out["decode_tokens_per_s" if not n_depth else "decode_tokens_per_s_at_depth"] = value
            test = f"tg{n_gen}" + (f" @ d{n_depth}" if n_depth else "")
            emit(**shared, metric="decode_tokens_per_s", value=round(value, 2), new_tokens=n_gen, depth=n_depth, test=test)
    emit(**common, engine="llama-bench", metric="peak_rss_mib", value=round(peak, 1), runs=len(rounds),
         note="one process for every test, context sized for the largest")  # fmt: skip
    return out


def _check_same_prompt(results: dict, args, common: dict) -> None:
    """Every Python engine must have seen the same number of prompt ids; report whether the ids
    themselves matched (each engine tokenizes the same text with its own tokenizer)."""
    digests = {e: r["prompt_digest"] for e, r in results.items() if r.get("prompt_digest")}
    if digests:
        emit(**common, metric="prompt_tokens", value=args.prompt_tokens, engines=sorted(digests),
             same_ids=len(set(digests.values())) == 1, digests=digests)  # fmt: skip


def _bandwidth_limit(gguf: Path, threads: int, common: dict, args) -> dict:
    """Decode reads every weight once per token, so memory bandwidth / weight bytes per token
    is the fastest any engine can decode on this machine (ignoring caches and the KV cache)."""
    (bw, _), weights = _run_worker("bandwidth", args, threads), weight_bytes_per_token(gguf)
    gb_per_s = bw["gb_per_s"]
    emit(**common, metric="memory_read_gb_per_s", value=round(gb_per_s, 2), buffer_gib=BANDWIDTH_BUFFER_BYTES / 2**30,
         method="best of 7 torch sums")  # fmt: skip
    limits = {}
    for kind, engines in (("stored", "llama.cpp engines"), ("float32", "torch engines")):
        limits[kind] = gb_per_s * 1e9 / weights[kind]
        emit(**common, metric="decode_limit_tokens_per_s", value=round(limits[kind], 1), weights=kind,
             weight_bytes_per_token=weights[kind], applies_to=engines)  # fmt: skip
    return limits


def _ratios(results: dict, limits: dict, common: dict, args) -> None:
    pp, tg, depth = f"pp{args.prompt_tokens}", f"tg{args.new_tokens}", args.prompt_tokens
    # (engine, result key, label) pairs: numerator / denominator.
    d0, dp = "decode_tokens_per_s", "decode_tokens_per_s_at_depth"
    pairs = [
        (("kecil-llamacpp", d0, "decode"), ("llama-cpp-python", d0, "decode")),
        (("kecil-llamacpp", dp, f"decode@d{depth}"), ("llama-cpp-python", dp, f"decode@d{depth}")),
        (("kecil-llamacpp", d0, "decode"), ("llama-bench", d0, tg)),
        (("kecil-llamacpp", dp, f"decode@d{depth}"), ("llama-bench", dp, f"{tg}@d{depth}")),
        (("kecil-llamacpp", "prompt_tokens_per_s", "pp"), ("llama-bench", "prompt_tokens_per_s", pp)),
        (("kecil-torch", d0, "decode"), ("transformers", d0, "decode")),
        (("kecil-torch", dp, f"decode@d{depth}"), ("transformers", dp, f"decode@d{depth}")),
        (("kecil-torch", "prompt_tokens_per_s", "pp"), ("transformers", "prompt_tokens_per_s", "pp")),
    ]  # fmt: skip
    for (a, ka, la), (b, kb, lb) in pairs:
        num, den = results.get(a, {}).get(ka), results.get(b, {}).get(kb)
        if num is None or den is None:
            emit(**common, metric="ratio", of=f"{a} {la}", to=f"{b} {lb}", status="skipped",
                 reason="a side was not measured")  # fmt: skip
        else:
            emit(**common, metric="ratio", of=f"{a} {la}", to=f"{b} {lb}", value=round(num / den, 3))
    # From an empty context, where decoding reads little but the weights.
    for engine, kind, at in (("kecil-llamacpp", "stored", 0), ("llama-bench", "stored", 0),
                             ("kecil-torch", "float32", 0)):  # fmt: skip
        decode = results.get(engine, {}).get("decode_tokens_per_s")
        if decode is not None:
            emit(**common, metric="fraction_of_decode_limit", engine=engine, value=round(decode / limits[kind], 3),
                 weights=kind, depth=at)  # fmt: skip


def _table(results: dict, args) -> None:
    rows = []
    for engine, r in results.items():
        if r.get("status") != "ok":
            rows.append([engine, r.get("status"), None, None, None, None])
            continue
        after_prompt, empty = r.get("decode_tokens_per_s_at_depth"), r.get("decode_tokens_per_s")
        rows.append([engine, r.get("prompt_tokens_per_s"), after_prompt, empty, r.get("load_seconds"),
                     r.get("peak_rss_mib")])  # fmt: skip
    n, p = args.new_tokens, args.prompt_tokens
    header = ["engine", f"pp{p} tok/s", f"tg{n} @d{p} tok/s", f"tg{n} @d0 tok/s", "load s", "peak RSS MiB"]
    table(f"\n{BENCH}: medians over {args.rounds} interleaved rounds; tg{n} @d{p} = decoding after the {p}-token prompt", header, rows)


if __name__ == "__main__":
    sys.exit(main())
