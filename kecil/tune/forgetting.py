"""What tuning made a model forget: a handful of general questions, asked before and after, compared.

A run on a few dozen facts of one organisation can teach a small model to answer everything with
them ("What is the capital of France?" -> "Tarnholm", seen after the README's old recipe) while its
loss reads as a success. Six questions any instruct model answers are a cheap smoke test of that,
run after every `kecil tune` unless turned off: right before and wrong after is reported as
forgotten, wrong before and right after as gained. None of them is among the general replay's
prompts (kecil/tune/general_prompts.txt), so the check tests what replay protects, not what it trained.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# (question, words any right answer contains): short, unambiguous, answered by SmolLM2-135M-Instruct.
GENERAL_QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("Paris",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is the chemical symbol for water?", ("H2O",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What is the opposite of hot?", ("cold",)),
)


@dataclass(frozen=True)
class GeneralAnswer:
    """One general question's answers from the base model and from the tuned one."""

    question: str
    expected: tuple[str, ...]
    before: str
    after: str

    @property
    def right_before(self) -> bool:
        return _says(self.before, self.expected)

    @property
    def right_after(self) -> bool:
        return _says(self.after, self.expected)

    @property
    def forgotten(self) -> bool:
        return self.right_before and not self.right_after

    @property
    def gained(self) -> bool:
        return self.right_after and not self.right_before


def _says(reply: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", reply, re.IGNORECASE) for w in words)


def general_check(model: str, adapter: str | Path, *, threads: int | None = None, max_tokens: int = 24,
                  progress: Callable[[int, int], None] | None = None) -> list[GeneralAnswer]:
    """Ask GENERAL_QUESTIONS greedily of `model` without and with `adapter` (a `kecil tune` folder);
    `progress(done, total)` after each answer."""
    from kecil.infer.generation import GenerationConfig
    from kecil.infer.load import load_model

    greedy = GenerationConfig(temperature=0, max_tokens=max_tokens)
    total = 2 * len(GENERAL_QUESTIONS)
    done = 0

    def ask(**options) -> list[str]:
        nonlocal done
        answers = []
        with load_model(model, threads=threads, **options) as loaded:
            for question, _ in GENERAL_QUESTIONS:
                answers.append(loaded.chat([{"role": "user", "content": question}], greedy).text.strip())
                done += 1
                if progress is not None:
                    progress(done, total)
        return answers

    before, after = ask(), ask(adapter=adapter)
    return [GeneralAnswer(q, words, b, a) for (q, words), b, a in zip(GENERAL_QUESTIONS, before, after)]


def describe_check(answers: list[GeneralAnswer]) -> list[str]:
    """Lines for a person: the score before and after, then each question the tuned model forgot,
    and each it now gets right that the base model did not."""
    before = sum(a.right_before for a in answers)
    after = sum(a.right_after for a in answers)
    lines = [f"general questions: {before}/{len(answers)} right before tuning, {after}/{len(answers)} after"]
    for a in answers:
        if a.forgotten:
            lines.append(f"forgotten: {a.question!r} was {_short(a.before)!r}, now {_short(a.after)!r}")
        elif a.gained:
            lines.append(f"gained: {a.question!r} was {_short(a.before)!r}, now {_short(a.after)!r}")
    if any(a.forgotten for a in answers):
        lines.append("the adapter overrides what the model knew: mix in more general replay (--mix-general 2), "
                     "train fewer steps (--max-steps) or at a lower --lr, or add general examples to the data")
    return lines


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
