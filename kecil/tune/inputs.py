"""A LoRA run's inputs, before any training: the data read and checked, tokenized with the model's
own chat template, the validation held out where it can be spared, the general replay mixed in
(kecil/tune/replay.py), and the plan chosen from all of it (kecil/tune/plan.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kecil.tune.data import Dataset, PromptStyle, read_dataset, split_validation, tokenize_dataset
from kecil.tune.plan import TrainingPlan, plan_training, validation_share
from kecil.tune.replay import Replay, build_replay

if TYPE_CHECKING:
    from kecil.tune.lora import TuneConfig


def read_inputs(config: TuneConfig):
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


PROMPTS_NAME = "general replay"  # the replay's stand-in for a data file's name


def replay_examples(replay: Replay, style: PromptStyle, tokenizer, cut_length: int) -> list:
    """The replay's records tokenized as training examples, like the user's chat data."""
    if not replay.records:
        return []
    dataset = Dataset(Path(PROMPTS_NAME), "chat", list(replay.records), replay.sha256)
    return tokenize_dataset(dataset, style, tokenizer_fn(tokenizer), tokenizer.bos_token_id, cut_length)[0]


def tokenizer_fn(tokenizer):
    def tokenize(text: str):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], encoded["offset_mapping"]

    return tokenize


def training_examples(config: TuneConfig, dataset: Dataset, val_dataset: Dataset | None, style: PromptStyle, tokenizer):
    """(training examples, validation examples, how many cut, how many dropped): the user's data
    tokenized, and the validation held out where it can be spared."""
    tokenize = tokenizer_fn(tokenizer)
    examples, cut, dropped = tokenize_dataset(dataset, style, tokenize, tokenizer.bos_token_id, config.cut_length)
    if val_dataset is not None:
        return examples, tokenize_dataset(val_dataset, style, tokenize, tokenizer.bos_token_id, config.cut_length)[0], cut, dropped
    train, val = split_validation(examples, validation_share(len(examples), config.val_split, False), config.seed)
    return train, val, cut, dropped


def general_replay(config: TuneConfig, ref, train_examples: int, accelerator, on_stage) -> Replay:
    """The general replay for this run: answered by the main process (once per model, then cached),
    read from the cache by the others."""
    from kecil.infer.hardware import threads_for_now

    stage = (lambda done, total: on_stage("replay", done, total)) if on_stage else None
    threads = config.threads or threads_for_now()
    if accelerator.is_main_process:
        replay = build_replay(ref, config.mix_general, train_examples, seed=config.seed, threads=threads, progress=stage)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        replay = build_replay(ref, config.mix_general, train_examples, seed=config.seed, threads=threads)
    return replay


def plan_run(config: TuneConfig, train: list, val: list, replay_examples: int, val_file: bool, processes: int) -> TrainingPlan:
    """The steps chosen from the training examples (the user's and the replay's), the validation reported."""
    return plan_training(
        [len(e.ids) for e in train], max_length=config.cut_length, epochs=config.epochs, batch_size=config.batch_size,
        row_length=config.max_length, lr=config.lr, grad_accum=config.grad_accum, processes=processes,
        warmup=config.warmup, max_steps=config.max_steps, pack=config.pack, seed=config.seed, val_examples=len(val),
        val_source="file" if val_file else ("split" if val else "none"),
        val_lines=sorted(e.line for e in val) if not val_file else (),
        val_chosen=config.val_split is None and not val_file, eval_every=config.eval_every,
        patience=config.patience, replay_examples=replay_examples,
    )
