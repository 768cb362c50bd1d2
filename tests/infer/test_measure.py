"""Measuring a model in a fresh process (kecil.infer.measure): the figures, perplexity with progress
from the child, and the child's errors arriving as the same clean errors."""

from __future__ import annotations

import pytest

from kecil.errors import ConfigError, ModelNotFoundError
from kecil.infer.measure import energy_unreadable_reason, measure


@pytest.fixture(scope="module")
def tiny_gguf(tiny_hf_model, tmp_path_factory):
    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

    return convert_hf_to_gguf(tiny_hf_model("llama"), tmp_path_factory.mktemp("measure") / "tiny.gguf", out_type="f16")


def test_figures_and_perplexity_with_progress(tiny_gguf):
    from tests.tiny_models import training_lines

    seen = []
    text = " ".join(training_lines() * 4)
    figures = measure(str(tiny_gguf), context=256, threads=1, prompt_tokens=32, decode_tokens=8, perplexity_text=text,
                      perplexity_context=64, progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert figures.backend == "llamacpp" and figures.context == 256 and figures.size_bytes == tiny_gguf.stat().st_size
    assert figures.prompt_tokens == 32 and figures.decode_tokens > 0 and figures.peak_rss_bytes > 20e6
    assert figures.perplexity > 1 and figures.perplexity_tokens > 0
    if energy_unreadable_reason() is None:
        assert figures.joules_per_token > 0 and figures.energy_counters
    else:  # this development machine: no readable counter, so no figure rather than a 0
        assert figures.joules_per_token is None and figures.energy_counters is None
    assert seen and [d for d, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1][0] == seen[-1][1]
    plain = measure(str(tiny_gguf), context=128, threads=1, prompt_tokens=16, decode_tokens=4)
    assert plain.perplexity is None and plain.perplexity_tokens == 0


def test_the_childs_errors_come_back_as_the_same_clean_errors(tiny_gguf, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        measure(str(tmp_path / "absent.gguf"))
    with pytest.raises(ConfigError, match="give a longer text"):
        measure(str(tiny_gguf), context=128, threads=1, prompt_tokens=16, decode_tokens=4, perplexity_text="too short", perplexity_context=64)
