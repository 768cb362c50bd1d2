"""`kecil quantize` end to end on tiny random models and the bundled model: every type, calibration,
the report, files that llama.cpp and transformers load, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from kecil.compress.quant_types import QUANT_TYPES
from kecil.compress.quantize import QuantizeConfig, quantize
from kecil.errors import ConfigError
from kecil.infer.generation import GenerationConfig
from kecil.infer.load import load_model
from tests.cli_helpers import assert_clean_error, kecil
from tests.models.helpers import assert_helpful


def generates(path: Path) -> str:
    with load_model(str(path), backend="llamacpp", context_length=128, threads=2) as model:
        reply = model.generate("The cat sat on the", GenerationConfig(temperature=0, max_tokens=8))
    assert reply.usage.completion_tokens == 8
    return reply.text


@pytest.mark.parametrize("name", list(QUANT_TYPES))
def test_every_type_from_an_hf_folder_loads_and_generates(tiny_hf_model, tmp_path, name):
    out = tmp_path / f"tiny-{name}.gguf"
    result = quantize(QuantizeConfig(model=str(tiny_hf_model("qwen2")), to=name, output=out, method="none", report=False))
    assert result.output == out and out.stat().st_size == result.output_bytes
    assert result.type == name and result.method == "none"
    generates(out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary files left behind


@pytest.mark.parametrize("method", ["awq-gptq", "gptq", "imatrix"])
def test_calibrated_quantization_reports_what_it_cost(tiny_hf_model, tmp_path, method):
    from tests.tiny_models import training_lines

    out = tmp_path / "tiny.gguf"
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(" ".join(reversed(training_lines())))  # a short text, so the report is quick
    config = QuantizeConfig(model=str(tiny_hf_model("llama")), to="q4_k_m", output=out, method=method, calib_chunks=2, heldout=heldout)
    stages = set()
    result = quantize(config, progress=lambda stage, done, total: stages.add(stage))
    assert stages == {"convert", "calibrate", "quantize", "report"} | ({"scale"} if "awq" in method else set())
    assert result.method == method and result.calibration_tokens == 2 * 512
    report = result.report
    assert math.isfinite(report.source_perplexity) and math.isfinite(report.quantized_perplexity)
    assert report.perplexity_tokens > 0 and report.decode_tokens_per_second > 0 and report.peak_ram_bytes > 0
    generates(out)
    assert {p.name for p in tmp_path.iterdir()} == {"tiny.gguf", "heldout.txt"}


@pytest.mark.parametrize("name", ["q8_0", "q4_k_m", "q2_k"])
def test_output_loads_in_transformers(tiny_hf_model, tmp_path, name):
    # transformers dequantizes the GGUF's weights: it must compute what llama.cpp computes from the same file.
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from tests.models.formats.test_hf_to_gguf import llama_cpp_logits

    out = tmp_path / "tiny.gguf"
    quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to=name, output=out, method="none", report=False))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == 2
    ids = [5, 17, 42, 99, 3, 250, 77, 8]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    got, _ = llama_cpp_logits(out, ids)
    # llama.cpp also rounds the activations to 8 bits in quantized matmuls: close, not equal.
    assert np.abs(got - expected).max() < 0.03 * max(1.0, np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.75


def test_gguf_source_keeps_tokenizer_and_template(tiny_hf_model, tmp_path):
    from gguf import GGUFReader

    first = tmp_path / "a.gguf"
    quantize(QuantizeConfig(model=str(tiny_hf_model("gemma3")), to="q8_0", output=first, report=False))
    second = tmp_path / "b.gguf"
    quantize(QuantizeConfig(model=str(first), to="q4_0", output=second, method="none", report=False))
    a, b = GGUFReader(first), GGUFReader(second)
    for key in ("tokenizer.chat_template", "tokenizer.ggml.tokens", "gemma3.attention.sliding_window"):
        assert a.get_field(key).contents() == b.get_field(key).contents()
    generates(second)


def test_interrupted_run_leaves_nothing(tiny_hf_model, tmp_path):
    def interrupt(stage, done, total):
        if stage == "quantize" and done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "tiny.gguf"
    with pytest.raises(KeyboardInterrupt):
        quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="q4_0", output=out, method="none", report=False), progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError) as error:
        QuantizeConfig(model="smollm2-135m", to="q4_k_s", output=tmp_path / "x.gguf")
    assert_helpful(error.value, "q4_k_s", "q4_k_m")
    with pytest.raises(ConfigError):
        QuantizeConfig(model="smollm2-135m", to="q4_0", output=tmp_path / "x.gguf", method="bogus")


def test_cli_json_on_a_tiny_model(tiny_hf_model, tmp_path):
    out = tmp_path / "t.gguf"
    done = kecil("quantize", str(tiny_hf_model("llama")), "--to", "q4_0", "-o", str(out), "--method", "none", "--no-report", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["output"] == str(out) and result["type"] == "q4_0" and result["output_bytes"] == out.stat().st_size


def test_cli_errors_are_one_line(tiny_hf_model, tmp_path):
    out = str(tmp_path / "o.gguf")
    assert_clean_error(kecil("quantize", "smollm2-135m", "--to", "q5_9", "-o", out), "q5_9", "q4_k_m")
    bert = tmp_path / "bert"
    shutil.copytree(tiny_hf_model("llama"), bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert_clean_error(kecil("quantize", str(bert), "--to", "q4_0", "-o", out), "bert", "supported")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    assert_clean_error(kecil("quantize", str(corrupt), "--to", "q4_0", "-o", out))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert_clean_error(kecil("quantize", str(tiny_hf_model("llama")), "--to", "q4_0", "-o", out, "--calib", str(empty)), "calibration")
    binary = tmp_path / "noise.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    assert_clean_error(kecil("quantize", str(tiny_hf_model("llama")), "--to", "q4_0", "-o", out, "--calib", str(binary)), "not a text file")
    assert not Path(out).exists()


@pytest.mark.slow
def test_perplexity_ordering_on_the_bundled_model(tmp_path):
    from kecil.compress.calibration import HELD_OUT, bundled_text
    from kecil.infer.scoring import perplexity

    text = bundled_text(HELD_OUT)[:4000]
    scores = {}
    for name in ("q8_0", "q4_k_m", "q2_k"):
        out = tmp_path / f"{name}.gguf"
        quantize(QuantizeConfig(model="smollm2-135m", to=name, output=out, method="none", report=False, threads=2))
        with load_model(str(out), backend="llamacpp", context_length=256, threads=2) as model:
            scores[name] = perplexity(model, text, context=256).perplexity
    assert scores["q8_0"] < scores["q4_k_m"] < scores["q2_k"], scores


def test_calibration_of_a_gguf_matches_its_hf_folder(tiny_hf_model, tmp_path):
    # A GGUF source is tokenized by llama.cpp and run by transformers from the GGUF: the statistics
    # must be those of the same model read from its Hugging Face folder.
    import numpy as np

    from kecil.compress.quantize import calibrate
    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

    folder = tiny_hf_model("llama")
    source = convert_hf_to_gguf(folder, tmp_path / "tiny.gguf", out_type="f32")
    from_gguf = calibrate(QuantizeConfig(model=str(source), to="q4_0", output=tmp_path / "a.gguf", calib_chunks=1))
    from_hf = calibrate(QuantizeConfig(model=str(folder), to="q4_0", output=tmp_path / "b.gguf", calib_chunks=1))
    assert from_gguf.tokens == from_hf.tokens == 512 and set(from_gguf.stats) == set(from_hf.stats)
    for name, stats in from_hf.stats.items():
        np.testing.assert_allclose(from_gguf.stats[name].importance, stats.importance, rtol=0.05, atol=1e-6, err_msg=name)


def test_cli_progress_in_a_log_is_lines_per_stage(tiny_hf_model, tmp_path):
    """With stderr a file (a log, CI), a bar draws nothing: each stage writes lines instead, the
    measuring phase included, so a long report is not minutes of silence. No transformers bar."""
    out = tmp_path / "tiny.gguf"
    done = kecil("quantize", str(tiny_hf_model("llama")), "--to", "q8_0", "-o", str(out), "--method", "none")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    for label in ("quantizing", "measuring"):
        staged = [line for line in lines if line.startswith(f"{label}: ")]
        assert staged, done.stderr
        done_count, total = staged[-1].split(": ")[1].split("/")
        assert done_count == total and int(total) > 0
    assert "Converting and de-quantizing" not in done.stderr
