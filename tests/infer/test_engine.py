"""The Engine contract (kecil/infer/engine.py), run the same way on both engines and the real
bundled model: the batching llama.cpp engine and the serial torch engine."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kecil.errors import ConfigError, UnsupportedError
from kecil.infer.backend import shared_prefix_length
from kecil.infer.engine import ENGINES, Engine, SamplingExtras, engine_class, open_engine
from kecil.infer.generation import GenerationConfig, collect
from kecil.infer.llamacpp_batched import BatchedLlamaCppBackend
from kecil.infer.load import load_model
from kecil.infer.serial_engine import SerialEngine
from kecil.models.info import inspect_model
from kecil.models.reference import resolve

pytestmark = pytest.mark.slow
GREEDY = GenerationConfig(max_tokens=12, temperature=0)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine(request):
    ref = resolve(None)
    opened = open_engine(ref, inspect_model(ref), backend=request.param, context_length=512, threads=2, parallel=2)
    yield opened
    opened.close()


def run(engine, prompt_ids, config=GREEDY, extras=None):
    """Submit and wait: (text, final chunk)."""
    pieces, finished = [], threading.Event()
    last = {"logprobs": []}

    def emit(chunk):
        pieces.append(chunk.text)
        last["logprobs"] += chunk.logprobs
        if chunk.finish_reason is not None:
            last["chunk"] = chunk
            finished.set()

    engine.submit(prompt_ids, config, emit, extras)
    assert finished.wait(120)
    return "".join(pieces), last


def test_the_table_picks_the_engine_for_each_backend(engine):
    assert isinstance(engine, Engine)
    assert type(engine) is engine_class(engine.name)
    expected = {"llamacpp": BatchedLlamaCppBackend, "torch": SerialEngine}[engine.name]
    assert type(engine) is expected
    with pytest.raises(ConfigError, match="llamacpp, torch"):
        engine_class("onnx")


def test_a_submitted_generation_equals_the_plain_backends(engine):
    text, last = run(engine, engine.chat_prompt_ids(QUESTION))
    final = last["chunk"]
    assert "Paris" in text
    assert final.finish_reason in ("stop", "length") and final.usage.completion_tokens > 0
    with load_model(None, backend=engine.name, context_length=512) as plain:
        assert plain.chat(QUESTION, GREEDY).text == text


def test_cancel_frees_the_engine_at_its_next_step(engine):
    first = threading.Event()
    chunks = []

    def emit(chunk):
        chunks.append(chunk)
        first.set()

    handle = engine.submit(engine.chat_prompt_ids(QUESTION), GenerationConfig(max_tokens=400, temperature=0.8, seed=1,
                                                                               ignore_eos=True), emit)
    assert first.wait(120)
    handle.cancel()
    assert handle.done.wait(30)
    assert engine.load == (0, 0)
    assert len(chunks) < 400 and all(c.finish_reason is None for c in chunks)
    text, _ = run(engine, engine.chat_prompt_ids(QUESTION))  # and it still serves
    assert "Paris" in text


def test_score_gives_the_same_log_probabilities_on_every_engine(engine):
    ids = engine.tokenize("The capital of France is Paris. The capital of Italy is Rome.", add_bos=engine.adds_bos)
    scores = engine.score(ids, start=3)
    assert len(scores) == len(ids) - 3 and all(s <= 0 for s in scores)
    # The reference: llama.cpp's single-sequence backend, from its logits.
    with load_model(None, backend="llamacpp", context_length=512) as plain:
        rows = plain.logits(ids[:-1], start=2)
    shifted = rows - rows.max(axis=1, keepdims=True)
    expected = shifted[np.arange(len(rows)), ids[3:]] - np.log(np.exp(shifted).sum(axis=1))
    # Quantized weights dequantized by torch, or evaluated in another batch, differ in the last bits.
    assert np.allclose(scores, expected, atol=0.05 if engine.name == "llamacpp" else 0.5)
    assert engine.score(ids, start=len(ids)) == []
    with pytest.raises(ConfigError):
        engine.score(ids, start=0)


def test_score_prefers_the_true_continuation(engine):
    head = engine.tokenize("The capital of France is", add_bos=engine.adds_bos)
    right = engine.score(head + engine.tokenize(" Paris", add_bos=False), start=len(head))
    wrong = engine.score(head + engine.tokenize(" Banana", add_bos=False), start=len(head))
    assert sum(right) > sum(wrong) + 2


def test_extras_an_engine_lacks_are_refused_by_name(engine):
    extras = SamplingExtras(grammar='root ::= "yes" | "no"', logprobs=True)
    if engine.name == "torch":
        with pytest.raises(UnsupportedError, match="grammar or logprobs"):
            engine.submit(engine.chat_prompt_ids(QUESTION), GREEDY, lambda chunk: None, extras)
    else:
        text, last = run(engine, engine.chat_prompt_ids(QUESTION), GREEDY, extras)
        assert text in ("yes", "no")
        assert "".join(entry.token for entry in last["logprobs"]).startswith(text)  # the end token has one too
        assert all(entry.logprob <= 0 for entry in last["logprobs"])


def test_scoring_runs_beside_generations_on_the_batched_engine():
    ref = resolve(None)
    engine = open_engine(ref, inspect_model(ref), context_length=512, threads=2, parallel=3)
    try:
        ids = engine.tokenize("The capital of France is Paris.", add_bos=True)
        alone = engine.score(ids)
        stream = engine.stream_ids(engine.chat_prompt_ids(QUESTION), GenerationConfig(max_tokens=64, temperature=0))
        started = next(stream)  # a generation is running while the text is scored
        beside = engine.score(ids)
        rest = list(stream)
        assert np.allclose(alone, beside, atol=0.05)
        assert "Paris" in started.text + "".join(c.text for c in rest) and rest[-1].finish_reason is not None
    finally:
        engine.close()


def test_a_repeated_prompt_reuses_its_slot_cache():
    """The batched engine keeps each slot's prompt: asked again, only its last token is evaluated,
    even after another prompt came in between (it took another slot instead of overwriting)."""
    ref = resolve(None)
    engine = open_engine(ref, inspect_model(ref), context_length=512, threads=2, parallel=4)
    try:
        first = engine.chat_prompt_ids([{"role": "user", "content": "Explain how rain forms."}])
        other = engine.chat_prompt_ids([{"role": "user", "content": "Why do people enjoy music?"}])
        texts = [collect(engine.stream_ids(p, GREEDY)).text for p in (first, other)]
        before = engine.prompt_tokens_reused
        again = collect(engine.stream_ids(first, GREEDY)).text
        assert engine.prompt_tokens_reused - before == len(first) - 1
        assert again == texts[0]  # the cache changes nothing about the answer
    finally:
        engine.close()


def test_a_busy_engine_copies_the_best_matching_slot_into_the_next_free_one():
    """While generations run, a new request takes the lowest free slot (batches stay fast) but
    starts from the KV stream of whichever slot holds the longest prefix of its prompt, free or
    still running: only the rest of its prompt is evaluated, and the answer is unchanged."""
    ref = resolve(None)
    engine = open_engine(ref, inspect_model(ref), context_length=512, threads=2, parallel=4)
    try:
        first = engine.chat_prompt_ids([{"role": "user", "content": "Explain how rain forms."}])
        other = engine.chat_prompt_ids([{"role": "user", "content": "Why do people enjoy music?"}])
        short = GenerationConfig(max_tokens=8, temperature=0)
        alone = [collect(engine.stream_ids(p, short)).text for p in (first, other)]  # slots 0 and 1
        running = engine.stream_ids(first, GenerationConfig(max_tokens=200, temperature=0, ignore_eos=True))
        next(running)  # busy now, in slot 0 (the whole of `first` is cached there)
        copies, reused = engine.prompt_streams_copied, engine.prompt_tokens_reused
        # The lowest free slot is 1, holding `other`: `first` again must come from running slot 0.
        again = collect(engine.stream_ids(first, short)).text
        assert engine.prompt_streams_copied == copies + 1
        assert engine.prompt_tokens_reused - reused == len(first) - 1
        assert again == alone[0]
        # Slot 1 now holds `first`; `other` (held by no slot any more) is evaluated in full.
        copies, reused = engine.prompt_streams_copied, engine.prompt_tokens_reused
        assert collect(engine.stream_ids(other, short)).text == alone[1]
        shared = shared_prefix_length(first, other)
        assert engine.prompt_tokens_reused - reused == shared
        running.close()
    finally:
        engine.close()
