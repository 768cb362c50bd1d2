"""Does `kecil tune` teach new facts without making the model forget? With and without general replay.

For each fact set (tests/tune/data: `velmora`, the README's example, 12 facts x 4 phrasings;
`brellwick`, 12 facts x 3 phrasings written for this measurement and never tuned on before it),
and each --mix-general ratio, one `kecil tune` run with every other setting left to its default
(or the README's old fixed recipe with --recipe old: 6 epochs at lr 2e-3), then:

  held-out   the share of differently worded questions (…_heldout.jsonl) whose reply names the fact,
             asked greedily through llama.cpp with the GGUF LoRA, as `kecil generate --adapter` does
  general    kecil's forgetting check (kecil/tune/forgetting.py): six general questions asked
             without and with the adapter; `kept` = right before and still right after

JSON lines on stdout, a table on stderr. Replay answers are cached under KECIL_HOME, so the first
run with replay on a model also pays for answering the general prompts (its `replay_seconds`).

  flock /tmp/kecil-bench.lock .venv/bin/python bench/forgetting.py --mix 1 0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common.report import emit, table  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "tune" / "data"
RECIPES = {"default": {}, "old": {"epochs": 6, "lr": 2e-3}}


def held_out_share(model: str, adapter: Path, held_out: list[dict], threads: int | None) -> tuple[int, int]:
    from kecil.infer.generation import GenerationConfig
    from kecil.infer.load import load_model

    greedy = GenerationConfig(temperature=0, max_tokens=32)
    with load_model(model, adapter=adapter, threads=threads) as loaded:
        hits = sum(item["answer"].lower() in loaded.chat([{"role": "user", "content": item["question"]}], greedy).text.lower()
                   for item in held_out)
    return hits, len(held_out)


def one_run(model: str, facts: str, mix: float, recipe: str, work: Path, threads: int | None) -> dict:
    from kecil.tune.lora import TuneConfig, tune

    began: dict[str, float] = {}
    stages: dict[str, float] = {}  # seconds each stage took

    def on_stage(stage: str, done: int, total: int) -> None:
        began.setdefault(stage, time.perf_counter())
        if done == total:
            stages[stage] = time.perf_counter() - began[stage]

    output = work / f"{facts}-{recipe}-mix{mix:g}"
    started = time.perf_counter()
    result = tune(TuneConfig(model=model, data=DATA / f"{facts}_facts.jsonl", output=output, mix_general=mix,
                             threads=threads, **RECIPES[recipe]), on_stage=on_stage)
    seconds = time.perf_counter() - started
    held_out = [json.loads(line) for line in (DATA / f"{facts}_heldout.jsonl").read_text().splitlines()]
    hits, asked = held_out_share(model, output, held_out, threads)
    general = result.general
    return {
        "facts": facts, "recipe": recipe, "mix_general": mix, "steps": result.steps, "lr": result.plan.lr,
        "train_examples": result.train_examples, "replay_examples": result.replay_examples,
        "held_out": f"{hits}/{asked}", "general_before": sum(a.right_before for a in general),
        "general_after": sum(a.right_after for a in general),
        "general_kept": sum(a.right_before and a.right_after for a in general), "general_asked": len(general),
        "forgotten": [a.question for a in general if a.forgotten],
        "answers_after": {a.question: a.after for a in general},
        "threads": threads, "seconds": round(seconds, 1), "train_seconds": round(result.seconds, 1),
        "replay_seconds": round(stages["replay"], 1) if "replay" in stages else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", nargs="+", default=["velmora", "brellwick"])
    parser.add_argument("--mix", nargs="+", type=float, default=[1.0, 0.0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    # On a machine busy with other jobs, 2 torch threads waiting on each other ran 50x slower than 1.
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: kecil's)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for facts in args.facts:
            for mix in args.mix:
                row = one_run(args.model, facts, mix, args.recipe, Path(work), args.threads)
                emit(**row)
                rows.append(row)
    header = ["facts", "recipe", "mix_general", "steps", "replay_examples", "held_out", "general_before", "general_after",
              "general_kept", "seconds"]
    table("kecil tune: facts learned and general answers kept", header, [[row[k] for k in header] for row in rows])


if __name__ == "__main__":
    main()
