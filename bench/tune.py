"""LoRA training speed and memory: `kecil tune` against a plain transformers Trainer + peft.

Same model (the embedded SmolLM2-135M-Instruct, dequantized from the GGUF), same data (`--data
handbook`: the Velmora chat set from tests/tune/data; `--data alpaca`: 200 examples of LLaMA-Factory's
Alpaca demo; loss on the answers only), same token ids (both
render examples with kecil's chat-template code), same LoRA (r=16, alpha=32, dropout 0.05 on all
seven linear projections), same optimizer (AdamW, lr 2e-4, cosine with 5% warm-up), same
epochs and sequence limit (256 tokens):

  kecil     kecil.tune.lora.tune with its defaults: examples packed into 256-token rows (KECIL_ROWS
            rows per step), logits only where the loss is taken, the fused LoRA forward
            (kecil/tune/fused_lora.py), and precision auto: the frozen base in bfloat16 where the
            CPU computes it natively (AMX / AVX512-BF16), else float32
  kecil-fp32  the same with `--precision float32`
  kecil-qlora  the same on the base quantized to kecil's weight-only int4, group 64
            (`kecil tune --base-bits 4`): less memory, some speed spent dequantizing
  trainer   transformers Trainer over peft's get_peft_model: 4 examples per step, each batch
            padded to its longest example (DataCollatorForSeq2Seq), full logits, float32
  trainer-bf16  the same Trainer with bf16=True (torch.autocast to bfloat16 over a float32 model)

Each run is its own process (peak RSS is its own); engines alternate over --rounds against this
VM's drift, and the medians are reported. "Real tokens" are example tokens, padding excluded;
the time is the training loop only (model loading excluded for both). JSON lines on stdout, a
table on stderr. Run under `flock /tmp/kecil-bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common when run from anywhere

from _common.isolation import run_isolated  # noqa: E402
from _common.machine import cpu_model, physical_cores  # noqa: E402
from _common.report import emit, median, table  # noqa: E402

BENCH = "tune"
MODEL = "smollm2-135m"
HANDBOOK = Path(__file__).resolve().parents[1] / "tests" / "tune" / "data" / "velmora_facts.jsonl"
ALPACA_EXAMPLES = 200  # of LLaMA-Factory's 1,000: ~1 minute per run
# kecil's packed rows per step, so that a step holds at least as many real tokens as the Trainer's
# batch of 4 padded examples (same effective batch): the handbook's short examples pack ~5 to a
# row; Alpaca's longer ones ~1.5.
KECIL_ROWS = {"handbook": 1, "alpaca": 3}
ENGINES = ("kecil", "kecil-fp32", "kecil-qlora", "trainer", "trainer-bf16")
RANK, ALPHA, DROPOUT, LR, MAX_LENGTH, TRAINER_BATCH = 16, 32.0, 0.05, 2e-4, 256, 4
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TIMEOUT_SECONDS = 1200


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    threads = args.threads or physical_cores()
    engines = [e for e in ENGINES if e in args.engines.split(",")] if args.engines else list(ENGINES)
    print(f"{BENCH}: {MODEL}, {args.epochs} epochs of {_data(args.data, args.examples).name}, on {cpu_model()}, {threads} threads", file=sys.stderr, flush=True)
    common = {"bench": BENCH, "model": MODEL, "data": args.data, "threads": threads, "epochs": args.epochs}
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for round_no in range(1, args.rounds + 1):
        for engine in engines:
            print(f"  round {round_no}/{args.rounds}: {engine} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--worker", engine, "--epochs", str(args.epochs), "--threads", str(threads),
                   "--examples", str(args.examples), "--data", args.data]
            done = run_isolated(cmd, timeout=TIMEOUT_SECONDS)
            if done.returncode != 0:
                emit(**common, engine=engine, status="failed", reason=done.stderr.strip().splitlines()[-1:])
                return 1
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs[engine].append({**result, "peak_rss_mib": done.peak_rss_mib})
            emit(**common, engine=engine, round=round_no, **runs[engine][-1])
    rows = []
    summary = {}
    for engine in engines:
        summary[engine] = {
            "real_tokens_per_second": median([r["real_tokens"] / r["seconds"] for r in runs[engine]]),
            "peak_rss_mib": median([r["peak_rss_mib"] for r in runs[engine]]),
            "padded_share": median([r["padded_tokens"] / max(1, r["real_tokens"] + r["padded_tokens"]) for r in runs[engine]]),
            "final_loss": median([r["final_loss"] for r in runs[engine]]),
        }
        emit(**common, engine=engine, statistic="median", rounds=args.rounds, **summary[engine])
        rows.append([engine, summary[engine]["real_tokens_per_second"], summary[engine]["peak_rss_mib"], summary[engine]["padded_share"], summary[engine]["final_loss"]])
    table(f"{BENCH} (medians of {args.rounds} rounds)", ["engine", "real tok/s", "peak RSS MiB", "padding", "final loss"], rows)
    for mine in ("kecil", "kecil-fp32", "kecil-qlora"):
        for anchor in ("trainer", "trainer-bf16"):
            if mine in summary and anchor in summary:
                speedup = summary[mine]["real_tokens_per_second"] / summary[anchor]["real_tokens_per_second"]
                ram = summary[mine]["peak_rss_mib"] / summary[anchor]["peak_rss_mib"]
                emit(**common, comparison=f"{mine}/{anchor}", tokens_per_second_ratio=speedup, peak_rss_ratio=ram)
                print(f"{mine} / {anchor}: {speedup:.2f}x tokens/s at {ram:.2f}x peak RSS", file=sys.stderr)
    return 0


def _data(name: str, examples: int) -> Path:
    """The data file, or a copy of its first `examples` lines (a quick smoke run).

    handbook: the 48 short Velmora chat examples of the facts test, all about the same length
    (little padding for the Trainer to waste); alpaca: the first 200 examples of LLaMA-Factory's
    alpaca_en_demo.json, instructions whose lengths vary as real data's do."""
    if name == "alpaca":
        from _common.alpaca import alpaca_jsonl

        data = alpaca_jsonl(ALPACA_EXAMPLES)
    else:
        data = HANDBOOK
    if not examples:
        return data
    subset = Path(tempfile.mkdtemp()) / data.name
    subset.write_text("".join(data.read_text().splitlines(keepends=True)[:examples]))
    return subset


def _examples(data: Path):
    """Token ids and trained-token flags of the data, rendered exactly as kecil tune renders them."""
    from kecil.infer.chat_template import ChatTemplate
    from kecil.infer.torch_backend import load_transformers
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve
    from kecil.tune.data import PromptStyle, read_dataset, tokenize_dataset

    ref = resolve(MODEL)
    info = inspect_model(ref)
    style = PromptStyle(ChatTemplate(info.chat_template, info.bos_token, info.eos_token), info.add_bos, info.bos_token, info.eos_token, ref.system_prompt)
    model, tokenizer = load_transformers(ref)

    def tokenize(text):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], encoded["offset_mapping"]

    examples, _, _ = tokenize_dataset(read_dataset(data), style, tokenize, tokenizer.bos_token_id, MAX_LENGTH)
    return model, tokenizer, examples


def _worker(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    if args.worker.startswith("kecil"):
        from kecil.tune.lora import TuneConfig, tune

        bits = 4 if args.worker == "kecil-qlora" else None
        precision = "float32" if args.worker == "kecil-fp32" else "auto"
        with tempfile.TemporaryDirectory() as out:
            result = tune(TuneConfig(model=MODEL, data=_data(args.data, args.examples), output=Path(out) / "adapter", epochs=args.epochs, rank=RANK, alpha=ALPHA,
                                     dropout=DROPOUT, lr=LR, batch_size=KECIL_ROWS[args.data], max_length=MAX_LENGTH, val_split=0, save_every=10**6,
                                     threads=args.threads, base_bits=bits, precision=precision))
        print(json.dumps({"real_tokens": result.tokens, "padded_tokens": 0, "seconds": result.seconds, "steps": result.steps,
                          "final_loss": result.train_loss}))
        return 0
    return _trainer_worker(args)


def _trainer_worker(args) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    model, tokenizer, examples = _examples(_data(args.data, args.examples))
    rows = [{"input_ids": e.ids, "labels": [t if keep else -100 for t, keep in zip(e.ids, e.trained)]} for e in examples]
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=list(TARGETS), task_type="CAUSAL_LM"))
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    counted = {"real": 0, "padded": 0}

    def collate(batch):
        out = collator(batch)
        real = int(out["attention_mask"].sum())
        counted["real"] += real
        counted["padded"] += out["attention_mask"].numel() - real
        return out

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.started

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, per_device_train_batch_size=TRAINER_BATCH, num_train_epochs=args.epochs, learning_rate=LR,
            lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, bf16=args.worker == "trainer-bf16", dataloader_num_workers=0, seed=0, disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=training, train_dataset=rows, data_collator=collate, callbacks=[clock])
        outcome = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"real_tokens": counted["real"], "padded_tokens": counted["padded"], "seconds": clock.seconds,
                      "steps": outcome.global_step, "final_loss": losses[-1] if losses else None}))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="passes over the data per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per engine, alternating")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    parser.add_argument("--data", choices=("handbook", "alpaca"), default="handbook", help="the training set (see _data)")
    parser.add_argument("--examples", type=int, default=0, help="train on the first N examples only (0 = all; a smoke run)")
    parser.add_argument("--engines", default="", help=f"comma-separated subset of {','.join(ENGINES)} (default: all)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
