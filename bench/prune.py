"""Structured pruning and healing on the embedded default (SmolLM2-135M-Instruct): quality and speed.

Variants, each pruned to --ratio of the parameters removed (default 25%):

  original          the model itself
  minitron          kecil's default: heads, MLP neurons and hidden channels by activation importance
  width             heads and MLP neurons only
  depth             ShortGPT layer removal (block influence), the same share of parameters
  random            minitron's shapes with heads, neurons and channels picked at random
  minitron+distill  minitron healed by `kecil distill` from the original (top-k KL + 0.1 CE)
  minitron+ce       minitron fine-tuned with plain cross-entropy on the same tokens (the baseline)

Every variant is written by `kecil quantize --to q4_k_m --method none` (no calibration, so
quantization treats every variant the same) and measured alone in a fresh process
(kecil.infer.measure, llama.cpp): perplexity on kecil's held-out text, which neither pruning
(calibration text) nor healing (the same calibration text) sees, and decode tokens/s. The
original is also written at q2_k, the point the stretch target compares with. Healing budget:
--heal-tokens (the issue's 30 minutes on 2 cores is far more than a shared session allows; the
table says what was used). JSON lines on stdout, a table on stderr; docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common.model import MODEL_NAME  # noqa: E402
from _common.report import emit, table  # noqa: E402

BENCH = "prune"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kecil.compress.calibration import HELD_OUT, bundled_text
    from kecil.compress.distill import DistillConfig, distill
    from kecil.compress.prune import PruneConfig, prune
    from kecil.paths import kecil_home

    work = kecil_home() / "bench" / "prune"
    work.mkdir(parents=True, exist_ok=True)
    heldout = bundled_text(HELD_OUT)
    threads = args.threads or (os.cpu_count() or 1)
    wanted = set(args.variants.split(",")) if args.variants else None
    folders: dict[str, Path | str] = {"original": MODEL_NAME}
    notes: dict[str, str] = {}

    def pruned(name: str, **settings) -> None:
        if wanted and name not in wanted and not any(w.startswith(name + "+") for w in wanted):
            return
        out = work / name
        if not (out / "config.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            result = prune(PruneConfig(model=MODEL_NAME, output=out, ratio=args.ratio, threads=threads, **settings))
            notes[name] = f"{result.params_after:,} params, {'; '.join(result.removed)} ({time.perf_counter() - started:.0f}s)"
        folders[name] = out

    pruned("minitron", method="minitron")
    pruned("width", method="width")
    pruned("depth", method="depth")
    pruned("random", method="minitron", importance="random")
    for name, weights in (("minitron+distill", {}), ("minitron+ce", {"kl_weight": 0.0, "ce_weight": 1.0})):
        if (wanted and name not in wanted) or "minitron" not in folders:
            continue
        out = work / name
        if not (out / "config.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            result = distill(DistillConfig(student=str(folders["minitron"]), teacher=MODEL_NAME, output=out, tokens=args.heal_tokens,
                                           lr=args.lr, threads=threads, **weights))  # fmt: skip
            notes[name] = (f"{result.tokens:,} tokens, {result.steps} steps in {result.seconds:.0f}s "
                           f"({result.tokens / max(1e-9, result.seconds):.0f} tok/s), loss {result.first_loss:.3f} -> {result.last_loss:.3f}")
        folders[name] = out

    rows = []
    types = [("original", "q2_k")] + [(name, "q4_k_m") for name in folders]
    for name, qtype in types:
        if qtype == "q2_k" and wanted and "original" not in wanted:
            continue
        gguf = _quantized(folders[name], work / f"{name}-{qtype}.gguf", qtype, threads)
        figures = _measure(gguf, heldout, args.measure_threads)
        record = emit(bench=BENCH, variant=name, type=qtype, ratio=args.ratio if name != "original" else 0.0, heal_tokens=args.heal_tokens
                      if "+" in name else 0, perplexity=figures.perplexity, decode_tokens_per_second=figures.decode_tokens_per_second,
                      file_bytes=gguf.stat().st_size, note=notes.get(name, ""))  # fmt: skip
        rows.append((f"{name} {qtype}", record["perplexity"], record["decode_tokens_per_second"], record["file_bytes"] / 2**20))
    table(f"bench/prune.py: {MODEL_NAME}, {args.ratio:.0%} of parameters removed, healing {args.heal_tokens:,} tokens",
          ("variant", "perplexity", "decode tok/s", "MiB"), rows)  # fmt: skip
    for name, note in notes.items():
        print(f"  {name}: {note}", file=sys.stderr)
    return 0


def _quantized(model, target: Path, qtype: str, threads: int) -> Path:
    from kecil.compress.quantize import QuantizeConfig, quantize

    if not target.exists():
        quantize(QuantizeConfig(model=str(model), to=qtype, output=target, method="none", report=False, threads=threads))
    return target


def _measure(gguf: Path, heldout: str, threads: int):
    from kecil.infer.measure import measure

    return measure(str(gguf), backend="llamacpp", threads=threads, prompt_tokens=128, decode_tokens=128,
                   perplexity_text=heldout, perplexity_context=512, timeout=None)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.25, help="share of the parameters removed")
    parser.add_argument("--heal-tokens", type=int, default=200_000, help="healing budget in training tokens (both healers)")
    parser.add_argument("--lr", type=float, default=1e-4, help="healing learning rate")
    parser.add_argument("--threads", type=int, default=None, help="threads for pruning, healing and quantizing")
    # One thread measures steadily on a shared machine: two spin-waiting OpenMP threads beside another
    # job were measured 25x slower at decode (0.8 against 20 tok/s).
    parser.add_argument("--measure-threads", type=int, default=1, help="threads for perplexity and decode speed")
    parser.add_argument("--variants", default=None, help="comma-separated subset (original is always measured)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
