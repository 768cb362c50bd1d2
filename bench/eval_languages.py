"""kecil eval in the languages kecil's users speak: four models, every bundled XCOPA language, the
Hindi and Malay tasks and MMLU, with size, decode speed and peak RAM; and lm-evaluation-harness on
the same XCOPA file, for agreement and items per second.

Part 1 (`--part languages`): `kecil eval MODEL --tasks xcopa_id,...,mmlu --limit N` for each of
SmolLM2-135M, Gemma 3 270M, Qwen2.5-Coder 0.5B and 1.5B (kecil.eval.run.evaluate, its result cache
on, so a rerun after a kill goes on where it stopped). Each task's own default shots. One JSON line
per (model, task), per model's system figures, and per language's tokenizer fertility; a table on
stderr and, with --plot, quality against file size per language.

Part 2 (`--part agreement`): XCOPA (--agree-language, all 500 test items, zero-shot, the harness's
own formulation) scored by kecil and by lm-evaluation-harness 0.4.13 (HF backend, the same GGUF
dequantized to float32, batch size 1; its own xcopa utils with the bundled file as the dataset, so
offline). Accuracies must agree within 1 point; items per second after loading is the speed figure
(target: kecil >= 2x lm-eval).

    python bench/eval_languages.py [--part languages|agreement|both] [--limit 200] [--plot docs/img/eval-languages.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common.report import emit, table  # noqa: E402

MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
XCOPA = ("xcopa_id", "xcopa_th", "xcopa_vi", "xcopa_zh", "xcopa_ta")
TASKS = (*XCOPA, "gk_hi", "mcq_ms", "mmlu")
LANGUAGE = {"xcopa_id": "id", "xcopa_th": "th", "xcopa_vi": "vi", "xcopa_zh": "zh", "xcopa_ta": "ta", "gk_hi": "hi",
            "mcq_ms": "ms", "mmlu": "en"}


def languages(models: tuple[str, ...], limit: int, threads: int | None, plot: Path | None) -> None:
    from kecil.eval.run import EvalConfig, evaluate

    rows, sizes = [], {}
    for model in models:
        started = time.monotonic()
        print(f"{model}: {', '.join(TASKS)} (limit {limit})", file=sys.stderr, flush=True)
        report = evaluate(EvalConfig(models=(model,), tasks=TASKS, limit=limit, threads=threads),
                          progress=lambda *a: None)
        scores = {}
        for r in report.results:
            emit(part="languages", model=model, task=r.task, language=LANGUAGE.get(r.task), metric=r.metric,
                 value=None if r.value is None else round(r.value, 4), ci=[round(x, 4) for x in r.ci] if r.ci else None,
                 n=r.n, shots=r.shots, seconds=round(r.seconds, 1), error=r.error, chance=r.chance)
            scores[r.task] = r.value
        figures = report.systems.get(model)
        if figures is not None:
            emit(part="languages", model=model, metric="system", backend=figures.backend, size_bytes=figures.size_bytes,
                 peak_rss_bytes=figures.peak_rss_bytes, decode_tokens_per_second=round(figures.decode_tokens_per_second, 2))
            sizes[model] = figures.size_bytes
        for f in report.fertility.get(model, []):
            emit(part="languages", model=model, metric="fertility", language=f.language, tokens=f.tokens, words=f.words,
                 english_tokens=f.english_tokens)
        rows.append([model, *[None if scores.get(t) is None else round(100 * scores[t], 1) for t in TASKS],
                     None if figures is None else round(figures.size_bytes / 2**20, 1),
                     None if figures is None else round(figures.decode_tokens_per_second, 1),
                     None if figures is None else round(figures.peak_rss_bytes / 2**20), round(time.monotonic() - started)])
    table(f"accuracy % ({limit} items per task at most), size, decode and peak RAM",
          ["model", *TASKS, "MiB", "tok/s", "RAM MiB", "s"], rows)
    if plot and sizes:
        _plot(plot, rows, sizes)


def _plot(path: Path, rows: list, sizes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, task in enumerate(TASKS, start=1):
        points = [(sizes[r[0]] / 2**20, r[i]) for r in rows if r[0] in sizes and r[i] is not None]
        if points:
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=f"{task} ({LANGUAGE[task]})")
    ax.set_xscale("log")
    ax.set_xlabel("GGUF file size (MiB, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("kecil eval: quality against size, per language")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"plot: {path}", file=sys.stderr)


def agreement(model: str, language: str, threads: int) -> None:
    """kecil and lm-eval on the same XCOPA test file, zero-shot, the same GGUF."""
    from kecil.eval.run import EvalConfig, evaluate
    from kecil.models.reference import resolve

    task = f"xcopa_{language}"
    started = time.perf_counter()
    (result,) = evaluate(EvalConfig(models=(model,), tasks=(task,), shots=0, threads=threads, system=False, cache=False),
                         progress=lambda *a: None).results
    kecil_seconds = time.perf_counter() - started  # loading included: not flattered
    kecil = emit(part="agreement", engine="kecil-eval", model=model, task=task, n=result.n, acc=round(result.value, 4),
                 seconds=round(kecil_seconds, 1), items_per_second=round(result.n / kecil_seconds, 2),
                 backend=result.extra.get("backend"))
    lm = _lm_eval(resolve(model).path, language, threads)
    lm = emit(part="agreement", engine="lm-eval-hf", model=model, task=task, n=lm["n"], acc=round(lm["acc"], 4),
              seconds=round(lm["seconds"], 1), items_per_second=round(lm["n"] / lm["seconds"], 2))
    gap = abs(kecil["acc"] - lm["acc"])
    emit(part="agreement", metric="accuracy_gap_points", value=round(100 * gap, 2), target="<= 1",
         met=gap <= 0.01, speed_ratio=round(kecil["items_per_second"] / lm["items_per_second"], 2), speed_target=">= 2")
    table(f"{task} zero-shot, {model}: kecil eval against lm-evaluation-harness",
          ["engine", "items", "accuracy %", "seconds", "items/s"],
          [[r["engine"], r["n"], round(100 * r["acc"], 1), r["seconds"], r["items_per_second"]] for r in (kecil, lm)])


def _lm_eval(gguf: Path, language: str, threads: int) -> dict:
    """lm-eval's own xcopa task definition (its utils' connectors) over kecil's bundled files."""
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from kecil.eval.language_tasks import bundled_file

    torch.set_num_threads(threads)
    name = f"kecil_bench_xcopa_{language}"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "xcopa_utils.py").write_text("from lm_eval.tasks.xcopa.utils import *  # noqa: F403\n")
        (Path(folder) / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    validation: {bundled_file(f'xcopa/val.{language}.jsonl')}\n    test: {bundled_file(f'xcopa/test.{language}.jsonl')}\n"
            "output_type: multiple_choice\nvalidation_split: validation\ntest_split: test\n"
            f"doc_to_text: !function xcopa_utils.doc_to_text_{language}\ndoc_to_target: label\n"
            "doc_to_choice: !function xcopa_utils.doc_to_choice\nmetric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n")
        model = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", device="cpu", batch_size=1)
        loaded = time.perf_counter()
        results = simple_evaluate(model=model, tasks=[name], task_manager=TaskManager(include_path=folder),
                                  num_fewshot=0, log_samples=False, bootstrap_iters=0)
        seconds = time.perf_counter() - loaded
    return {"n": int(results["n-samples"][name]["effective"]), "acc": results["results"][name]["acc,none"], "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("languages", "agreement", "both"), default="both")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated built-in names")
    parser.add_argument("--limit", type=int, default=200, help="items per task at most (a fixed subset)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--agree-model", default="smollm2-135m")
    parser.add_argument("--agree-language", default="id")
    args = parser.parse_args()
    if args.part in ("agreement", "both"):
        agreement(args.agree_model, args.agree_language, args.threads or 2)
    if args.part in ("languages", "both"):
        languages(tuple(args.models.split(",")), args.limit, args.threads, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
