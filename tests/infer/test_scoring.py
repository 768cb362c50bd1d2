"""Backend.logits and kecil.infer.scoring: checked by hand against the model's own forward pass
on a tiny random model, and the torch and llama.cpp backends against each other on the bundled model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kecil.errors import ConfigError, PromptTooLongError
from kecil.infer.generation import GenerationConfig
from kecil.infer.load import load_model
from kecil.infer.scoring import log_softmax, perplexity, perplexity_chunks, score_continuations, token_logprobs
from tests.tiny_models import training_lines

TEXT = " ".join(training_lines()[:60])


@pytest.fixture(scope="module")
def tiny(tiny_hf_model):
    with load_model(str(tiny_hf_model("llama")), context_length=256) as model:
        yield model


def reference_logprobs(backend, ids):
    """log p(ids[i] | ids[:i]) straight from transformers: one forward pass, no cache, no kecil."""
    import torch

    with torch.inference_mode():
        logits = backend._model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


def test_log_softmax_rows_sum_to_one():
    rows = log_softmax(np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]], dtype=np.float32))
    assert np.allclose(np.exp(rows).sum(axis=1), 1.0)
    assert math.isclose(rows[1, 0], math.log(0.5), rel_tol=1e-9)


def test_token_logprobs_match_a_plain_forward_pass(tiny):
    ids = tiny.tokenize(TEXT, add_bos=True)[:80]
    assert np.allclose(token_logprobs(tiny, ids), reference_logprobs(tiny, ids), atol=1e-4)


def test_logits_shape_and_start(tiny):
    ids = tiny.tokenize(TEXT, add_bos=True)[:20]
    full = tiny.logits(ids)
    assert full.shape == (20, len(tiny._tokenizer)) and full.dtype == np.float32
    assert np.allclose(tiny.logits(ids, start=15), full[15:], atol=1e-4)


def test_cached_prefix_gives_the_same_logits_as_a_fresh_pass(tiny):
    ids = tiny.tokenize(TEXT, add_bos=True)[:40]
    fresh = tiny.logits(ids)
    tiny.logits(ids[:25] + [7, 8, 9])  # leaves a cache that shares 25 tokens with `ids`
    assert np.allclose(tiny.logits(ids, start=10), fresh[10:], atol=1e-4)
    tiny.logits(ids[:5])  # a shorter call must not leave stale rows behind
    assert np.allclose(tiny.logits(ids), fresh, atol=1e-4)


def test_continuation_scores_equal_the_sum_of_token_logprobs(tiny):
    context = tiny.tokenize("the cat sat on the", add_bos=True)
    answers = [tiny.tokenize(t, add_bos=False) for t in (" mat", " warm mat by the door", " green field")]
    scores = score_continuations(tiny, context, answers)
    for answer, score in zip(answers, scores):
        expected = reference_logprobs(tiny, context + answer)[len(context) - 1 :].sum()
        assert score.tokens == len(answer)
        assert math.isclose(score.logprob, expected, abs_tol=1e-3)


def hand_perplexity(backend, text, context):
    """llama-perplexity's method written out on the raw model: chunks of `context` tokens with
    BOS first, each chunk run on its own, the second half scored."""
    ids = backend.tokenize(text, add_bos=backend.adds_bos)
    nll, count = 0.0, 0
    for start in range(0, len(ids) // context * context, context):
        chunk = ids[start : start + context]
        if backend.adds_bos:
            chunk = [ids[0]] + chunk[1:]
        logprobs = reference_logprobs(backend, chunk)
        nll -= logprobs[context // 2 :].sum()  # token j+1 given tokens up to j, for j >= context/2
        count += len(logprobs[context // 2 :])
    return math.exp(nll / count), count


def test_perplexity_matches_llama_cpp_method_by_hand(tiny):
    result = perplexity(tiny, TEXT, context=64)
    expected, count = hand_perplexity(tiny, TEXT, 64)
    assert result.tokens == count
    assert result.chunks == len(tiny.tokenize(TEXT, add_bos=tiny.adds_bos)) // 64
    assert math.isclose(result.perplexity, expected, rel_tol=1e-4)
    # a random 512-token model is about as unsure as uniform: a sanity bound, not a target
    assert 1 < result.perplexity < 5 * 512


def test_perplexity_chunks_put_bos_first_and_drop_the_ragged_end():
    chunks = perplexity_chunks(list(range(1, 11)), 4, bos=0)
    assert chunks == [[0, 2, 3, 4], [0, 6, 7, 8]]


def test_perplexity_refuses_short_text_and_oversized_context(tiny):
    with pytest.raises(ConfigError, match="needs at least"):
        perplexity(tiny, "the cat sat", context=64)
    with pytest.raises(ConfigError, match="does not fit"):
        perplexity(tiny, TEXT, context=1024)
    with pytest.raises(PromptTooLongError):
        tiny.logits(list(range(300)))


# --- the real bundled model on both engines ------------------------------------------------
@pytest.fixture(scope="module")
def smol_pair():
    with (
        load_model("smollm2-135m", backend="llamacpp", context_length=512) as cpp,
        load_model("smollm2-135m", backend="torch", context_length=512) as pt,
    ):
        yield cpp, pt


@pytest.mark.slow
def test_torch_and_llamacpp_logprobs_agree(smol_pair):
    cpp, pt = smol_pair
    text = "The capital of France is Paris. Water boils at one hundred degrees. The cat sat on the mat."
    ids = cpp.tokenize(text, add_bos=cpp.adds_bos)
    assert ids == pt.tokenize(text, add_bos=pt.adds_bos)
    a, b = cpp.logits(ids), pt.logits(ids)
    # llama.cpp quantizes activations to 8 bits for its matmuls: values differ a little,
    # the model's choices do not.
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.95
    la, lb = token_logprobs(cpp, ids), token_logprobs(pt, ids)
    assert abs(la.mean() - lb.mean()) < 0.05
    assert np.abs(la - lb).mean() < 0.1


@pytest.mark.slow
def test_torch_and_llamacpp_rank_answers_the_same(smol_pair):
    cpp, pt = smol_pair
    questions = [
        ("Question: What is the capital of France?\nAnswer:", [" Paris", " Berlin", " Madrid", " a banana"]),
        ("Question: How many legs does a dog have?\nAnswer:", [" four", " two", " seven hundred"]),
        ("The sun rises in the", [" east", " west", " refrigerator"]),
    ]
    for question, answers in questions:
        context = cpp.tokenize(question, add_bos=cpp.adds_bos)
        conts = [cpp.tokenize(a, add_bos=False) for a in answers]
        a = [s.logprob for s in score_continuations(cpp, context, conts)]
        b = [s.logprob for s in score_continuations(pt, context, conts)]
        assert np.argsort(a).tolist() == np.argsort(b).tolist(), question
        assert np.allclose(a, b, atol=0.75)
    assert a[0] == max(a)  # the model knows where the sun rises


@pytest.mark.slow
def test_llamacpp_cache_reuse_and_generation_do_not_disturb_each_other(smol_pair):
    cpp, _ = smol_pair
    greedy = GenerationConfig(temperature=0, max_tokens=8)
    before = cpp.generate("The capital of France is", greedy).text
    ids = cpp.tokenize("One two three four five six seven eight nine ten", add_bos=True)
    fresh = cpp.logits(ids)
    assert cpp.generate("The capital of France is", greedy).text == before
    cpp.logits(ids[:6] + [42, 43])
    assert np.allclose(cpp.logits(ids, start=3), fresh[3:], atol=1e-3)
    assert cpp.generate("The capital of France is", greedy).text == before
    # after generation the cache holds generate()'s tokens: logits must not reuse them
    assert np.allclose(cpp.logits(ids), fresh, atol=1e-3)


@pytest.mark.slow
def test_perplexity_agrees_across_engines_within_one_percent(smol_pair):
    cpp, pt = smol_pair
    text = " ".join(training_lines()[:30])
    a, b = perplexity(cpp, text, context=64), perplexity(pt, text, context=64)
    assert a.tokens == b.tokens and a.chunks == b.chunks >= 2
    assert abs(a.perplexity - b.perplexity) / b.perplexity < 0.01


def _llama_perplexity_tool():
    """llama.cpp's own llama-perplexity, where bench/build_llama_tools.sh built it (not in CI)."""
    import os
    from pathlib import Path

    roots = [os.environ.get("KECIL_HOME"), str(Path.home() / ".cache" / "kecil")]  # read at collection, before the test home
    for root in filter(None, roots):
        tool = Path(root) / "llama.cpp-tools" / "0.3.36" / "bin" / "llama-perplexity"
        if tool.is_file():
            return tool
    return None


@pytest.mark.slow
@pytest.mark.skipif(_llama_perplexity_tool() is None, reason="llama-perplexity is not built (bench/build_llama_tools.sh)")
def test_perplexity_matches_llama_perplexity_within_one_percent(smol_pair, tmp_path):
    """The anchor itself: llama.cpp's llama-perplexity binary and kecil on the same file, window and chunks."""
    import re
    import subprocess

    from kecil.eval.builtin_tasks import wikipedia_text

    cpp, pt = smol_pair
    text = wikipedia_text()[:60_000]
    path = tmp_path / "wiki.txt"
    path.write_text(text, encoding="utf-8")
    run = subprocess.run(
        [str(_llama_perplexity_tool()), "-m", str(cpp.ref.path), "-f", str(path), "-c", "128", "--chunks", "8", "-t", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)
    assert found, run.stderr[-2000:]
    reference = float(found.group(1))
    for engine in (cpp, pt):
        ours = perplexity(engine, path.read_text(encoding="utf-8"), context=128, max_chunks=8)
        assert ours.chunks == 8 and ours.tokens == 8 * 63
        assert abs(ours.perplexity - reference) / reference < 0.01, (engine.name, ours.perplexity, reference)
