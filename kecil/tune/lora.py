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
dozen examples get enough optimizer steps to learn. Three guards keep a run from making the model
forget what it knew: the base model's own answers to general prompts are mixed into the training
data (`mix_general`, kecil/tune/replay.py); with a validation set the adapter of the step with the
lowest validation loss is the one written, and the run stops when it stops improving (`patience`,
kecil/tune/training.py); and six general questions are asked before and after (`check_general`,
kecil/tune/forgetting.py). Launched with `accelerate launch`, the same code trains data-parallel
over several processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kecil.errors import ConfigError
from kecil.infer.hardware import PRECISIONS, check_device_name, device_field
from kecil.tune import checkpoint as ckpt
from kecil.tune.adapter_files import SUMMARY_FILE, write_adapter, write_gguf_adapter
from kecil.tune.base_model import base_precision, load_base, quantize_base
from kecil.tune.packing import plan_epochs
from kecil.tune.inputs import general_replay, plan_run, read_inputs, replay_examples, training_examples
from kecil.tune.plan import TrainingPlan
from kecil.tune.progress import TuneProgress
from kecil.tune.replay import Replay
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
# Replay examples per training example (kecil/tune/replay.py). Measured with every other default on
# SmolLM2-135M (docs/benchmarks.md, bench/forgetting.py): at 1, general answers kept 6/6 and 5/6 on
# two 12-fact sets (4/6 and 3/6 without replay) and held-out facts 23/24 and 10/12 (24/24, 10/12).
DEFAULT_MIX_GENERAL = 1.0
# Validations in a row without a new lowest validation loss before a run stops. One can be noise
# (the loss of 10-200 held-out examples wobbles from step to step); three in a row, each a tenth of
# the run apart (plan.EVALS_PER_RUN), is a trend. Stopping late costs only time: the best adapter
# is kept whatever happens after it.
DEFAULT_PATIENCE = 3


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
    eval_every: int | None = field(default=None, metadata=_help(
        "Steps between validation losses (and one at the end). Default: about ten per run, at most every 50 steps."))
    patience: int = field(default=DEFAULT_PATIENCE, metadata=_help(
        "With a validation set: stop after this many validations in a row without a new lowest validation loss "
        "(the adapter of the best step is written either way); 0 = never stop early."))
    mix_general: float = field(default=DEFAULT_MIX_GENERAL, metadata=_help(
        "General replay: mix in RATIO x the training examples of the base model's own answers to bundled general "
        "prompts (at most 221; answered once per model and cached), so the model keeps its general answers. "
        "Never in validation. 0 = off."))
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
    check_general: bool = field(default=True, metadata=_help(
        "After training, ask six general questions without and with the adapter and report what changed: what it "
        "made the model forget, and what it gained (kecil/tune/forgetting.py; a few seconds on a small model)."))
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
        if self.patience < 0:
            raise ConfigError(f"patience must be 0 (never stop early) or more, got {self.patience}")
        if self.mix_general < 0:
            raise ConfigError(f"mix-general is a ratio of replay to training examples: 0 (off) or more, got {self.mix_general}")
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
    val_loss: float | None  # of the adapter written: the best step's when there was a validation set
    first_val_loss: float | None
    tokens: int  # real (unpadded) tokens trained on
    seconds: float
    resumed_from_step: int | None = None
    history: list[dict] = field(default_factory=list)
    gguf_adapter: Path | None = None  # the adapter as a GGUF LoRA for llama.cpp, when it has one
    plan: TrainingPlan | None = None
    warnings: tuple[str, ...] = ()  # what the user should know (a damaged checkpoint passed over, a short plan)
    general: tuple = ()  # forgetting.GeneralAnswer per general question, with check_general
    best_step: int | None = None  # the step whose adapter was written (lowest validation loss), with a validation set
    last_val_loss: float | None = None  # at the last step trained, which may be worse than val_loss
    stopped_early: bool = False  # patience ran out before the plan's last step
    replay_examples: int = 0  # general replay examples trained on (kecil/tune/replay.py)

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
    dataset: object  # kecil.tune.data.Dataset
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
    replay: Replay | None = None
    resumed_from: int | None = None
    best: dict | None = None  # the LoRA weights of the best step so far (kecil/tune/training.py: keep_if_best)
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
    on_stage: Callable[[str, int, int], None] | None = None,
) -> TuneResult:
    """Train a LoRA adapter for `config.model` on `config.data` and write it to `config.output`.

    `on_plan` gets the training plan once it is fixed, before the first step (the CLI prints
    `plan.describe()`); `progress` gets a TuneProgress after every optimizer step; `on_stage`
    gets (stage, done, total) for the work around training: "replay" (the base model answering
    the general prompts, the first time only) and "general" (the general questions)."""
    run = _set_up(config, on_stage)
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
        from kecil.infer.hardware import threads_for_now
        from kecil.tune.forgetting import general_check

        stage = (lambda done, total: on_stage("general", done, total)) if on_stage else None
        general = tuple(general_check(config.model, run.output, threads=config.threads or threads_for_now(), progress=stage))
    state = run.state
    return TuneResult(
        output=run.output, format=run.dataset.format, train_examples=len(run.train), val_examples=len(run.val),
        cut_examples=run.cut, dropped_examples=run.dropped, steps=state.step, train_loss=run.train_loss,
        val_loss=state.best_val_loss if state.best_step is not None else run.val_loss, first_val_loss=run.first_val,
        tokens=run.tokens, seconds=run.seconds, resumed_from_step=run.resumed_from, history=run.history,
        gguf_adapter=gguf_adapter, plan=run.plan, warnings=tuple(run.warnings), general=general,
        best_step=state.best_step, last_val_loss=run.val_loss, stopped_early=state.stopped_early,
        replay_examples=run.plan.replay_examples,
    )


def _set_up(config: TuneConfig, on_stage: Callable[[str, int, int], None] | None = None) -> _Run:
    """Everything before the first step: inputs checked, model loaded, replay answered, data planned,
    LoRA on, a resume restored."""
    import torch

    output = Path(config.output).expanduser()
    if not config.resume and (ckpt.checkpoint_dirs(output) or (output / "adapter_config.json").exists()):
        raise ConfigError(f"{output} already holds a tuning run: pass --resume to continue it, or choose another -o folder")
    dataset, val_dataset, ref, style = read_inputs(config)
    accelerator, model, tokenizer, precision = load_base(ref, device=config.device, threads=config.threads, precision=config.precision,
                                                         base_bits=config.base_bits, base_group_size=config.base_group_size,
                                                         cut_length=config.cut_length)
    examples, val, cut, dropped = training_examples(config, dataset, val_dataset, style, tokenizer)
    replay = general_replay(config, ref, len(examples), accelerator, on_stage)
    replayed = replay_examples(replay, style, tokenizer, config.cut_length)
    train = examples + replayed
    plan = plan_run(config, train, val, len(replayed), val_dataset is not None, accelerator.num_processes)
    if replay.note:  # less replay than asked: said with the plan
        plan = replace(plan, warnings=plan.warnings + (replay.note,))
    val_batches = plan_epochs(val, epochs=1, rows_per_batch=plan.batch_size, max_length=plan.row_length, seed=0, pack=config.pack) if val else []
    targets = lora_targets(ref.architecture, config.target_modules)
    model = _attach_lora(model, config, targets, ref.name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=plan.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(plan.total_steps, plan.warmup_steps))
    fingerprint = _fingerprint(config, ref, dataset, val_dataset, targets, accelerator.num_processes, precision, plan, replay)
    state = ckpt.TrainState(step=0, batches_done=0, tokens_seen=0, seconds=0.0, fingerprint=fingerprint)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    run = _Run(config, output, dataset, ref, accelerator, model, model, trainable, optimizer, scheduler, pad_id, train, val,
               val_batches, list(plan.batches), plan, cut, dropped, targets, precision, state, replay)
    run.warnings.extend(plan.warnings)  # told through on_plan, or logged by tune() when there is none
    if config.resume and ckpt.checkpoint_dirs(output):
        run.state, run.best = ckpt.resume_latest(output, fingerprint, model, optimizer, scheduler, run.warn)
        run.resumed_from = run.state.step
        run.first_val = run.state.first_val_loss
    run.model, run.optimizer = accelerator.prepare(model, optimizer)
    run.inner = accelerator.unwrap_model(run.model)
    return run


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


def _fingerprint(config: TuneConfig, ref, dataset, val_dataset, targets, processes: int, precision: str, plan: TrainingPlan,
                 replay: Replay) -> dict:
    """What a resume must not change: the model, the data's hashes (the replay's too), the settings and the
    plan made of them. How often validation runs is part of it: it decides which step's adapter is kept."""
    settings = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                if k not in ("model", "data", "val_data", "output", "resume", "threads", "save_every", "check_general", "device")}
    return {
        "model": str(ref.path), "data": dataset.sha256, "val_data": val_dataset.sha256 if val_dataset else None, **settings,
        "target_modules": targets, "processes": processes, "precision": precision, "replay": replay.sha256 if replay.records else None,
        "plan": {"epochs": plan.epochs, "batch_size": plan.batch_size, "row_length": plan.row_length, "lr": plan.lr,
                 "total_steps": plan.total_steps, "eval_every": plan.eval_every},
    }


def _write_out(run: _Run) -> Path | None:
    """Write the adapter folder and its summary (main process only); the GGUF LoRA's path when one was written."""
    config, accelerator, world = run.config, run.accelerator, run.accelerator.num_processes
    gguf_adapter = None
    if accelerator.is_main_process:
        summary = {
            "base_model": config.model, "base_model_path": str(run.ref.path), "architecture": run.ref.architecture,
            "format": run.dataset.format, "steps": run.state.step, "train_loss": run.train_loss,
            "val_loss": run.state.best_val_loss if run.state.best_step is not None else run.val_loss,
            "kept_step": run.state.best_step, "last_val_loss": run.val_loss, "stopped_early": run.state.stopped_early,
            "replay_examples": run.plan.replay_examples,
            "rank": config.rank, "alpha": config.lora_alpha, "target_modules": run.targets, "base_bits": config.base_bits,
            "precision": run.precision,
            "processes": world, "distributed_backend": accelerator.state.backend if world > 1 else None,
        }
        write_adapter(run.inner, run.output, summary)
        gguf_adapter = write_gguf_adapter(run.output, run.ref.architecture, run.inner.config)
    accelerator.wait_for_everyone()
    return gguf_adapter
