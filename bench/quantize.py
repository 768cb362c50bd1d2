"""Quantization quality, size and time: kecil against llama.cpp's own tools, in one run.

Reference model: the embedded default's weights (SmolLM2-135M-Instruct, its Q4_1 GGUF
dequantized) written as an f16 GGUF by `kecil quantize --to f16`. For each type it writes

  llama-quantize            llama.cpp's quantizer without an importance matrix
  llama-imatrix+quantize    llama-imatrix on the calibration text, then llama-quantize --imatrix (the anchor)
  kecil-none                kecil without calibration (checked byte-identical to llama-quantize)
  kecil-imatrix             kecil's importance matrix (torch activations, same text and chunk count)
  kecil-gptq                kecil's importance matrix + GPTQ error compensation
  kecil-awq                 AWQ scales searched against ggml's quantizer and folded in, then importance-weighted rounding
  kecil-awq-gptq            AWQ scales, then GPTQ (`--method auto` picks per type from these measurements)

and measures every file with llama.cpp's own llama-perplexity on kecil's held-out text
(context 512; calibration never sees it). Calibration text: kecil's bundled set, --calib-chunks
chunks of 512 tokens for both tools. JSON lines on stdout, a table on stderr; docs/benchmarks.md.
Run under the machine-wide lock: flock /tmp/kecil-bench.lock .venv/bin/python bench/quantize.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common.llama_tools import ensure_tools, last_line  # noqa: E402
from _common.model import MODEL_NAME  # noqa: E402
from _common.report import emit, table  # noqa: E402

BENCH = "quantize"
TYPES = ("q4_k_m", "q3_k_m", "q2_k")
VARIANTS = ("llama-quantize", "llama-imatrix+quantize", "kecil-none", "kecil-imatrix", "kecil-gptq", "kecil-awq", "kecil-awq-gptq")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kecil.compress.calibration import DEFAULT_CALIBRATION, HELD_OUT
    from kecil.compress.quantize import QuantizeConfig, calibrate, quantize
    from kecil.paths import kecil_home

    tools = ensure_tools(build=not args.no_build)
    if tools is None:
        raise SystemExit("llama.cpp's tools are missing: run bench/build_llama_tools.sh (or drop --no-build)")
    threads = args.threads or (1 if os.getloadavg()[0] > (os.cpu_count() or 1) else (os.cpu_count() or 1))
    work = kecil_home() / "bench" / "quantize"
    work.mkdir(parents=True, exist_ok=True)
    data = Path(__file__).resolve().parent.parent / "kecil" / "compress" / "data"
    calib, heldout = data / DEFAULT_CALIBRATION, data / HELD_OUT
    types = args.types.split(",") if args.types else list(TYPES)
    variants = [v for v in VARIANTS if not args.variants or v in args.variants.split(",")]

    reference = work / "reference-f16.gguf"
    quantize(QuantizeConfig(model=MODEL_NAME, to="f16", output=reference, method="none", report=False))
    ref_ppl = perplexity(tools, reference, heldout, args.ppl_chunks, threads)
    emit(bench=BENCH, model=MODEL_NAME, variant="reference-f16", type="f16", bytes=reference.stat().st_size, perplexity=ref_ppl)

    started = time.perf_counter()
    imatrix = work / "imatrix.gguf"
    _run([tools / "llama-imatrix", "-m", reference, "-f", calib, "-o", imatrix, "-c", "512", "--chunks", args.calib_chunks, "-t", threads])
    llama_imatrix_seconds = time.perf_counter() - started
    started = time.perf_counter()
    config = dict(model=str(reference), calib=calib, calib_chunks=args.calib_chunks, threads=threads, report=False)
    statistics = calibrate(QuantizeConfig(to="q4_k_m", output=work / "unused.gguf", method="gptq", **config))
    kecil_calibration_seconds = time.perf_counter() - started
    emit(bench=BENCH, step="calibration", llama_imatrix_seconds=llama_imatrix_seconds, kecil_seconds=kecil_calibration_seconds,
         tokens=statistics.tokens)  # fmt: skip

    rows = []
    for name in types:
        results = {}
        for variant in variants:
            out = work / f"{name}-{variant}.gguf"
            started = time.perf_counter()
            if variant == "llama-quantize":
                _run([tools / "llama-quantize", reference, out, name, threads])
            elif variant == "llama-imatrix+quantize":
                _run([tools / "llama-quantize", "--imatrix", imatrix, reference, out, name, threads])
            else:
                method = variant.removeprefix("kecil-")
                if method == "none":
                    quantize(QuantizeConfig(model=str(reference), to=name, output=out, method="none", threads=threads, report=False))
                else:
                    quantize(QuantizeConfig(to=name, output=out, method=method, statistics=statistics, **config))
            seconds = time.perf_counter() - started
            if variant.endswith("imatrix+quantize"):
                seconds += llama_imatrix_seconds
            elif variant not in ("llama-quantize", "kecil-none"):
                seconds += kecil_calibration_seconds
            if variant == "kecil-none" and "llama-quantize" in results and _same_tensors(out, work / f"{name}-llama-quantize.gguf"):
                ppl, identical = results["llama-quantize"]["perplexity"], True  # same weights, same perplexity
            else:
                ppl, identical = perplexity(tools, out, heldout, args.ppl_chunks, threads), None
            record = emit(
                bench=BENCH, model=MODEL_NAME, variant=variant, type=name, bytes=out.stat().st_size, perplexity=ppl,
                increase=ppl - ref_ppl, seconds=seconds, identical_to_llama_quantize=identical,
            )  # fmt: skip
            results[variant] = record
            rows.append((name, variant, record["bytes"] / 2**20, ppl, ppl - ref_ppl, seconds))
    table(
        f"quantize: {MODEL_NAME}, reference f16 perplexity {ref_ppl:.3f} ({args.ppl_chunks or 'all'} chunks of 512 held-out tokens)",
        ("type", "variant", "MiB", "perplexity", "increase", "seconds"), rows,
    )
    return 0


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


def _same_tensors(a: Path, b: Path) -> bool:
    """Whether two GGUF files hold the same tensors, byte for byte (metadata may differ)."""
    import numpy as np
    from gguf import GGUFReader

    ta, tb = GGUFReader(a).tensors, GGUFReader(b).tensors
    return [(t.name, t.tensor_type) for t in ta] == [(t.name, t.tensor_type) for t in tb] and all(
        np.array_equal(np.asarray(x.data), np.asarray(y.data)) for x, y in zip(ta, tb)
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", help=f"comma-separated types (default: {','.join(TYPES)})")
    parser.add_argument("--variants", help=f"comma-separated variants (default: all of {','.join(VARIANTS)})")
    parser.add_argument("--calib-chunks", type=int, default=32, help="512-token calibration chunks for both tools")
    parser.add_argument("--ppl-chunks", type=int, default=0, help="held-out chunks to score (0 = all)")
    parser.add_argument("--threads", type=int, help="threads (default: all cores, 1 when the CPU is already busy)")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building llama.cpp's tools")
    return parser


if __name__ == "__main__":
    sys.exit(main())
