"""kecil on a CUDA GPU against transformers, peft and lm-eval, on a random-weight model the script builds.

One script for a GPU machine (issue 18), under 8 minutes on an H100-class card, JSON lines on stdout
and a table on stderr. The model is shaped like SmolLM2-1.7B (24 layers, hidden 2048, MLP 8192,
32 heads, a 49,152-word vocabulary), random weights in bfloat16, saved with a small byte-level
BPE tokenizer (tests/tiny_models.py; only its 512 ids ever occur, the vocabulary projection is the
full size): nothing is downloaded. Every measurement runs in its own process, engines alternating
over --rounds, medians reported:

  tune     kecil tune (defaults: packed rows, fused LoRA, bfloat16 base, float32 adapter) against
           transformers Trainer + peft (bf16=True over the bfloat16 model, batches padded to their
           longest example): the same synthetic chat data (400 examples of 40-250 tokens, loss on
           the answers), LoRA r=16 alpha=32 dropout 0.05 on all seven projections, AdamW at 2e-4,
           the same number of optimizer steps of about the same number of real tokens each
           (kecil's packed rows per step are sized to the Trainer's batch of 8 examples). Real
           tokens/s (padding excluded) and peak GPU memory (torch.cuda.max_memory_allocated).
  decode   kecil's torch backend (greedy, 128 new tokens after a ~100-token prompt) against
           transformers generate(): one stream, and 16 requests at once (kecil: 16 threads into
           the engine `kecil serve` uses for a Hugging Face model; transformers: one left-padded
           batch of 16). Tokens/s over the whole request, prompt included.
  eval     kecil's MMLU (25 questions, 5-shot, log-likelihood of A-D) on the torch backend
           against lm-evaluation-harness's HF backend (batch size 1, its default) on the same
           prompts: items/s.

Targets (issue 18): tune >= 1.3x the Trainer's tokens/s at <= its peak memory; decode >= 1.0x
generate single-stream and >= 0.8x its batched throughput at 16 concurrent requests.

`--tiny` runs the same on a 2-layer model of hidden size 64 with a few steps and tokens: it proves
the script on a CPU (`--device cpu`), it measures nothing worth keeping.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]  # _common, and tests/tiny_models.py for the tokenizer

from _common.isolation import run_isolated  # noqa: E402
from _common.report import emit, median, table  # noqa: E402

BENCH = "gpu"
SHAPES = {  # SmolLM2-1.7B's, and a tiny one for --tiny
    "full": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=49152, max_position_embeddings=8192, rope_theta=130000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048),
}
SIZES = {  # tune steps, decode tokens, eval questions, data examples
    "full": dict(steps=40, new_tokens=128, questions=25, examples=400),
    "tiny": dict(steps=3, new_tokens=8, questions=3, examples=40),
}
RANK, ALPHA, DROPOUT, LR, MAX_LENGTH, TRAINER_BATCH, CONCURRENT = 16, 32.0, 0.05, 2e-4, 256, 8, 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PARTS = {"tune": ("kecil", "trainer"), "decode": ("kecil", "transformers"), "eval": ("kecil", "lm-eval-hf")}
TIMEOUT_SECONDS = 900


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)), flush=True)
        return 0
    size = "tiny" if args.tiny else "full"
    parts = args.parts.split(",")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kecil-bench-gpu-") as tmp:
        folder, data, lm_eval_tasks = Path(tmp) / "model", Path(tmp) / "data.jsonl", Path(tmp) / "lm_eval"
        _spawn(args, "build", folder, data, lm_eval_tasks, size)
        common = {"bench": BENCH, "device": args.device, "model": f"random {size} (SmolLM2-1.7B shape)" if size == "full" else "random tiny"}
        results: dict[str, dict[str, list[dict]]] = {p: {e: [] for e in PARTS[p]} for p in parts}
        for round_no in range(1, args.rounds + 1):
            for part in parts:
                for engine in PARTS[part] if round_no % 2 else reversed(PARTS[part]):  # alternate who goes first
                    result = _spawn(args, f"{part}:{engine}", folder, data, lm_eval_tasks, size)
                    results[part][engine].append(result)
                    print(f"  round {round_no} {part} {engine}: {json.dumps(result)}", file=sys.stderr, flush=True)
        _report(results, common)
    emit(**common, total_seconds=round(time.perf_counter() - started, 1))
    return 0


def _spawn(args, worker: str, folder: Path, data: Path, lm_eval_tasks: Path, size: str) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--folder", str(folder), "--data", str(data),
               "--lm-eval-tasks", str(lm_eval_tasks), "--size", size, "--device", args.device]
    done = run_isolated(command, timeout=TIMEOUT_SECONDS, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{worker} failed:\n{done.stderr[-4000:]}")
    return {**json.loads(lines[-1]), "peak_rss_mib": round(done.peak_rss_mib)}


def _report(results: dict, common: dict) -> None:
    rows = []
    speed_keys = {"tune": "tokens_per_s", "decode": "single_tokens_per_s", "eval": "items_per_s"}
    summary: dict[tuple[str, str], dict] = {}
    for part, engines in results.items():
        for engine, runs in engines.items():
            keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
            med = {k: median([r[k] for r in runs]) for k in keys}
            summary[(part, engine)] = med
            emit(**common, part=part, engine=engine, rounds=len(runs), **{k: round(v, 3) for k, v in med.items()})
            rows.append((part, engine, med[speed_keys[part]], med.get("batched_tokens_per_s"), med.get("peak_gpu_mib"), med["peak_rss_mib"]))
    table("kecil vs transformers/peft/lm-eval (medians)", ("part", "engine", "speed", "16 at once tok/s", "peak GPU MiB", "peak RSS MiB"), rows)
    ratios = []
    if "tune" in results:
        k, t = summary[("tune", "kecil")], summary[("tune", "trainer")]
        ratios.append(("tune tokens/s kecil / Trainer+peft", k["tokens_per_s"] / t["tokens_per_s"], ">= 1.3"))
        if t.get("peak_gpu_mib"):
            ratios.append(("tune peak GPU memory kecil / Trainer+peft", k["peak_gpu_mib"] / t["peak_gpu_mib"], "<= 1.0"))
    if "decode" in results:
        k, t = summary[("decode", "kecil")], summary[("decode", "transformers")]
        ratios.append(("decode single-stream kecil / generate", k["single_tokens_per_s"] / t["single_tokens_per_s"], ">= 1.0"))
        ratios.append((f"decode {CONCURRENT} concurrent kecil / generate batched", k["batched_tokens_per_s"] / t["batched_tokens_per_s"], ">= 0.8"))
    if "eval" in results:
        ratios.append(("eval items/s kecil / lm-eval HF", summary[("eval", "kecil")]["items_per_s"] / summary[("eval", "lm-eval-hf")]["items_per_s"], None))
    for name, value, target in ratios:
        emit(**common, ratio=name, value=round(value, 3), target=target)
        print(f"{name}: {value:.2f}" + (f" (target {target})" if target else ""), file=sys.stderr)


# --- workers: each runs in its own process ---
def _worker(args) -> dict:
    part, _, engine = args.worker.partition(":")
    if part == "build":
        return _build(Path(args.folder), Path(args.data), Path(args.lm_eval_tasks), args.size, args.device)
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = {("tune", "kecil"): _tune_kecil, ("tune", "trainer"): _tune_trainer, ("decode", "kecil"): _decode_kecil,
              ("decode", "transformers"): _decode_transformers, ("eval", "kecil"): _eval_kecil,
              ("eval", "lm-eval-hf"): _eval_lm_eval}[(part, engine)](args)
    if args.device.startswith("cuda"):
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def _build(folder: Path, data: Path, lm_eval_tasks: Path, size: str, device: str) -> dict:
    """The random model (initialised on the GPU when there is one: seconds instead of a minute), its
    tokenizer, the training data and the lm-eval task."""
    import torch
    import transformers

    from tests.tiny_models import build_tokenizer, training_lines

    tokenizer = build_tokenizer()
    config = transformers.LlamaConfig(**SHAPES[size], tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    lines, rng = training_lines(), random.Random(0)
    with data.open("w") as out:
        for _ in range(SIZES[size]["examples"]):
            question, answer = rng.choice(lines), " ".join(rng.sample(lines, rng.randint(1, 8)))
            out.write(json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}) + "\n")
    lm_eval_tasks.mkdir()
    bench_eval = _bench_eval()
    bench_eval.write_lm_eval_task(bench_eval.kecil_prompts(SIZES[size]["questions"]), lm_eval_tasks)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def _bench_eval():
    """bench/eval.py as a module (its MMLU prompts and lm-eval task writer), under a name that is not `eval`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_eval", ROOT / "bench" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _examples(folder: Path, data: Path):
    """Token ids and trained flags of the data, rendered exactly as kecil tune renders them."""
    from transformers import AutoTokenizer

    from kecil.infer.chat_template import ChatTemplate
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve
    from kecil.tune.data import PromptStyle, read_dataset, tokenize_dataset

    ref = resolve(str(folder))
    info = inspect_model(ref)
    style = PromptStyle(ChatTemplate(info.chat_template, info.bos_token, info.eos_token), info.add_bos, info.bos_token, info.eos_token, None)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def tokenize(text):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], encoded["offset_mapping"]

    return tokenizer, tokenize_dataset(read_dataset(data), style, tokenize, tokenizer.bos_token_id, MAX_LENGTH)[0]


def _tune_kecil(args) -> dict:
    from kecil.tune.lora import TuneConfig, tune

    _, examples = _examples(Path(args.folder), Path(args.data))
    mean_length = sum(len(e.ids) for e in examples) / len(examples)
    rows = max(1, round(TRAINER_BATCH * mean_length / MAX_LENGTH))  # about the Trainer's real tokens per step
    with tempfile.TemporaryDirectory() as out:
        result = tune(TuneConfig(model=args.folder, data=Path(args.data), output=Path(out) / "adapter", rank=RANK, alpha=ALPHA,
                                 dropout=DROPOUT, lr=LR, batch_size=rows, max_length=MAX_LENGTH, val_split=0, epochs=50,
                                 max_steps=SIZES[args.size]["steps"], save_every=10**6, device=args.device))
    return {"tokens_per_s": result.tokens / result.seconds, "real_tokens": result.tokens, "steps": result.steps,
            "seconds": result.seconds, "final_loss": result.train_loss, "rows_per_step": rows}


def _tune_trainer(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    tokenizer, examples = _examples(Path(args.folder), Path(args.data))
    on_gpu = args.device.startswith("cuda")
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.bfloat16 if on_gpu else torch.float32)
    rows = [{"input_ids": e.ids, "labels": [t if keep else -100 for t, keep in zip(e.ids, e.trained)]} for e in examples]
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=list(TARGETS), task_type="CAUSAL_LM"))
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    counted = {"real": 0}

    def collate(batch):
        out = collator(batch)
        counted["real"] += int(out["attention_mask"].sum())
        return out

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_train_end(self, *a, **k):
            if on_gpu:
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.started

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, per_device_train_batch_size=TRAINER_BATCH, max_steps=SIZES[args.size]["steps"], learning_rate=LR,
            lr_scheduler_type="cosine", warmup_steps=0.05, max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to=[],
            use_cpu=not on_gpu, bf16=on_gpu, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=training, train_dataset=rows, data_collator=collate, callbacks=[clock])
        outcome = trainer.train()
    return {"tokens_per_s": counted["real"] / clock.seconds, "real_tokens": counted["real"], "steps": outcome.global_step,
            "seconds": clock.seconds, "final_loss": outcome.training_loss}


def _prompts(tokenizer) -> list[list[int]]:
    """CONCURRENT prompts of ~100 tokens (a few differ in length, so a batch needs padding)."""
    from tests.tiny_models import training_lines

    lines = training_lines()
    return [tokenizer(" ".join(lines[i : i + 6 + i % 3]), add_special_tokens=False)["input_ids"][:100 + i % 4] for i in range(CONCURRENT)]


def _decode_kecil(args) -> dict:
    from kecil.infer.engine import open_engine
    from kecil.infer.generation import GenerationConfig
    from kecil.infer.hardware import physical_cores
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve

    ref = resolve(args.folder)
    new = SIZES[args.size]["new_tokens"]
    config = GenerationConfig(temperature=0, max_tokens=new, ignore_eos=True)
    engine = open_engine(ref, inspect_model(ref), backend="torch", context_length=1024, threads=physical_cores(),
                         parallel=CONCURRENT, device=args.device)  # what `kecil serve` opens for this folder
    with engine:
        prompts = _prompts(engine.backend._tokenizer)
        list(engine.stream_ids(prompts[0], GenerationConfig(temperature=0, max_tokens=4, ignore_eos=True)))  # warm-up
        started = time.perf_counter()
        single = list(engine.stream_ids(prompts[0], config))[-1].usage.completion_tokens
        single_seconds = time.perf_counter() - started
        counts = [0] * CONCURRENT

        def request(i: int) -> None:
            counts[i] = list(engine.stream_ids(prompts[i], config))[-1].usage.completion_tokens

        threads = [threading.Thread(target=request, args=(i,)) for i in range(CONCURRENT)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batched_seconds = time.perf_counter() - started
    return {"single_tokens_per_s": single / single_seconds, "batched_tokens_per_s": sum(counts) / batched_seconds,
            "new_tokens": single}


def _decode_transformers(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_gpu = args.device.startswith("cuda")
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.bfloat16 if on_gpu else torch.float32,
                                                 device_map=args.device if on_gpu else None).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    prompts, new = _prompts(tokenizer), SIZES[args.size]["new_tokens"]

    def timed(ids: list[list[int]], tokens: int) -> float:
        width = max(map(len, ids))  # left padding, as generate() wants for a batch
        batch = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids], device=model.device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=model.device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(batch, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        if on_gpu:
            torch.cuda.synchronize()
        assert out.shape[1] - width == tokens
        return time.perf_counter() - started

    timed(prompts[:1], 4)  # warm-up
    single = timed(prompts[:1], new)
    batched = timed(prompts, new)
    return {"single_tokens_per_s": new / single, "batched_tokens_per_s": CONCURRENT * new / batched, "new_tokens": new}


def _eval_kecil(args) -> dict:
    from kecil.eval.cache import ResultCache
    from kecil.eval.run import EvalConfig, run_task
    from kecil.eval.tasks import get_task
    from kecil.infer.load import load_model

    bench_eval = _bench_eval()
    items = SIZES[args.size]["questions"]
    config = EvalConfig(models=(args.folder,), tasks=("mmlu",), limit=items, seed=bench_eval.SEED, shots=bench_eval.SHOTS,
                        system=False, cache=False, device=args.device)
    with load_model(args.folder, backend="torch", device=args.device) as backend, ResultCache(enabled=False) as cache:
        started = time.perf_counter()
        result = run_task(backend, "bench", get_task("mmlu"), config, cache, "bench", lambda *a: None)
        seconds = time.perf_counter() - started
    return {"items_per_s": result.n / seconds, "items": result.n, "acc": result.value}


def _eval_lm_eval(args) -> dict:
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    bench_eval = _bench_eval()
    on_gpu = args.device.startswith("cuda")
    model = HFLM(pretrained=args.folder, dtype="bfloat16" if on_gpu else "float32", device=args.device, batch_size=1)
    started = time.perf_counter()
    results = simple_evaluate(model=model, tasks=[bench_eval.LM_EVAL_TASK], task_manager=TaskManager(include_path=args.lm_eval_tasks),
                              num_fewshot=0, log_samples=False, random_seed=bench_eval.SEED, bootstrap_iters=0)
    seconds = time.perf_counter() - started
    items = int(results["n-samples"][bench_eval.LM_EVAL_TASK]["effective"])
    return {"items_per_s": items / seconds, "items": items, "acc": results["results"][bench_eval.LM_EVAL_TASK]["acc,none"]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark), cuda:N, or cpu (with --tiny: proves the script runs)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, a few steps and tokens: a smoke run, not a measurement")
    parser.add_argument("--rounds", type=int, default=2, help="runs per engine, alternating")
    parser.add_argument("--parts", default="tune,decode,eval", help="comma-separated subset of tune, decode, eval")
    for name in ("--worker", "--folder", "--data", "--lm-eval-tasks", "--size"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
