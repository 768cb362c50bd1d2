"""What an evaluation task is: its items, how a prompt is built (zero- or few-shot), its metric.

Four kinds, each run by its own module: `choice` (multiple choice by log-likelihood,
kecil/eval/multiple_choice.py), `generate` (exact match / contains / final number,
kecil/eval/generative.py), `code` (pass@1 in a sandbox, kecil/eval/code.py) and `perplexity`
(kecil/eval/perplexity.py). Built-in tasks register in kecil/eval/builtin_tasks.py; a user's
own task comes from a YAML spec (kecil/eval/custom.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kecil.errors import ConfigError

KINDS = ("choice", "generate", "code", "perplexity")


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    query: str  # the text up to where the answer starts ("...\nAnswer:")
    choices: tuple[str, ...]  # continuations, each with its leading separator (" A", " Paris")
    answer: int  # index of the right choice
    group: str = ""  # few-shot examples come from the same group (an MMLU subject)


@dataclass(frozen=True)
class GenerateItem:
    id: str
    prompt: str
    answers: tuple[str, ...]  # any of these counts as right
    target: str = ""  # the worked answer shown when this item is a few-shot example
    group: str = ""


@dataclass(frozen=True)
class CodeItem:
    id: str
    prompt: str  # what the model continues (a signature and docstring, or an instruction)
    test: str  # code run after prompt + completion; raises on a wrong solution
    prefix_prompt: bool = True  # the program starts with the prompt (HumanEval) or not (MBPP)
    group: str = ""


Item = ChoiceItem | GenerateItem | CodeItem


@dataclass(frozen=True)
class Task:
    """One evaluation task. `items()` loads the evaluation items; `examples(group)` the pool
    few-shot examples are drawn from (default: the other evaluation items)."""

    name: str
    kind: str
    description: str
    items: Callable[[], Sequence[Item]]
    metric: str  # the headline metric: acc, acc_norm, exact_match, contains, pass@1, perplexity
    default_shots: int = 0
    examples: Callable[[str], Sequence[Item]] | None = None
    fixed_examples: bool = False  # take the first N examples in order (GSM8K's fixed chain-of-thought set)
    header: Callable[[Item], str] | None = None  # text before the examples (MMLU's subject line)
    match: str = "exact"  # generate: exact | contains | number
    stop: tuple[str, ...] = ()
    max_tokens: int = 256
    version: str = "1"  # part of every cache key: bump when prompts or scoring change
    source: str = ""  # where the data comes from, for the report
    language: str = ""  # ISO 639-1 code of a non-English task's text: the report adds its tokenizer fertility
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


def select_items(items: Sequence[Item], limit: int | None, seed: int) -> list[Item]:
    """A fixed random subset of `limit` items (the same for the same seed), kept in data order."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def fewshot_examples(task: Task, item: Item, shots: int, seed: int, pool_cache: dict) -> list[Item]:
    """`shots` examples for `item`: from the task's example pool for the item's group, never the
    item itself, chosen by a generator seeded with (seed, item id) so every run builds the same prompt."""
    if shots <= 0:
        return []
    key = item.group
    if key not in pool_cache:
        pool_cache[key] = list(task.examples(key) if task.examples else task.items())
    pool = [ex for ex in pool_cache[key] if ex.id != item.id]
    if len(pool) < shots:
        raise ConfigError(f"task {task.name!r} has only {len(pool)} few-shot examples; ask for at most that many shots")
    if task.fixed_examples:
        return pool[:shots]
    return random.Random(f"{seed}:{item.id}").sample(pool, shots)


def _shown(example: Item) -> str:
    if isinstance(example, ChoiceItem):
        return example.query + example.choices[example.answer]
    if isinstance(example, GenerateItem):
        return example.prompt + (example.target or " " + example.answers[0])
    return example.prompt + example.test


def build_prompt(task: Task, item: Item, examples: Sequence[Item]) -> str:
    """Header, then each example with its answer, a blank line between, then the item's question."""
    header = task.header(item) if task.header else ""
    shown = "".join(_shown(ex) + "\n\n" for ex in examples)
    question = item.query if isinstance(item, ChoiceItem) else item.prompt
    return header + shown + question


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register(name: str):
    """Decorator for a function that builds a built-in task (called only when the task is used)."""

    def add(factory: Callable[[], Task]) -> Callable[[], Task]:
        _REGISTRY[name] = factory
        return factory

    return add


def builtin_task_names() -> list[str]:
    import kecil.eval.builtin_tasks  # noqa: F401  (registers them)
    import kecil.eval.language_tasks  # noqa: F401

    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    names = builtin_task_names()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(names)}, or a YAML spec via --task-file")
    return _REGISTRY[name]()
