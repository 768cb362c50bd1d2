"""LoRA fine-tuning on a CPU: `tune(TuneConfig(...))` trains a low-rank adapter on your JSONL data.

LoRA: https://arxiv.org/abs/2106.09685. The base model stays frozen, in bfloat16 where the
hardware computes it natively and float32 elsewhere (`precision`); only the small A/B matrices
train, always held in float32, through kecil's fused LoRA forward (kecil/tune/fused_lora.py);
logits and loss are float32. Examples are packed into rows (kecil/tune/packing.py) and the vocabulary
projection is computed only at the positions that carry loss, which on chat data is a fraction
of the tokens: the two together are where kecil's speed over a padded Trainer comes from.
Attention runs per example rather than over whole rows (kecil/tune/packed_attention.py). The
run is a fixed function of (data, settings, seed), checkpointed every `save_every` steps, and a
killed run resumed with `resume=True` ends with the same adapter as one never interrupted.
The settings left unset are chosen from the data before training (kecil/tune/plan.py), so a few
dozen examples get enough optimizer steps to learn. Launched with `accelerate launch`, the same
code trains data-parallel over several processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kecil.errors import ConfigError
from kecil.infer.hardware import PRECISIONS, check_device_name, device_field
from kecil.tune import checkpoint as ckpt
from kecil.tune.adapter_files import SUMMARY_FILE, write_adapter, write_gguf_adapter
from kecil.tune.base_model import base_precision, quantize_base, to_bfloat16_base
from kecil.tune.data import Dataset, PromptStyle, read_dataset, split_validation, tokenize_dataset
from kecil.tune.packing import plan_epochs
from kecil.tune.plan import TrainingPlan, plan_training, validation_share
from kecil.tune.progress import TuneProgress
from kecil.tune.training import lr_schedule, train_steps

__all__ = ["LINEAR_TARGETS", "SUMMARY_FILE", "TuneConfig", "TuneProgress", "TuneResult", "TrainingPlan", "base_precision",
           "quantize_base", "tune"]

log = logging.getLogger(__name__)

# Every linear projection in the transformer blocks: LoRA on all of them learns facts far better
# than the attention-only default of the original paper, at a small cost in adapter size.
LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": LINEAR_TARGETS,
    "mistral": LINEAR_TARGETS,
    "qwen2": LINEAR_TARGETS,
    "qwen3": LINEAR_TARGETS,
    "gemma2": LINEAR_TARGETS,
    "gemma3": LINEAR_TARGETS,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),  # fused projections
}
DEFAULT_MAX_LENGTH = 512  # tokens an example is cut to when --max-length is not given


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class TuneConfig:
    """Settings of one LoRA run. Those left as None are chosen from the data (kecil/tune/plan.py)."""

    model: str = field(metadata=_help("Base model: built-in name, .gguf file (trained as float) or Hugging Face folder."))
    data: Path = field(metadata=_help(
        "JSONL training data: chat ('messages'), instruction ('instruction'/'input'/'output') or plain 'text', one object per line."))
    output: Path = field(metadata=_help("Folder for the adapter; its checkpoints go in OUTPUT/checkpoints."))
    epochs: int | None = field(default=None, metadata=_help(
        "Passes over the training data (default: 3, more for small data so the run makes enough optimizer steps)."))
    rank: int = field(default=16, metadata=_help("LoRA rank: the width of the low-rank update."))
    alpha: float | None = field(default=None, metadata=_help("LoRA alpha, the update's scale (default: 2 x rank)."))
    dropout: float = field(default=0.05, metadata=_help("LoRA dropout."))
    target_modules: tuple[str, ...] | None = field(default=None, metadata=_help(
        "Module names to adapt (default: every linear layer of the architecture)."))
    lr: float | None = field(default=None, metadata=_help(
        "Peak learning rate (default: 2e-4, or 1e-3 when small data makes each step a single short row)."))
    warmup: float = field(default=0.05, metadata=_help("Share of the steps spent warming the learning rate up from 0."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradients are clipped to this norm."))
    batch_size: int | None = field(default=None, metadata=_help(
        "Packed rows per micro-batch (default: 4, or 1 for small data)."))
    grad_accum: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    max_length: int | None = field(default=None, metadata=_help(
        "Tokens per packed row; longer examples are cut (and counted). Default: examples are cut at 512 and "
        "rows are sized from the data (shorter rows, so more steps, for small data)."))
    pack: bool = field(default=True, metadata=_help("Pack several examples into each row (no attention between them)."))
    val_split: float | None = field(default=None, metadata=_help(
        "Share of examples held out for validation loss (default: 10%, at most 200, from 100 examples up; none below)."))
    val_data: Path | None = field(default=None, metadata=_help("A separate JSONL validation file (instead of --val-split)."))
    eval_every: int = field(default=50, metadata=_help("Steps between validation losses (and one at the end)."))
    save_every: int = field(default=50, metadata=_help("Steps between checkpoints (and one at the end)."))
    max_steps: int | None = field(default=None, metadata=_help("Stop after this many optimizer steps (benchmarks, smoke runs)."))
    seed: int = field(default=0, metadata=_help("Random seed: the same seed, data and settings give the same adapter."))
    resume: bool = field(default=False, metadata=_help(
        "Continue the run in --output from its newest intact checkpoint."))
    threads: int | None = field(default=None, metadata=_help("CPU threads (default: the physical cores)."))
    base_bits: int | None = field(default=None, metadata=_help(
        "QLoRA: hold the frozen base as int4 or int8 weights (4 or 8) to cut memory; default float."))
    base_group_size: int = field(default=64, metadata=_help(
        "With --base-bits: input columns per quantization scale (32, 64 or 128)."))
    check_general: bool = field(default=False, metadata=_help(
        "After training, ask a few general questions without and with the adapter and report what it made the "
        "model forget (kecil/tune/forgetting.py; a few seconds on a small model)."))
    # auto = bfloat16 where the CPU/GPU computes it natively (AMX, AVX512-BF16), where with the fused
    # LoRA path it measured faster than float32 (docs/benchmarks.md); else float32.
    precision: str = field(default="auto", metadata=_help(
        "The frozen base's dtype: float32, bfloat16, or auto (bfloat16 where the CPU/GPU computes it natively). "
        "The adapter weights are always float32."))
    device: str = device_field()

    def __post_init__(self) -> None:
        check_device_name(self.device)
        for name in ("epochs", "rank", "batch_size", "grad_accum", "eval_every", "save_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 16:
            raise ConfigError(f"max-length must be at least 16 tokens, got {self.max_length}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.warmup < 1 or not 0 <= (self.val_split or 0) < 1:
            raise ConfigError("warmup and val-split are shares: give a number in [0, 1)")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"learning rate must be above 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max-steps must be at least 1, got {self.max_steps}")
        if self.base_bits not in (None, 4, 8):
            raise ConfigError(f"base-bits must be 4 or 8 (or left out for a float32 base), got {self.base_bits}")
        if self.base_group_size not in (32, 64, 128):
            raise ConfigError(f"base-group-size must be 32, 64 or 128, got {self.base_group_size}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    @property
    def cut_length(self) -> int:
        """Tokens an example is cut to."""
        return self.max_length or DEFAULT_MAX_LENGTH


@dataclass(frozen=True)
class TuneResult:
    output: Path
    format: str
    train_examples: int
    val_examples: int
    cut_examples: int  # longer than max_length, cut
    dropped_examples: int  # nothing left to learn after the cut
    steps: int
    train_loss: float | None  # mean token loss of the last step
    val_loss: float | None
    first_val_loss: float | None
    tokens: int  # real (unpadded) tokens trained on
    seconds: float
    resumed_from_step: int | None = None
    history: list[dict] = field(default_factory=list)
    gguf_adapter: Path | None = None  # the adapter as a GGUF LoRA for llama.cpp, when it has one
    plan: TrainingPlan | None = None
    warnings: tuple[str, ...] = ()  # what the user should know (a damaged checkpoint passed over, a short plan)
    general: tuple = ()  # forgetting.GeneralAnswer per general question, with check_general

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def lora_targets(architecture: str, requested: tuple[str, ...] | None) -> list[str]:
    if requested:
        return list(requested)
    return list(DEFAULT_TARGETS.get(architecture, LINEAR_TARGETS))


@dataclass
class _Run:
    """Everything the optimizer loop (kecil/tune/training.py: train_steps) and the write-out share, built by _set_up."""

    config: TuneConfig
    output: Path
    dataset: Dataset
    ref: object  # kecil.models.reference.ModelRef
    accelerator: object
    model: object  # as prepared by accelerate (DDP-wrapped under several processes)
    inner: object  # the peft model itself
    trainable: list
    optimizer: object
    scheduler: object
    pad_id: int
    train: list
    val: list
    val_batches: list
    batches: list  # every micro-batch of the run, in order
    plan: TrainingPlan
    cut: int
    dropped: int
    targets: list[str]
    precision: str
    state: ckpt.TrainState
    resumed_from: int | None = None
    warnings: list[str] = field(default_factory=list)
    # filled in by the loop
    history: list[dict] = field(default_factory=list)
    val_loss: float | None = None
    first_val: float | None = None
    train_loss: float | None = None
    tokens: int = 0
    seconds: float = 0.0

    @property
    def per_step(self) -> int:
        return self.config.grad_accum * self.accelerator.num_processes

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.accelerator.is_main_process:
            log.warning("kecil tune: %s", message)


def tune(
    config: TuneConfig,
    progress: Callable[[TuneProgress], None] | None = None,
    on_plan: Callable[[TrainingPlan], None] | None = None,
) -> TuneResult:
    """Train a LoRA adapter for `config.model` on `config.data` and write it to `config.output`.

    `on_plan` gets the training plan once it is fixed, before the first step (the CLI prints
    `plan.describe()`); `progress` gets a TuneProgress after every optimizer step."""
    run = _set_up(config)
    if run.accelerator.is_main_process:
        if on_plan is not None:
            on_plan(run.plan)  # its describe() ends with the plan's warnings
        else:
            for warning in run.plan.warnings:
                log.warning("kecil tune: %s", warning)
    train_steps(run, progress)
    gguf_adapter = _write_out(run)
    general = ()
    if config.check_general and run.accelerator.is_main_process:
        from kecil.tune.forgetting import general_check

        general = tuple(general_check(config.model, run.output, threads=config.threads))
    return TuneResult(
        output=run.output, format=run.dataset.format, train_examples=len(run.train), val_examples=len(run.val),
        cut_examples=run.cut, dropped_examples=run.dropped, steps=run.state.step, train_loss=run.train_loss,
        val_loss=run.val_loss, first_val_loss=run.first_val, tokens=run.tokens, seconds=run.seconds,
        resumed_from_step=run.resumed_from, history=run.history, gguf_adapter=gguf_adapter, plan=run.plan,
        warnings=tuple(run.warnings), general=general,
    )


def _set_up(config: TuneConfig) -> _Run:
    """Everything before the first step: inputs checked, model loaded, data planned, LoRA on, a resume restored."""
    import torch

    output = Path(config.output).expanduser()
    if not config.resume and (ckpt.checkpoint_dirs(output) or (output / "adapter_config.json").exists()):
        raise ConfigError(f"{output} already holds a tuning run: pass --resume to continue it, or choose another -o folder")
    dataset, val_dataset, ref, style = _read_inputs(config)
    accelerator, model, tokenizer, precision = _load_base(config, ref)
    train, val, cut, dropped, plan = _plan(config, dataset, val_dataset, style, tokenizer, accelerator.num_processes)
    val_batches = plan_epochs(val, epochs=1, rows_per_batch=plan.batch_size, max_length=plan.row_length, seed=0, pack=config.pack) if val else []
    targets = lora_targets(ref.architecture, config.target_modules)
    model = _attach_lora(model, config, targets, ref.name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=plan.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(plan.total_steps, plan.warmup_steps))
    fingerprint = _fingerprint(config, ref, dataset, val_dataset, targets, accelerator.num_processes, precision, plan)
    state = ckpt.TrainState(step=0, batches_done=0, tokens_seen=0, seconds=0.0, fingerprint=fingerprint)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    run = _Run(config, output, dataset, ref, accelerator, model, model, trainable, optimizer, scheduler, pad_id, train, val,
               val_batches, list(plan.batches), plan, cut, dropped, targets, precision, state)
    run.warnings.extend(plan.warnings)  # told through on_plan, or logged by tune() when there is none
    if config.resume and ckpt.checkpoint_dirs(output):
        run.state = ckpt.resume_latest(output, fingerprint, model, optimizer, scheduler, run.warn)
        run.resumed_from = run.state.step
    run.model, run.optimizer = accelerator.prepare(model, optimizer)
    run.inner = accelerator.unwrap_model(run.model)
    return run


def _read_inputs(config: TuneConfig):
    """(dataset, validation dataset or None, model reference, prompt style): all checked before torch is
    even imported, so a broken file fails at once."""
    from kecil.infer.chat_template import ChatTemplate
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve

    dataset = read_dataset(config.data)
    val_dataset = read_dataset(config.val_data) if config.val_data else None
    ref = resolve(config.model)
    info = inspect_model(ref)
    template = ChatTemplate(info.chat_template, info.bos_token, info.eos_token) if info.chat_template else None
    return dataset, val_dataset, ref, PromptStyle(template, info.add_bos, info.bos_token, info.eos_token, ref.system_prompt)


def _plan(config: TuneConfig, dataset: Dataset, val_dataset: Dataset | None, style: PromptStyle, tokenizer, processes: int):
    """(train examples, validation examples, how many cut, how many dropped, the plan): the data
    tokenized, the validation held out where it can be spared, and the steps chosen from the rest."""

    def tokenize(text: str):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], encoded["offset_mapping"]

    examples, cut, dropped = tokenize_dataset(dataset, style, tokenize, tokenizer.bos_token_id, config.cut_length)
    if val_dataset is not None:
        train, val = examples, tokenize_dataset(val_dataset, style, tokenize, tokenizer.bos_token_id, config.cut_length)[0]
    else:
        train, val = split_validation(examples, validation_share(len(examples), config.val_split, False), config.seed)
    plan = plan_training(
        [len(e.ids) for e in train], max_length=config.cut_length, epochs=config.epochs, batch_size=config.batch_size,
        row_length=config.max_length, lr=config.lr, grad_accum=config.grad_accum, processes=processes,
        warmup=config.warmup, max_steps=config.max_steps, pack=config.pack, seed=config.seed, val_examples=len(val),
        val_source="file" if val_dataset is not None else ("split" if val else "none"),
        val_lines=sorted(e.line for e in val) if val_dataset is None else (),
        val_chosen=config.val_split is None and val_dataset is None,
    )
    return train, val, cut, dropped, plan


def _load_base(config: TuneConfig, ref):
    """(accelerator, frozen base model, tokenizer, precision): the model in the dtype and form it trains in."""
    import warnings

    import torch

    from kecil.tune.base_model import tune_accelerator

    # peft asks transformers a deprecated question on every wrap; the warning is not the user's business.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    from kecil.infer.load import physical_cores
    from kecil.infer.torch_backend import load_transformers
    from kecil.tune.packed_attention import use_packed_attention

    accelerator = tune_accelerator(config.device)  # one process, or one per GPU under `accelerate launch --multi_gpu`
    torch.set_num_threads(config.threads or max(1, physical_cores() // accelerator.num_processes))
    precision = base_precision(config.precision, accelerator.device)
    # A bfloat16 base on a GPU is loaded there in bfloat16; a float32 one in float32 on the CPU (prepare moves it).
    model, tokenizer = load_transformers(ref, accelerator.device if precision == "bfloat16" else None)
    if precision == "bfloat16":
        model = to_bfloat16_base(model)
    if config.base_bits:
        model = quantize_base(model, config.base_bits, config.base_group_size)
    use_packed_attention(model, config.cut_length)
    return accelerator, model, tokenizer, precision


def _attach_lora(model, config: TuneConfig, targets: list[str], name: str):
    """The base wrapped by peft with fresh LoRA matrices (the same ones for the same seed), in training mode."""
    import torch
    from peft import LoraConfig, get_peft_model

    from kecil.tune.fused_lora import use_fused_lora

    torch.manual_seed(config.seed)  # the LoRA matrices start from the same random values every run
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"cannot put LoRA on {', '.join(targets)} of {name} ({exc}); pass other --target-modules") from None
    use_fused_lora(model)
    model.train()
    return model


def _fingerprint(config: TuneConfig, ref, dataset, val_dataset, targets, processes: int, precision: str, plan: TrainingPlan) -> dict:
    """What a resume must not change: the model, the data's hashes, the settings and the plan made of them."""
    settings = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                if k not in ("model", "data", "val_data", "output", "resume", "threads", "eval_every", "save_every", "check_general", "device")}
    return {
        "model": str(ref.path), "data": dataset.sha256, "val_data": val_dataset.sha256 if val_dataset else None, **settings,
        "target_modules": targets, "processes": processes, "precision": precision,
        "plan": {"epochs": plan.epochs, "batch_size": plan.batch_size, "row_length": plan.row_length, "lr": plan.lr,
                 "total_steps": plan.total_steps},
    }


def _write_out(run: _Run) -> Path | None:
    """Write the adapter folder and its summary (main process only); the GGUF LoRA's path when one was written."""
    config, accelerator, world = run.config, run.accelerator, run.accelerator.num_processes
    gguf_adapter = None
    if accelerator.is_main_process:
        summary = {
            "base_model": config.model, "base_model_path": str(run.ref.path), "architecture": run.ref.architecture,
            "format": run.dataset.format, "steps": run.state.step, "train_loss": run.train_loss, "val_loss": run.val_loss,
            "rank": config.rank, "alpha": config.lora_alpha, "target_modules": run.targets, "base_bits": config.base_bits,
            "precision": run.precision,
            "processes": world, "distributed_backend": accelerator.state.backend if world > 1 else None,
        }
        write_adapter(run.inner, run.output, summary)
        gguf_adapter = write_gguf_adapter(run.output, run.ref.architecture, run.inner.config)
    accelerator.wait_for_everyone()
    return gguf_adapter
