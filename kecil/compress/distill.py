"""`kecil distill`: train a student model to predict what a teacher model predicts, on a CPU.

Logit distillation (Hinton et al., https://arxiv.org/abs/1503.02531) with the teacher's top-k
logits only, stored once (as in https://arxiv.org/abs/2402.12030's sparse logits): the loss is
the forward KL from the teacher's temperature-softened top-k distribution to the student's
(times T², so its gradients keep their size as T changes) plus `ce_weight` × the ordinary
next-token cross-entropy. The teacher runs once over the data and its top-k logits go to a
memory-mapped cache under $KECIL_HOME/distill, filled row by row and resumable, so further
epochs, reruns and `kecil prune --heal` runs on the same data never run the teacher again. The
student trains whole (every parameter). A run is a fixed function of (data, settings, seed):
checkpoints every `save_every` steps, and `resume=True` continues a killed run to the same
student as one never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kecil.errors import ConfigError, InvalidModelError

Progress = Callable[[str, int, int], None]  # ("teacher" | "distill", done, total)


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class DistillConfig:
    """Who teaches whom, on what, for how long."""

    student: str = field(metadata=_help("The model to train: built-in name, .gguf file (dequantized) or Hugging Face folder."))
    teacher: str = field(metadata=_help("The model to learn from; it must have the student's tokenizer.", flag="--teacher"))
    output: Path = field(metadata=_help("Folder for the trained student (a Hugging Face folder) and its checkpoints.", flag=("--output", "-o")))
    data: Path | None = field(default=None, metadata=_help(
        "Text or JSONL (chat 'messages', instruction/output or 'text' per line); default: kecil's general text."))
    tokens: int | None = field(default=None, metadata=_help("Training budget in tokens (default: one pass over the data)."))
    minutes: float | None = field(default=None, metadata=_help("Training budget in minutes, teacher pass not counted (instead of --tokens)."))
    resume: bool = field(default=False, metadata=_help("Continue the run in --output from its newest checkpoint."))
    top_k: int = field(default=64, metadata=_help("Teacher logits kept per token."))
    temperature: float = field(default=1.0, metadata=_help("Softens both distributions before the KL."))
    ce_weight: float = field(default=0.1, metadata=_help("Weight of the plain next-token cross-entropy beside the KL."))
    kl_weight: float = field(default=1.0, metadata=_help("Weight of the KL to the teacher; 0 with --ce-weight 1 is plain fine-tuning (a baseline)."))
    lr: float = field(default=1e-4, metadata=_help("Peak learning rate (AdamW, warm-up then cosine decay)."))
    batch_size: int = field(default=4, metadata=_help("Rows per optimizer step."))
    seq_len: int = field(default=256, metadata=_help("Tokens per row."))
    save_every: int = field(default=50, metadata=_help("Steps between checkpoints (and one at the end)."))
    seed: int = field(default=0, metadata=_help("Random seed: the same seed, data and settings give the same student."))
    threads: int | None = field(default=None, metadata=_help("CPU threads (default: physical cores).", flag=("--threads", "-t")))
    max_steps: int | None = field(default=None, metadata=_help("Stop (with a checkpoint) after this many steps: tests, smoke runs.", hidden=True))
    # kecil build keeps the teacher's logits on the user's data in its own build folder, not KECIL_HOME
    cache_dir: Path | None = field(default=None, metadata=_help("Where the teacher's logits are cached (default: KECIL_HOME/distill).", hidden=True))

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.tokens is not None and self.minutes is not None:
            raise ConfigError("give at most one of --tokens and --minutes")
        for name in ("tokens", "minutes", "top_k", "temperature", "lr", "batch_size", "save_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.seq_len < 16:
            raise ConfigError(f"--seq-len must be at least 16 tokens, got {self.seq_len}")
        if self.ce_weight < 0 or self.kl_weight < 0 or self.ce_weight + self.kl_weight == 0:
            raise ConfigError(f"--ce-weight and --kl-weight must be 0 or more, not both 0 (got {self.ce_weight} and {self.kl_weight})")


@dataclass(frozen=True)
class DistillProgress:
    step: int
    total_steps: int | None  # None with a time budget
    loss: float
    kl: float
    ce: float
    tokens_per_second: float
    eta_seconds: float


@dataclass
class DistillResult:
    output: Path
    steps: int
    tokens: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    teacher_cache: Path
    teacher_seconds: float  # 0 when the cache already held every row
    resumed_from: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["output"], data["teacher_cache"] = str(self.output), str(self.teacher_cache)
        return data


def distill(config: DistillConfig, progress: Progress | None = None, on_step: Callable[[DistillProgress], None] | None = None) -> DistillResult:
    """Train `config.student` on `config.teacher`'s top-k logits and write it to `config.output`."""
    import numpy as np
    import torch

    from kecil.compress.distill_data import read_rows, teacher_cache
    from kecil.infer.hardware import physical_cores
    from kecil.models.reference import resolve

    report = progress or (lambda stage, done, total: None)
    output = config.output.expanduser()
    checkpoints = output / "checkpoints"
    if (output / "config.json").exists() and not checkpoints.is_dir():
        raise ConfigError(f"{output} already holds a finished model: choose another -o folder")
    if output.exists() and any(output.iterdir()) and not config.resume:
        raise ConfigError(f"{output} already holds a distillation run: pass --resume to continue it, or choose another -o folder")
    student_ref, teacher_ref = resolve(config.student), resolve(config.teacher)
    if student_ref.path == output.resolve():
        raise ConfigError(f"-o {output} is the student itself: pick another folder")
    torch.set_num_threads(config.threads or physical_cores())
    student, tokenizer = _load(student_ref)
    rows = read_rows(config.data, tokenizer, config.seq_len)
    # With a token budget the teacher runs only on the rows the budget reaches (from the first).
    used = len(rows) if config.tokens is None else min(len(rows), max(config.batch_size, math.ceil(config.tokens / config.seq_len)))
    cache, teacher_seconds = teacher_cache(teacher_ref, tokenizer, rows, used, config.top_k, report, _load, config.cache_dir)
    total = _total_steps(config, used)
    torch.manual_seed(config.seed)
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total))
    fingerprint = {"student": config.student, "teacher": config.teacher, "data": cache.key, "tokens": config.tokens,
                   "minutes": config.minutes, "top_k": config.top_k, "temperature": config.temperature, "ce_weight": config.ce_weight, "kl_weight": config.kl_weight,
                   "lr": config.lr, "batch_size": config.batch_size, "seq_len": config.seq_len, "seed": config.seed}  # fmt: skip
    state = {"step": 0, "tokens": 0, "seconds": 0.0, "first_loss": None, "last_loss": None, "fingerprint": fingerprint}
    if config.resume and checkpoints.is_dir():
        state = _load_checkpoint(checkpoints, student, optimizer, scheduler, fingerprint)
    resumed_from = state["step"]
    order = _Order(used, config.seed)
    started, last_save = time.perf_counter() - state["seconds"], state["step"]
    session_started, session_tokens = time.perf_counter(), 0
    while _more(config, total, state):
        picked = order.batch(state["step"], config.batch_size)
        ids = torch.from_numpy(rows[picked].astype(np.int64))
        values, indices = cache.read(picked)
        loss, kl, ce = distill_loss(student(input_ids=ids).logits, ids, values, indices, config.temperature, config.ce_weight, config.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        state["tokens"] += ids.numel()
        session_tokens += ids.numel()
        state["seconds"] = time.perf_counter() - started
        state["last_loss"] = loss.item()
        if state["first_loss"] is None:
            state["first_loss"] = loss.item()
        if state["step"] - last_save >= config.save_every:
            _save_checkpoint(checkpoints, student, optimizer, scheduler, state)
            last_save = state["step"]
        session_seconds = time.perf_counter() - session_started
        speed = session_tokens / max(1e-9, session_seconds)
        if total is not None:
            eta = (total - state["step"]) * session_seconds / max(1, state["step"] - resumed_from)
        else:
            eta = max(0.0, config.minutes * 60 - state["seconds"])
        if on_step:
            on_step(DistillProgress(state["step"], total, loss.item(), kl.item(), ce.item(), speed, eta))
        report("distill", state["step"], total if total is not None else state["step"])
    if config.max_steps is not None and state["step"] >= config.max_steps and (total is None or state["step"] < total):
        _save_checkpoint(checkpoints, student, optimizer, scheduler, state)  # stopped early on purpose: resumable
    else:
        _write_student(student, tokenizer, output, checkpoints)
    return DistillResult(output, state["step"], state["tokens"], state["seconds"], state["first_loss"], state["last_loss"], cache.directory,
                         teacher_seconds, resumed_from)  # fmt: skip


def _more(config: DistillConfig, total: int | None, state: dict) -> bool:
    if config.max_steps is not None and state["step"] >= config.max_steps:
        return False
    return state["step"] < total if total is not None else state["seconds"] < config.minutes * 60


def distill_loss(student_logits, ids, values, indices, temperature: float, ce_weight: float, kl_weight: float = 1.0):
    """(loss, kl, ce) for rows `ids` given the teacher's top-k `values` and `indices` per position.

    Each position predicts the next token, so the last position of a row has no target. The
    teacher's top-k logits are renormalised among themselves; the student's log-probabilities
    over its whole vocabulary are read at those k tokens, so the KL also pushes down what the
    student puts outside the teacher's top k."""
    import torch.nn.functional as F

    logits = student_logits[:, :-1].float()
    t = temperature
    teacher = F.softmax(values[:, :-1].float() / t, dim=-1)
    student = F.log_softmax(logits / t, dim=-1).gather(-1, indices[:, :-1].long())
    kl = (teacher * (teacher.clamp_min(1e-30).log() - student)).sum(-1).mean() * t * t
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return kl_weight * kl + ce_weight * ce, kl.detach(), ce.detach()


def _load(ref):
    from kecil.infer.torch_backend import load_transformers

    try:
        return load_transformers(ref)
    except Exception as error:  # a damaged file fails inside transformers or gguf in many ways
        if isinstance(error, InvalidModelError):
            raise
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise InvalidModelError(f"cannot load {ref.name} ({first}): check it with `kecil info {ref.spec}`") from None


def _total_steps(config: DistillConfig, rows: int) -> int | None:
    if config.minutes is not None:
        return None
    tokens = config.tokens if config.tokens is not None else rows * config.seq_len
    return max(1, math.ceil(tokens / (config.batch_size * config.seq_len)))


def _schedule(total: int | None) -> Callable[[int], float]:
    """Linear warm-up over 5% of the steps (at least 1), then cosine decay to a tenth; with a time
    budget the number of steps is unknown, so the rate stays at its peak after warm-up."""
    warmup = max(1, round(0.05 * total)) if total else 10

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total is None:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class _Order:
    """Which rows step s trains on: epoch after epoch, each a fresh permutation from the seed."""

    def __init__(self, rows: int, seed: int):
        self.rows, self.seed, self._epochs = rows, seed, {}

    def batch(self, step: int, size: int):
        import numpy as np

        picked = []
        for position in range(step * size, (step + 1) * size):
            epoch, offset = divmod(position, self.rows)
            if epoch not in self._epochs:
                self._epochs = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.rows)}
            picked.append(int(self._epochs[epoch][offset]))
        return np.array(picked)


def _save_checkpoint(root: Path, model, optimizer, scheduler, state: dict) -> None:
    """The whole student, optimizer and schedule, written into a temporary folder and renamed into
    place, so a kill mid-write leaves the previous checkpoint whole. (kecil/tune/checkpoint.py keeps
    LoRA adapters through peft; a full-parameter student needs the model's own weights, so this
    is its own small version of the same write-then-rename.)"""
    import torch
    from safetensors.torch import save_model

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:07d}"
    temporary = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    save_model(model, str(temporary / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}, temporary / "optimizer.pt")
    (temporary / "state.json").write_text(json.dumps(state))  # last: a folder without it is not a checkpoint
    for path in temporary.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    for old in _checkpoints(root)[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def _checkpoints(root: Path) -> list[Path]:
    done = [p for p in root.glob("step-*") if (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _load_checkpoint(root: Path, model, optimizer, scheduler, fingerprint: dict) -> dict:
    import torch
    from safetensors.torch import load_model

    found = _checkpoints(root)
    if not found:
        raise ConfigError(f"no complete checkpoint in {root}: start a new run in another -o folder")
    latest = found[-1]
    state = json.loads((latest / "state.json").read_text())
    changed = sorted(k for k in set(state["fingerprint"]) | set(fingerprint) if state["fingerprint"].get(k) != fingerprint.get(k))
    if changed:
        raise ConfigError(f"cannot resume {root.parent}: it was started with other settings ({', '.join(changed)} differ); "
                          "resume with the original ones, or start a new run in another -o folder")  # fmt: skip
    load_model(model, str(latest / "model.safetensors"))
    saved = torch.load(latest / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return state


def _write_student(model, tokenizer, output: Path, checkpoints: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(str(output), safe_serialization=True)
    tokenizer.save_pretrained(str(output))
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the model is written
