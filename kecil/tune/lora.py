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
Launched with `accelerate launch`, the same code trains data-parallel over several processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kecil.errors import ConfigError
from kecil.infer.embeddings import PRECISIONS
from kecil.tune import checkpoint as ckpt
from kecil.tune.data import PromptStyle, read_dataset, split_validation, tokenize_dataset
from kecil.tune.packing import MicroBatch, collate, plan_epochs

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
SUMMARY_FILE = "kecil_tune.json"


@dataclass(frozen=True)
class TuneConfig:
    """Settings of one LoRA run. Defaults suit a few hundred to a few thousand examples on a CPU."""

    model: str  # built-in name, .gguf file (loaded as float) or Hugging Face folder
    data: Path  # JSONL: chat (`messages`), instruction (`instruction`/`input`/`output`) or `text`
    output: Path  # the adapter folder; checkpoints go in output/checkpoints
    epochs: int = 3
    rank: int = 16
    alpha: float | None = None  # None = 2 × rank
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None = every linear layer of the architecture
    lr: float = 2e-4
    warmup: float = 0.05  # share of the steps spent warming the learning rate up from 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4  # rows per micro-batch (each row packs several examples)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 512  # tokens per row; longer examples are cut (and counted)
    pack: bool = True
    val_split: float = 0.1  # share of examples held out for validation loss (0 = none)
    val_data: Path | None = None  # a separate validation file instead of a split
    eval_every: int = 50  # steps between validation losses (and one at the end)
    save_every: int = 50  # steps between checkpoints (and one at the end)
    max_steps: int | None = None  # stop early (benchmarks, smoke runs)
    seed: int = 0
    resume: bool = False
    threads: int | None = None
    base_bits: int | None = None  # QLoRA: train on the base quantized to int4/int8 weights (less RAM); None = float32
    base_group_size: int = 64  # columns per quantization scale when base_bits is set
    # The frozen base's dtype; auto = bfloat16 where the CPU/GPU computes it natively (AMX, AVX512-BF16),
    # where with the fused LoRA path it measured faster than float32 (docs/benchmarks.md); else float32.
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "rank", "batch_size", "grad_accum", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_length < 16:
            raise ConfigError(f"max-length must be at least 16 tokens, got {self.max_length}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.warmup < 1 or not 0 <= self.val_split < 1:
            raise ConfigError("warmup and val-split are shares: give a number in [0, 1)")
        if self.lr <= 0:
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


@dataclass(frozen=True)
class TuneProgress:
    """One report to the progress callback, after every optimizer step."""

    step: int
    total_steps: int
    loss: float  # mean token loss of this step
    val_loss: float | None  # the latest validation loss, if any
    tokens_per_second: float
    eta_seconds: float


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

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def lora_targets(architecture: str, requested: tuple[str, ...] | None) -> list[str]:
    if requested:
        return list(requested)
    return list(DEFAULT_TARGETS.get(architecture, LINEAR_TARGETS))


def token_loss_sum(model, input_ids, position_ids, predict, targets):
    """Summed cross-entropy over the positions in `predict`, logits computed only there."""
    import torch.nn.functional as F

    # No attention mask and no cache: the restarting position ids mark the packed examples, for
    # packed_attention.py, or for transformers' own block-diagonal mask where that is not used.
    device = next(model.parameters()).device
    input_ids, position_ids, predict, targets = (t.to(device) for t in (input_ids, position_ids, predict, targets))
    out = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=predict, use_cache=False)
    return F.cross_entropy(out.logits.float(), targets, reduction="sum")


def validation_loss(model, examples, batches: list[MicroBatch], pad_id: int) -> float | None:
    import torch

    if not batches:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            input_ids, position_ids, predict, targets = collate(batch, examples, pad_id)
            total += float(token_loss_sum(model, input_ids, position_ids, predict, targets))
            count += len(targets)
    model.train(was_training)
    return total / count


def _schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def base_precision(requested: str) -> str:
    """The dtype the frozen base is held in. bfloat16 halves its memory and runs the big matrix
    products on bf16 hardware; where bf16 is only emulated it is slower than float32, so auto
    picks it only where the CUDA GPU or the CPU (AVX512-BF16/AMX) computes it natively: on a CPU
    the same choice as the embedders'."""
    import torch

    from kecil.infer.embeddings import resolve_precision

    if requested == "auto" and torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return resolve_precision(requested)


def to_bfloat16_base(model):
    """Hold the frozen model in bfloat16, but project to the vocabulary in float32: the logits feed
    the loss, and bfloat16's 8-bit mantissa would round a logit of 20 by ±0.06. peft then keeps
    the LoRA matrices in float32 (its autocast_adapter_dtype); the fused forward computes with
    bfloat16 copies of them, so the activations stay bfloat16."""
    import functools

    import torch

    head = model.get_output_embeddings()
    # The float32 head weight is kept as it is (frozen, so it never goes stale) rather than cast up
    # on every step: that cast was a 100 MB copy per step for a 49k-word vocabulary.
    weight = head.weight.detach()
    bias = None if head.bias is None else head.bias.detach()
    model.to(torch.bfloat16)
    head.forward = functools.partial(_float32_projection, weight, bias)
    return model


def _float32_projection(weight, bias, hidden):
    import torch.nn.functional as F

    return F.linear(hidden.float(), weight, bias)


def quantize_base(model, bits: int, group_size: int):
    """QLoRA (https://arxiv.org/abs/2305.14314, with kecil's group-wise int4/int8 in place of NF4):
    the frozen block linears become QuantizedLinear layers, in place, before LoRA goes on them."""
    import gc

    from kecil.infer.quantized_linear import QuantizedLinear, linear_targets

    targets = linear_targets(model, group_size)
    if not targets:
        raise ConfigError(f"no linear layer of this model has a multiple of {group_size} input columns: pass a smaller --base-group-size")
    for parent, name, linear in targets:
        setattr(parent, name, QuantizedLinear.from_linear(linear, bits=bits, group_size=group_size))
    gc.collect()  # the float weights just replaced
    return model


def tune(config: TuneConfig, progress: Callable[[TuneProgress], None] | None = None) -> TuneResult:
    """Train a LoRA adapter for `config.model` on `config.data` and write it to `config.output`."""
    from kecil.infer.chat_template import ChatTemplate
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve

    output = Path(config.output).expanduser()
    existing = ckpt.checkpoint_dirs(output)
    if not config.resume and (existing or (output / "adapter_config.json").exists()):
        raise ConfigError(f"{output} already holds a tuning run: pass --resume to continue it, or choose another -o folder")

    # The data and model are checked before torch is even imported: a broken file fails at once.
    dataset = read_dataset(config.data)
    val_dataset = read_dataset(config.val_data) if config.val_data else None
    ref = resolve(config.model)
    info = inspect_model(ref)
    template = ChatTemplate(info.chat_template, info.bos_token, info.eos_token) if info.chat_template else None
    style = PromptStyle(template, info.add_bos, info.bos_token, info.eos_token, ref.system_prompt)

    import warnings

    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    # peft asks transformers a deprecated question on every wrap; the warning is not the user's business.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    from kecil.infer.load import physical_cores
    from kecil.infer.torch_backend import load_transformers
    from kecil.tune.fused_lora import use_fused_lora
    from kecil.tune.packed_attention import use_packed_attention

    # One process normally; under `accelerate launch --multi_gpu` one per GPU, or per CPU process
    # over gloo when there is no GPU (accelerate only goes multi-CPU when told cpu=True).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.set_num_threads(config.threads or max(1, physical_cores() // accelerator.num_processes))
    model, tokenizer = load_transformers(ref)
    precision = base_precision(config.precision)
    if precision == "bfloat16":
        model = to_bfloat16_base(model)
    if config.base_bits:
        model = quantize_base(model, config.base_bits, config.base_group_size)
    use_packed_attention(model, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def tokenize(text: str):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], encoded["offset_mapping"]

    examples, cut, dropped = tokenize_dataset(dataset, style, tokenize, tokenizer.bos_token_id, config.max_length)
    if val_dataset is not None:
        train, val = examples, tokenize_dataset(val_dataset, style, tokenize, tokenizer.bos_token_id, config.max_length)[0]
    else:
        train, val = split_validation(examples, config.val_split, config.seed)
    val_batches = plan_epochs(val, epochs=1, rows_per_batch=config.batch_size, max_length=config.max_length, seed=0, pack=config.pack) if val else []

    world = accelerator.num_processes
    per_step = config.grad_accum * world
    plan = plan_epochs(train, epochs=config.epochs, rows_per_batch=config.batch_size, max_length=config.max_length, seed=config.seed, pack=config.pack)
    total_steps = max(1, len(plan) // per_step)
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    plan = plan[: total_steps * per_step]

    targets = lora_targets(ref.architecture, config.target_modules)
    torch.manual_seed(config.seed)  # the LoRA matrices start from the same random values every run
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"cannot put LoRA on {', '.join(targets)} of {ref.name} ({exc}); pass other --target-modules") from None
    use_fused_lora(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total_steps, int(config.warmup * total_steps)))

    fingerprint = {
        "model": str(ref.path), "data": dataset.sha256, "val_data": val_dataset.sha256 if val_dataset else None,
        **{k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
           if k not in ("model", "data", "val_data", "output", "resume", "threads", "eval_every", "save_every")},
        "target_modules": targets, "processes": world, "precision": precision,
    }
    state = ckpt.TrainState(step=0, batches_done=0, tokens_seen=0, seconds=0.0, fingerprint=fingerprint)
    resumed_from = None
    if config.resume and existing:
        ckpt.check_resumable(existing[-1], fingerprint)
        state = ckpt.load_checkpoint(existing[-1], model, optimizer, scheduler)
        resumed_from = state.step
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)

    history: list[dict] = []
    val_loss = first_val = None
    if val_batches and state.step == 0:
        first_val = val_loss = validation_loss(model, val, val_batches, pad_id)
        history.append({"step": 0, "val_loss": val_loss})
    loss_value = None
    started = time.perf_counter()
    earlier_seconds = state.seconds  # spent before a resume
    tokens_this_session = 0
    while state.step < total_steps:
        group = plan[state.step * per_step : (state.step + 1) * per_step]
        step_targets = sum(len(collate_targets(b, train)) for b in group)
        mine = group[accelerator.process_index :: world]
        step_loss = 0.0
        step_tokens = 0
        for i, batch in enumerate(mine):
            input_ids, position_ids, predict, targets_t = collate(batch, train, pad_id)
            # Normalised by the whole step's target count: packing and accumulation then give the
            # gradient of the mean token loss, whatever the rows look like. × world undoes DDP's average.
            syncing = accelerator.no_sync(model) if (world > 1 and i < len(mine) - 1) else nullcontext()
            with syncing:
                loss = token_loss_sum(model, input_ids, position_ids, predict, targets_t) * (world / step_targets)
                accelerator.backward(loss)
            step_loss += float(loss.detach()) / world
            step_tokens += batch.token_count(train)
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        step_lr = scheduler.get_last_lr()[0]  # the rate this step trains with
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        release_freed_memory()
        step_loss = accelerator.reduce(torch.tensor(step_loss), reduction="sum").item()
        step_tokens = int(accelerator.reduce(torch.tensor(step_tokens), reduction="sum").item())
        tokens_this_session += step_tokens
        loss_value = step_loss
        elapsed = time.perf_counter() - started
        state = ckpt.TrainState(state.step + 1, (state.step + 1) * per_step, state.tokens_seen + step_tokens, earlier_seconds + elapsed, fingerprint)
        entry = {"step": state.step, "loss": round(step_loss, 5), "lr": step_lr}
        if val_batches and (state.step % config.eval_every == 0 or state.step == total_steps):
            val_loss = validation_loss(model, val, val_batches, pad_id)
            entry["val_loss"] = val_loss
        history.append(entry)
        if state.step % config.save_every == 0 or state.step == total_steps:
            if accelerator.is_main_process:
                ckpt.save_checkpoint(output, state, inner, optimizer, scheduler)
            accelerator.wait_for_everyone()
        if progress is not None and accelerator.is_main_process:
            speed = tokens_this_session / elapsed if elapsed else 0.0
            steps_left = total_steps - state.step
            eta = elapsed / max(1, state.step - (resumed_from or 0)) * steps_left
            progress(TuneProgress(state.step, total_steps, step_loss, val_loss, speed, eta))

    seconds = time.perf_counter() - started
    gguf_adapter = None
    if accelerator.is_main_process:
        summary = {
            "base_model": config.model, "base_model_path": str(ref.path), "architecture": ref.architecture,
            "format": dataset.format, "steps": state.step, "train_loss": loss_value, "val_loss": val_loss,
            "rank": config.rank, "alpha": config.lora_alpha, "target_modules": targets, "base_bits": config.base_bits,
            "precision": precision,
            "processes": world, "distributed_backend": accelerator.state.backend if world > 1 else None,
        }
        write_adapter(inner, output, summary)
        gguf_adapter = write_gguf_adapter(output, ref.architecture, inner.config)
    accelerator.wait_for_everyone()
    return TuneResult(
        output=output, format=dataset.format, train_examples=len(train), val_examples=len(val),
        cut_examples=cut, dropped_examples=dropped, steps=state.step, train_loss=loss_value, val_loss=val_loss,
        first_val_loss=first_val, tokens=tokens_this_session, seconds=seconds, resumed_from_step=resumed_from, history=history,
        gguf_adapter=gguf_adapter,
    )


def release_freed_memory(slack_mib: int = 512) -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim) once the process has
    grown `slack_mib` past its size after the last trim; a no-op where there is no glibc.

    A step frees hundreds of MB of activations; glibc keeps such memory, and while every step had
    a new row width (before rows were padded to WIDTH_MULTIPLE) resident memory crept up by ~40 MiB
    a step.
    Trimming is a guard against such growth, not a routine: after a trim the next step faults
    its pages back in (100k page faults, ~10% of a step on SmolLM2-135M), and a slack of 128 MiB,
    smaller than one step's activations, had made it trim after every step. With 512 MiB a
    20-step run trimmed rarely and peaked 50 MiB above one never trimmed."""
    global _malloc_trim, _trimmed_size
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
            _malloc_trim = False
    if not _malloc_trim:
        return
    import psutil

    process = psutil.Process()
    if process.memory_info().rss > _trimmed_size + slack_mib * 2**20:
        _malloc_trim(0)
        _trimmed_size = process.memory_info().rss


_malloc_trim = None
_trimmed_size = 0  # resident bytes after the last trim


def collate_targets(batch: MicroBatch, examples) -> list[int]:
    """The target positions of a micro-batch, counted without building tensors."""
    return [t for row in batch.rows for i in row for t in range(1, len(examples[i].ids)) if examples[i].trained[t]]


def write_adapter(model, output: Path, summary: dict) -> None:
    """Write the PEFT adapter files into `output`, each renamed into place whole."""
    output.mkdir(parents=True, exist_ok=True)
    temporary = output / f".tmp-adapter-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(str(temporary), state_dict=_float32_saved_state(model))
    (temporary / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    # adapter_config.json last: it is what marks the folder as an adapter.
    names = sorted(p.name for p in temporary.iterdir())
    names.sort(key=lambda n: n == "adapter_config.json")
    for name in names:
        os.replace(temporary / name, output / name)
    shutil.rmtree(temporary, ignore_errors=True)


def _float32_saved_state(model) -> dict:
    """The model's state with the tensors peft will save in float32. The LoRA matrices are float32
    already; a base layer peft saves along (a tied embedding under an lm_head adapter) of a
    bfloat16 base is cast, so the files match a float32 run. Casting only those, not the whole
    model, spared the end of a run a float32 copy of the base (+300 MiB of peak for SmolLM2-135M)."""
    import torch
    from peft.utils import get_peft_model_state_dict

    state = model.state_dict()
    saved = {id(t) for t in get_peft_model_state_dict(model, state_dict=state).values()}
    return {k: v.float() if id(v) in saved and v.is_floating_point() and v.dtype != torch.float32 else v for k, v in state.items()}


def write_gguf_adapter(output: Path, architecture: str, model_config) -> Path | None:
    """Also write the adapter as a GGUF LoRA (for --backend llamacpp), when llama.cpp has a place for it."""
    from kecil.infer.load import ADAPTER_GGUF
    from kecil.tune.gguf_adapter import export_adapter_gguf

    text = getattr(model_config, "text_config", None) or model_config
    try:
        return export_adapter_gguf(
            output, output / ADAPTER_GGUF, architecture=architecture, n_layers=text.num_hidden_layers,
            n_head=text.num_attention_heads, n_kv_head=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        )
    except ConfigError:
        return None  # e.g. a LoRA on lm_head: the PEFT adapter still works with the torch backend
