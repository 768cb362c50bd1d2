"""Speculative decoding (kecil/infer/speculative.py, drafting.py): at temperature 0 the text is the
model's own, token for token, with a draft model or prompt lookup; sampled, the acceptance rule
keeps the model's distribution; a draft with another vocabulary is refused."""

from __future__ import annotations

import numpy as np
import pytest

from kecil.errors import ConfigError
from kecil.infer.drafting import PromptLookup
from kecil.infer.generation import GenerationConfig
from kecil.infer.load import load_model
from kecil.infer.speculative import Draft, SpeculativeConfig, TokenSampler, accept
from tests.cli_helpers import assert_clean_error, kecil

SOURCE = ("The Rinjani trail opens on 1 April each year and closes on 31 December. Hikers must register at the "
          "Sembalun office, pay a fee of 150,000 rupiah per day, and hire a licensed guide. Camping is allowed only "
          "at Plawangan Sembalun and Segara Anak. Fires are forbidden above 2,000 metres.")
QUESTION = f"Source:\n{SOURCE}\n\nUsing only the source, list every rule a hiker must follow on the Rinjani trail, quoting it."
GREEDY = GenerationConfig(max_tokens=40, temperature=0)


def _qwen(size: str) -> str:
    from kecil.models.builtins import builtin_path

    return str(builtin_path(f"qwen2.5-coder-{size}"))


def _answer(model: str, draft: str | None, config: GenerationConfig = GREEDY, times: int = 1):
    with load_model(model, context_length=512, draft=draft) as backend:
        texts = [backend.chat([{"role": "user", "content": QUESTION}], config).text for _ in range(times)]
        return (texts[0] if times == 1 else texts), dict(backend.speculation)


@pytest.fixture(scope="module")
def plain_05b() -> str:
    return _answer(_qwen("0.5b"), None)[0]


@pytest.mark.parametrize("draft", ["prompt-lookup", "self"])
def test_greedy_text_is_the_models_own(plain_05b, draft):
    # The 0.5B drafting for itself must see every proposal accepted (the same argmax) but the ones
    # cut by its confidence floor; prompt lookup finds the source's n-grams in the answer.
    model = _qwen("0.5b")
    text, stats = _answer(model, model if draft == "self" else draft)
    assert text == plain_05b
    assert stats["drafted"] > 0 and stats["accepted"] > 0
    assert stats["rounds"] < GREEDY.max_tokens  # fewer model passes than tokens: the point of it
    if draft == "self":
        assert stats["accepted"] >= 0.9 * stats["drafted"]


@pytest.mark.heavy
def test_greedy_text_of_the_15b_with_the_05b_drafting():
    plain = _answer(_qwen("1.5b"), None)[0]
    text, stats = _answer(_qwen("1.5b"), _qwen("0.5b"))
    assert text == plain
    assert stats["accepted"] > 0


def test_sampled_speculation_repeats_with_a_seed():
    model = _qwen("0.5b")
    config = GenerationConfig(max_tokens=12, temperature=0.8, seed=7)
    (first, again), stats = _answer(model, "prompt-lookup", config, times=2)
    assert first == again and first.strip()
    assert stats["rounds"] >= 1


def test_a_draft_with_another_vocabulary_is_refused():
    with pytest.raises(ConfigError, match="vocabulary of 49,152 tokens.*share the model's tokenizer"):
        load_model(_qwen("0.5b"), context_length=256, draft="smollm2-135m")


def test_cli_generate_with_a_draft_prints_the_same_text():
    model = _qwen("0.5b")
    args = ("generate", model, "--temperature", "0", "-n", "16", "Repeat exactly: the quick brown fox jumps over the lazy dog, twice.")
    plain, drafted = kecil(*args), kecil(*args, "--draft", "prompt-lookup")
    assert plain.returncode == 0 and drafted.returncode == 0, drafted.stderr
    assert drafted.stdout == plain.stdout
    assert "draft:" in drafted.stderr and "accepted" in drafted.stderr
    assert_clean_error(kecil("generate", model, "--draft", "smollm2-135m", "-n", "4", "hi"), "vocabulary", "tokenizer")


def test_prompt_lookup_proposes_what_followed_the_last_ngram():
    lookup = PromptLookup(SpeculativeConfig(ngram_max=3, ngram_min=2))
    sampler = TokenSampler(GREEDY, np.random.default_rng(0))
    text = [5, 6, 7, 8, 9, 10, 1, 2, 6, 7]  # "6 7" appeared before, followed by 8 9 10
    assert lookup.propose(text, 3, sampler).tokens == [8, 9, 10]
    assert lookup.propose([*text, 8, 9], 2, sampler).tokens == [10, 1]  # "7 8 9" now, longest first
    assert lookup.propose([1, 2, 3, 4], 3, sampler).tokens == []  # another text, nothing repeats


@pytest.mark.parametrize("drafted", ["model", "lookup"])
def test_sampled_acceptance_keeps_the_models_distribution(drafted):
    # The first emitted token must follow the model's p whatever the draft's q: checked over many
    # draws against p itself, with a draft that disagrees with the model on purpose.
    rng = np.random.default_rng(1)
    config = GenerationConfig(temperature=1.0, top_k=0, top_p=1.0)
    sampler = TokenSampler(config, rng)
    target_logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], dtype=np.float32))
    q = np.array([0.05, 0.1, 0.15, 0.2, 0.5])
    rows = np.stack([target_logits, target_logits])
    draws = 40_000
    counts = np.zeros(5)
    for _ in range(draws):
        proposal = int(rng.choice(5, p=q)) if drafted == "model" else 4
        out = accept(sampler, rows, Draft([proposal], [q] if drafted == "model" else None), [])
        counts[out[0]] += 1
    p = sampler.probs(target_logits)
    assert np.abs(counts / draws - p).max() < 0.012, (counts / draws, p)


def test_served_engine_speculates_alone_and_batches_together(plain_05b):
    # One request alone runs speculatively (the drafter's counters move); two at once fall back to
    # plain batched decoding; every text is the model's own.
    import threading

    from kecil.infer.generation import collect
    from kecil.infer.llamacpp_batched import BatchedLlamaCppBackend
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve

    ref = resolve(_qwen("0.5b"))
    messages = [{"role": "user", "content": QUESTION}]
    with BatchedLlamaCppBackend(ref, inspect_model(ref), context_length=512, threads=2, parallel=2, draft="prompt-lookup") as engine:
        assert collect(engine.stream_chat(messages, GREEDY)).text == plain_05b
        alone = dict(engine.solo.stats)
        assert alone["accepted"] > 0 and alone["rounds"] < GREEDY.max_tokens
        texts = [None, None]

        def ask(i: int) -> None:
            texts[i] = collect(engine.stream_chat(messages, GREEDY)).text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert texts == [plain_05b, plain_05b]
