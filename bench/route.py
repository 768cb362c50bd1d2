"""Routing between SmolLM2-135M and Qwen2.5-Coder-1.5B on held-out open questions.

Both models answer every question (greedy, "Answer the question with a short phrase only.",
scored by `contains` as kecil eval scores open questions); the small model's answer is scored by
the combiner kecil ships (fitted on TriviaQA only, bench/route_fit_default.py), and the questions
are escalated least confident first. Measured: each model's accuracy alone, the AUROC of "the
small model is wrong", accuracy against the share escalated (the curve, also as a plot), RouteLLM's
APGR and the share escalated for 50% and 80% of the gap, random routing beside it (its expected
curve is the straight line), and time and memory per answer.

    python bench/route.py [--per-set 50] [--plot docs/route-curve.png]

Honours /work/notes/QUIET-style pauses through $KECIL_BENCH_QUIET (a file: wait while it exists).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common.report import emit, table  # noqa: E402
from kecil.route.calibrate import apgr, load_questions, routing_curve, run_model, share_for_gap  # noqa: E402
from kecil.route.confidence import ConfidenceConfig, auroc, default_combiner  # noqa: E402

SMALL, LARGE = "smollm2-135m", "qwen2.5-coder-1.5b"
SETS = ("nq_open", "sciq_open")  # never TriviaQA: the shipped combiner was fitted on it
QUIET = Path(os.environ.get("KECIL_BENCH_QUIET", "/work/notes/QUIET"))


def wait_quiet() -> None:
    while QUIET.exists():
        time.sleep(20)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-set", type=int, default=50, help="Questions from each held-out set.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None, help="Write the accuracy-against-escalation curve here (PNG).")
    args = parser.parse_args()

    items = [it for name in SETS for it in load_questions(name, args.per_set, args.seed)]
    common = {"max_tokens": 32, "context": 1024, "threads": args.threads, "cache": True, "confidence": ConfidenceConfig()}
    rows = {}
    for model, judge in ((SMALL, True), (LARGE, False)):
        wait_quiet()
        started = time.monotonic()
        rows[model] = run_model(model, items, judge=judge, **common,
                                progress=lambda d, t, m=model: print(f"\r{m}: {d}/{t}", end="", file=sys.stderr, flush=True))
        print(file=sys.stderr)
        seconds = [r["seconds"] for r in rows[model]]
        emit(bench="route", model=model, role="small" if judge else "large", questions=len(items),
             accuracy=sum(r["correct"] for r in rows[model]) / len(items),
             seconds_per_answer=sum(seconds) / len(seconds), wall_seconds=round(time.monotonic() - started, 1),
             peak_rss_mb=round(peak_rss_mb()))

    combiner = default_combiner()
    small_ok = [r["correct"] for r in rows[SMALL]]
    large_ok = [r["correct"] for r in rows[LARGE]]
    confidence = [combiner.confidence(r["signals"]) for r in rows[SMALL]]
    n = len(items)
    acc_small, acc_large = sum(small_ok) / n, sum(large_ok) / n
    points = routing_curve(confidence, small_ok, large_ok)
    result = {"auroc_small_wrong": auroc([-c for c in confidence], [not ok for ok in small_ok]),
              "apgr": apgr(points, acc_small, acc_large),
              "share_for_50pct_gap": share_for_gap(points, acc_small, acc_large, 0.5),
              "share_for_80pct_gap": share_for_gap(points, acc_small, acc_large, 0.8)}
    # Random routing: the mean over 200 random orders (its expectation is the straight line, APGR 0.5).
    rng = random.Random(0)
    random_apgr, random_50 = [], []
    for _ in range(200):
        shuffled = [rng.random() for _ in range(n)]
        rp = routing_curve(shuffled, small_ok, large_ok)
        random_apgr.append(apgr(rp, acc_small, acc_large))
        random_50.append(share_for_gap(rp, acc_small, acc_large, 0.5) or 1.0)
    result["random_apgr"] = sum(random_apgr) / len(random_apgr)
    result["random_share_for_50pct_gap"] = sum(random_50) / len(random_50)
    # Per signal: how well each alone ranks "small is wrong" (higher signal = more likely right).
    for feature in combiner.features:
        values = [r["signals"][feature] for r in rows[SMALL]]
        result[f"auroc_{feature}"] = auroc([-v for v in values], [not ok for ok in small_ok])
    emit(bench="route", sets=list(SETS), questions=n, small_accuracy=acc_small, large_accuracy=acc_large, **result,
         combiner_fitted_on=combiner.fitted_on)
    table("routing (held-out: " + ", ".join(SETS) + f"; {n} questions)", ["measure", "value"], [
        [f"{SMALL} accuracy", acc_small], [f"{LARGE} accuracy", acc_large],
        ["AUROC, small is wrong (target >= 0.75)", result["auroc_small_wrong"]],
        ["APGR (target >= 0.65)", result["apgr"]], ["APGR, random routing", result["random_apgr"]],
        ["share escalated for 50% of gap (target <= 0.30)", result["share_for_50pct_gap"]],
        ["  random routing", result["random_share_for_50pct_gap"]],
        ["share escalated for 80% of gap", result["share_for_80pct_gap"]],
    ])
    table("accuracy against share escalated", ["escalated", "accuracy", "threshold"],
          [[f"{p['escalated']:.2f}", p["accuracy"], p["threshold"]] for p in points[:: max(1, n // 20)]])
    if args.plot:
        plot(points, acc_small, acc_large, args.plot, n)


def plot(points: list[dict], acc_small: float, acc_large: float, path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot([p["escalated"] for p in points], [p["accuracy"] for p in points], label="kecil route (shipped combiner)")
    ax.plot([0, 1], [acc_small, acc_large], linestyle="--", color="grey", label="random routing (expected)")
    ax.axhline(acc_small + 0.5 * (acc_large - acc_small), color="lightgrey", linewidth=0.8)
    ax.axvline(0.3, color="lightgrey", linewidth=0.8)
    ax.set_xlabel(f"share of questions escalated to {LARGE}")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{SMALL} → {LARGE}, {n} held-out questions (NQ-open, SciQ)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    main()
