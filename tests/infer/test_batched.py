"""The continuous-batching llama.cpp engine on the bundled model: a seeded generation is the
same alone, in a batch and through the single-sequence backend; cancelling frees the slot."""

from __future__ import annotations

import threading
import time

import pytest

from kecil.errors import PromptTooLongError
from kecil.infer.generation import GenerationConfig, collect
from kecil.infer.engine import SamplingExtras
from kecil.infer.llamacpp_batched import BatchedLlamaCppBackend
from kecil.infer.load import load_model
from kecil.models.info import inspect_model
from kecil.models.reference import resolve

QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain.", "Who wrote Hamlet?"]


@pytest.fixture(scope="module")
def engine():
    ref = resolve("smollm2-135m")
    with BatchedLlamaCppBackend(ref, inspect_model(ref), context_length=512, threads=1, parallel=4) as e:
        yield e


def chat(engine, i: int, config: GenerationConfig) -> str:
    return collect(engine.stream_chat([{"role": "user", "content": QUESTIONS[i]}], config)).text


def test_same_seed_same_text_alone_batched_and_single_backend(engine):
    configs = [GenerationConfig(max_tokens=32, temperature=0.8, seed=40 + i) for i in range(len(QUESTIONS))]
    alone = [chat(engine, i, c) for i, c in enumerate(configs)]
    together: list[str | None] = [None] * len(QUESTIONS)
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, chat(engine, i, configs[i]))) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    with load_model("smollm2-135m", threads=1, context_length=512) as single:
        assert [chat(single, i, c) for i, c in enumerate(configs)] == alone
    assert len(set(alone)) == len(alone)


def test_cancel_frees_the_slot_and_load_counts(engine):
    chunks = []
    handle = engine.submit(engine.tokenize("1, 2, 3, 4, 5,", add_bos=False), GenerationConfig(max_tokens=400, temperature=0), chunks.append)
    deadline = time.monotonic() + 60
    while not chunks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.load == (1, 0)
    handle.cancel()
    assert handle.done.wait(30)
    assert engine.load == (0, 0)
    assert chunks[-1].finish_reason is None  # cancelled: no final chunk is sent to a caller who left


def test_prompt_too_long_is_refused_at_submit(engine):
    with pytest.raises(PromptTooLongError, match="512"):
        engine.submit(list(range(600)), GenerationConfig(), lambda chunk: None)


def test_logprobs_are_normalised_and_top_alternatives_sorted(engine):
    import math

    config = GenerationConfig(max_tokens=6, temperature=0)
    chunks = list(engine.stream_ids(engine.tokenize("The capital of France is", add_bos=False), config, SamplingExtras(logprobs=True, top_logprobs=3)))
    entries = [e for c in chunks for e in c.logprobs]
    assert len(entries) == 6
    for e in entries:
        assert e.logprob <= 0 and len(e.top) == 3
        assert [lp for _, lp in e.top] == sorted((lp for _, lp in e.top), reverse=True)
        assert math.isclose(e.top[0][1], e.logprob, abs_tol=1e-5)  # greedy: the chosen token is the most likely
    assert "".join(e.token for e in entries) == "".join(c.text for c in chunks)
