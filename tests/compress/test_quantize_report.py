"""The facts `kecil quantize` reports (issue 26, point 2): the real bits per weight and why, a plain
note when the output is larger or worse than its input, and a peak RAM that is the quantized
model's own, measured in a fresh process."""

from __future__ import annotations

import json

import pytest
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from kecil.compress.quantize import QuantizeConfig, quantize
from kecil.compress.report import compare, report_lines


def counted_with_gguf(path):
    """(bits per weight, fallback matrices, their row lengths) read independently with gguf-py."""
    reader = GGUFReader(path)
    bits = 8 * sum(int(t.n_bytes) for t in reader.tensors) / sum(int(t.n_elements) for t in reader.tensors)
    fallen = [t for t in reader.tensors if len(t.shape) == 2 and GGML_QUANT_SIZES[GGMLQuantizationType(t.tensor_type)][0] == 32]
    return bits, len(fallen), sorted({int(t.shape[0]) for t in fallen})


def test_bits_per_weight_and_fallbacks_on_a_tiny_model(tiny_hf_model, tmp_path):
    out = tmp_path / "tiny.gguf"
    result = quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="q4_k_m", output=out, method="none", report=False))
    bits, fallen, rows = counted_with_gguf(out)
    assert fallen > 0 and rows == [64, 128]  # the tiny llama's rows (hidden 64, MLP 128) never fill a 256-value block
    assert result.bits_per_weight == pytest.approx(bits)
    assert result.fallback_tensors == fallen and result.fallback_rows == rows
    assert set(result.fallback_types) <= {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
    assert result.quantized_tensors >= fallen
    sentence = f"q4_k_m: {bits:.1f} bits/weight; {fallen} of {result.quantized_tensors} tensors fell back to "
    assert any(n.startswith(sentence) and n.endswith("because their rows (64, 128) are not a multiple of 256") for n in result.notes)
    data = json.loads(json.dumps(result.to_dict()))
    for key in ("bits_per_weight", "fallback_tensors", "fallback_rows", "larger_than_source", "worse_than_source", "notes"):
        assert key in data
    assert data["source_bits_per_weight"] is None  # an HF folder: float weights, not a GGUF


def test_a_type_without_256_blocks_has_no_fallbacks(tiny_hf_model, tmp_path):
    result = quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="q4_0", output=tmp_path / "t.gguf", method="none", report=False))
    assert result.fallback_tensors == 0 and result.notes == [] and not result.larger_than_source
    assert result.bits_per_weight == pytest.approx(counted_with_gguf(tmp_path / "t.gguf")[0])


def test_notes_say_plainly_when_the_output_is_larger_or_worse():
    both = compare(100 * 2**20, 107 * 2**20, 23.297, 23.776, source_name="smollm2-135m", source_bits=5.74)
    assert both.larger_than_source and both.worse_than_source
    assert both.notes == [
        "the output is LARGER (107.0 MiB against 100.0 MiB; the input is already 5.7 bits/weight) and WORSE "
        "(perplexity 23.297 -> 23.776) than its input: nothing is gained; keep smollm2-135m"
    ]
    larger = compare(100, 120, None, None, source_name="m.gguf")
    assert larger.larger_than_source and larger.worse_than_source is None and "LARGER" in larger.notes[0]
    smaller = compare(100, 50, 10.0, 10.5, source_name="m")
    assert not smaller.larger_than_source and smaller.worse_than_source and "smaller" in smaller.notes[0]
    better = compare(100, 50, 10.0, 9.9, source_name="m")
    assert (better.larger_than_source, better.worse_than_source, better.notes) == (False, False, [])


def test_the_report_peak_is_the_models_own_not_calibrations(tiny_hf_model, tmp_path):
    """The process that quantizes holds far more (here a 600 MiB ballast standing in for calibration's
    float model); the report measures each model alone in a fresh process."""
    from tests.tiny_models import training_lines

    ballast = bytearray(600 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(" ".join(reversed(training_lines())))
    out = tmp_path / "t.gguf"
    stages = []
    result = quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="q2_k", output=out, method="none", heldout=heldout),
                      progress=lambda stage, done, total: stages.append((stage, done, total)))  # fmt: skip
    del ballast
    report = result.report
    assert 0 < report.peak_ram_bytes < 500 * 2**20 and 0 < report.source_peak_ram_bytes < 500 * 2**20
    reports = [(done, total) for stage, done, total in stages if stage == "report"]
    assert reports and reports[-1][0] == reports[-1][1]  # progress reached the end of both models' perplexity
    assert result.worse_than_source == (report.quantized_perplexity > report.source_perplexity)
    lines = report_lines(result)
    assert lines[0].startswith(f"wrote {out} (q2_k, none)") and any(line.startswith("  bits/weight") for line in lines)


@pytest.mark.slow
def test_q4_k_m_of_the_bundled_q4_1_model_is_reported_larger(tmp_path):
    """Issue 26: the shipped SmolLM2 is Q4_1 (93.8 MiB); its rows of 576 make q4_k_m fall back to
    Q5_0/Q8_0, so the "4-bit" output is larger. The report must say so."""
    out = tmp_path / "q4_k_m.gguf"
    result = quantize(QuantizeConfig(model="smollm2-135m", to="q4_k_m", output=out, method="none", report=False, threads=2))
    bits, fallen, rows = counted_with_gguf(out)
    assert result.output_bytes > result.source_bytes and result.larger_than_source
    assert result.bits_per_weight == pytest.approx(bits) and result.bits_per_weight > result.source_bits_per_weight > 5
    assert result.fallback_tensors == fallen > 100 and result.fallback_rows == rows == [576]
    assert any(n.startswith("the output is LARGER than its input") and "keep smollm2-135m" in n for n in result.notes)
    assert json.loads(json.dumps(result.to_dict()))["larger_than_source"] is True


def test_jsonl_calibration_and_distillation_files_name_the_line_that_is_not_json(tmp_path):
    """Both readers of .jsonl text (quantize's --calib, distill's --data) stop at a broken line with its number."""
    from kecil.compress.calibration import read_calibration_text
    from kecil.compress.distill_data import read_rows
    from kecil.errors import ConfigError

    good = [json.dumps({"text": f"Paragraph {i} about bread, ovens and the morning shift at the bakery."}) for i in range(6)]
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(good[:2] + ["", "{not json"] + good[2:]) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"calib.jsonl line 4 is not JSON: a .jsonl calibration file"):
        read_calibration_text(path)
    with pytest.raises(ConfigError, match=r"calib.jsonl line 4 is not JSON: a .jsonl data file"):
        read_rows(path, tokenizer=None, seq_len=8)
    path.write_text("\n".join(good) + "\n", encoding="utf-8")
    text = read_calibration_text(path)
    assert text.count("Paragraph") == 6 and "{" not in text
