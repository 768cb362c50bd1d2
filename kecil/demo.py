"""The main job `make demo` runs: load the embedded default model and answer a few questions,
streaming each answer and reporting its speed. Later stages grow this into the full pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kecil.infer.generation import GenerationConfig, Timings

QUESTIONS = (
    "What is the capital of France?",
    "Name the three primary colours.",
    "Give me one short tip for sleeping better.",
)


@dataclass(frozen=True)
class DemoAnswer:
    question: str
    answer: str
    timings: Timings


def run_demo(
    model: str | None = None,
    *,
    backend: str | None = None,
    questions: tuple[str, ...] = QUESTIONS,
    max_tokens: int = 96,
    on_text: Callable[[str], None] = lambda text: None,
    on_question: Callable[[str], None] = lambda question: None,
    on_answer: Callable[[DemoAnswer], None] = lambda answer: None,
) -> list[DemoAnswer]:
    """Answer each question in its own one-turn chat, greedily (the same answers every run)."""
    from kecil.infer.load import load_model

    answers = []
    config = GenerationConfig(max_tokens=max_tokens, temperature=0)
    with load_model(model, backend=backend) as engine:
        for question in questions:
            on_question(question)
            pieces = []
            for chunk in engine.stream_chat([{"role": "user", "content": question}], config):
                pieces.append(chunk.text)
                on_text(chunk.text)
            answer = DemoAnswer(question, "".join(pieces).strip(), chunk.timings)
            on_answer(answer)
            answers.append(answer)
    return answers
