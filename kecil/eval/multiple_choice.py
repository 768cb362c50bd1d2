"""Multiple choice by log-likelihood: the answer the model finds most likely after the question.

The question (with its few-shot examples) is evaluated once and every answer is scored on top
of it (kecil.infer.scoring.score_continuations); single-token answers such as MMLU's " A".." D"
cost nothing beyond the question. `acc` picks the highest total log-probability, `acc_norm` the
highest per character of the answer (as lm-evaluation-harness does, so longer endings are not
penalised for their length).
"""

from __future__ import annotations

from collections.abc import Sequence

from kecil.eval.tasks import ChoiceItem, Task
from kecil.infer.backend import Backend
from kecil.infer.scoring import score_continuations


def continuation_tokens(backend: Backend, prompt: str, context: list[int], choice: str) -> list[int]:
    """The ids `choice` adds after `prompt` (whose ids are `context`), tokenized as one text so
    the continuation gets the tokens the model would see (a leading space merges into the word)."""
    whole = backend.tokenize(prompt + choice, add_bos=backend.adds_bos)
    if len(whole) > len(context) and whole[: len(context)] == context:
        return whole[len(context) :]
    return backend.tokenize(choice, add_bos=False)


def fit_window(context: list[int], continuations: Sequence[list[int]], window: int) -> tuple[list[int], bool]:
    """Drop the oldest context tokens (after BOS) when question + longest answer overflow the window."""
    room = window - max(len(c) for c in continuations)
    if len(context) <= room:
        return context, False
    return [context[0]] + context[len(context) - room + 1 :], True


def evaluate_item(backend: Backend, task: Task, item: ChoiceItem, prompt: str) -> dict:
    context = backend.tokenize(prompt, add_bos=backend.adds_bos)
    continuations = [continuation_tokens(backend, prompt, context, choice) for choice in item.choices]
    context, truncated = fit_window(context, continuations, backend.context_length)
    scores = score_continuations(backend, context, continuations)
    logprobs = [s.logprob for s in scores]
    per_char = [lp / max(1, len(choice)) for lp, choice in zip(logprobs, item.choices)]
    return {
        "answer": item.answer,
        "pred": max(range(len(logprobs)), key=logprobs.__getitem__),
        "pred_norm": max(range(len(per_char)), key=per_char.__getitem__),
        "logprobs": [round(lp, 5) for lp in logprobs],
        "truncated": truncated,
    }


def summarize(task: Task, results: Sequence[dict]) -> tuple[float, dict]:
    n = len(results)
    acc = sum(r["pred"] == r["answer"] for r in results) / n
    acc_norm = sum(r["pred_norm"] == r["answer"] for r in results) / n
    metrics = {"acc": acc, "acc_norm": acc_norm}
    truncated = sum(r["truncated"] for r in results)
    extra = {k: v for k, v in metrics.items() if k != task.metric}
    if truncated:
        extra["truncated_items"] = truncated
    return metrics[task.metric], extra
