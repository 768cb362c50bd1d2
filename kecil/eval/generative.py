"""Generative tasks: greedy answers checked by exact match, containment, or the final number.

`exact` and `contains` compare SQuAD-normalised text (lower case, no punctuation, no articles,
single spaces); `number` takes the number after "answer is" (or else the last number in the
answer) and compares it numerically, as GSM8K is scored.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from kecil.eval.tasks import GenerateItem, Task
from kecil.infer.backend import Backend
from kecil.infer.generation import GenerationConfig, collect

_NUMBER = r"-?[\d,]*\.?\d+"
RESULT_FORMAT = 2  # in cache keys: results stored in an older shape are never read back


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def final_number(text: str) -> str | None:
    stated = re.findall(r"answer is\s*\$?\s*(" + _NUMBER + ")", text)
    found = stated or re.findall(_NUMBER, text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def _same_number(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return abs(float(a) - float(b.replace(",", "").replace("$", "").strip())) < 1e-6
    except ValueError:
        return False


def is_correct(prediction: str, answers: Sequence[str], match: str) -> bool:
    if match == "number":
        return any(_same_number(final_number(prediction), a) for a in answers)
    guess = normalize(prediction)
    if match == "contains":
        return any(normalize(a) in guess for a in answers if normalize(a))
    return any(guess == normalize(a) for a in answers)


def generate_greedy(backend: Backend, prompt: str, *, max_tokens: int, stop: Sequence[str]):
    """Greedy completion of a raw prompt; an over-long prompt keeps its newest tokens."""
    ids = backend.tokenize(prompt, add_bos=backend.adds_bos)
    room = backend.context_length - min(max_tokens, backend.context_length // 4)
    truncated = len(ids) > room
    if truncated:
        ids = ids[:1] + ids[len(ids) - room + 1 :]
    config = GenerationConfig(temperature=0, max_tokens=max_tokens, stop=tuple(stop))
    return collect(backend.stream_ids(ids, config)), truncated


def evaluate_item(backend: Backend, task: Task, item: GenerateItem, prompt: str) -> dict:
    completion, truncated = generate_greedy(backend, prompt, max_tokens=task.max_tokens, stop=task.stop)
    text = completion.text
    for marker in task.stop:  # some engines return the stop text itself
        text = text.split(marker)[0]
    return {
        "prediction": text.strip(),
        "correct": is_correct(text, item.answers, task.match),
        "exact": is_correct(text, item.answers, "exact"),
        "contains": is_correct(text, item.answers, "contains"),
        "truncated": truncated,
    }


def summarize(task: Task, results: Sequence[dict]) -> tuple[float, dict]:
    """The task's metric is the share answered right by its own rule (`match`); the other rules
    are reported beside it for text answers."""
    n = len(results)
    extra = {}
    if task.match != "number":
        extra = {"exact_match": sum(r["exact"] for r in results) / n, "contains": sum(r["contains"] for r in results) / n}
        extra.pop(task.metric, None)
    truncated = sum(r["truncated"] for r in results)
    if truncated:
        extra["truncated_items"] = truncated
    return sum(r["correct"] for r in results) / n, extra
