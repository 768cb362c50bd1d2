"""A quantized copy of a built-in keeps the built-in's preset system prompt (issue 26, point 3): kecil
writes it into the GGUF as `kecil.system_prompt` and reads it back when the file is resolved."""

from __future__ import annotations

import pytest
from gguf import GGUFReader, GGUFValueType

from kecil.compress.quantize import QuantizeConfig, quantize
from kecil.compress.requantize import requantize
from kecil.compress.quant_types import quant_type
from kecil.models.builtins import get_builtin
from kecil.models.reference import SYSTEM_PROMPT_KEY, resolve
from tests.compress.test_quantize import kecil


def stored_prompt(path) -> str | None:
    found = GGUFReader(path).get_field(SYSTEM_PROMPT_KEY)
    return None if found is None else found.contents()


def test_a_stored_preset_is_read_back_and_carried_on(tiny_hf_model, tmp_path):
    plain = tmp_path / "plain.gguf"
    quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="f16", output=plain, method="none", report=False))
    assert stored_prompt(plain) is None and resolve(str(plain)).system_prompt is None  # nothing invented
    tagged = tmp_path / "tagged.gguf"
    requantize(plain, tagged, quant_type("q8_0"), metadata={SYSTEM_PROMPT_KEY: ("Answer briefly.", GGUFValueType.STRING)})
    assert resolve(str(tagged)).system_prompt == "Answer briefly."
    again = tmp_path / "again.gguf"
    result = quantize(QuantizeConfig(model=str(tagged), to="q4_0", output=again, method="none", report=False))
    assert stored_prompt(again) == "Answer briefly." == result.system_prompt  # written once, not duplicated
    assert resolve(str(again)).system_prompt == "Answer briefly."


@pytest.mark.slow
def test_a_quantized_builtin_answers_like_the_builtin(tmp_path):
    preset = get_builtin("smollm2-135m").system_prompt
    out = tmp_path / "small.gguf"
    result = quantize(QuantizeConfig(model="smollm2-135m", to="q8_0", output=out, report=False, threads=2))
    assert result.system_prompt == preset and stored_prompt(out) == preset
    ref = resolve(str(out))
    assert ref.system_prompt == preset and not ref.builtin
    question = "What is the capital of France?"
    for model in ("smollm2-135m", str(out)):
        done = kecil("generate", model, question, "--temperature", "0", "--max-tokens", "24", "--no-stats", "--threads", "2")
        assert done.returncode == 0, done.stderr
        assert "Paris" in done.stdout, (model, done.stdout)
