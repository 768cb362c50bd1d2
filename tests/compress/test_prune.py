"""kecil prune: a pruned model of every architecture is an ordinary Hugging Face folder that
transformers loads and llama.cpp computes the same way; sizes are as asked; measured importance
beats random choice; bad requests are one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from kecil.compress.prune import PruneConfig, prune
from kecil.errors import ConfigError
from tests.cli_helpers import assert_clean_error, kecil
from tests.models.formats.test_hf_to_gguf import TEXT, llama_cpp_logits, transformers_logits
from tests.tiny_models import training_lines


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(training_lines() * 3))
    return path


def _parameters(folder) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())


def pruned_model_loads_and_runs_in_llama_cpp(arch, tiny_hf_model, tmp_path):  # a row of tests/test_architectures.py
    """Width with hidden channels (minitron) and depth: each result loads in transformers at the
    size reported, and its GGUF computes in llama.cpp what transformers computes on the folder."""
    from transformers import AutoTokenizer

    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(training_lines() * 3))
    for method in ("minitron", "depth"):
        out = tmp_path / method
        result = prune(PruneConfig(model=str(tiny_hf_model(arch)), output=out, ratio=0.3 if method == "minitron" else 0.2, method=method, calib=calib, calib_chunks=2))
        config = json.loads((out / "config.json").read_text())
        assert result.params_after == _parameters(out) < result.params_before == tiny_hf_model.get(arch).parameters
        if method == "depth":
            assert config["num_hidden_layers"] == 1 and len(result.removed_layers) == 1
            assert len(config.get("layer_types") or [0]) == 1
        else:
            assert config["hidden_size"] == 32 and config["num_attention_heads"] == 2 and config["head_dim"] == 16
        assert (out / "chat_template.jinja").is_file() and (out / "tokenizer.json").is_file()
        ids = AutoTokenizer.from_pretrained(out)(TEXT, add_special_tokens=False)["input_ids"]
        expected = transformers_logits(out, ids)
        got, _ = llama_cpp_logits(convert_hf_to_gguf(out, tmp_path / f"{method}.gguf", out_type="f32"), ids)
        assert np.abs(got - expected).max() < 2e-3 * max(1.0, np.abs(expected).max())


def test_parameter_counts_as_asked(tiny_hf_model, tmp_path, calib):
    source = tiny_hf_model.get("qwen2")
    for method in ("width", "depth", "minitron"):
        target = int(source.parameters * 0.8)
        result = prune(PruneConfig(model=str(source.path), output=tmp_path / method, params=target, method=method, calib=calib, calib_chunks=1))
        assert result.params_after <= target
        assert result.params_after == _parameters(tmp_path / method)
    # width keeps the KV groups and the same number of query heads in each; the MLP takes up the rest
    width = json.loads((tmp_path / "width" / "config.json").read_text())
    assert (width["num_attention_heads"], width["num_key_value_heads"], width["hidden_size"]) == (2, 2, 64)
    assert width["intermediate_size"] % 32 == 0 and width["intermediate_size"] < 128


def test_importance_beats_random(tmp_path, tiny_hf_model, calib):
    """On a tiny model trained a few steps, heads and neurons chosen by activation lose less than random ones."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_hf_model("llama")
    tokenizer, model = AutoTokenizer.from_pretrained(source), AutoModelForCausalLM.from_pretrained(source)
    ids = tokenizer("\n".join(training_lines()), add_special_tokens=False)["input_ids"]
    rows = torch.tensor(ids[: len(ids) // 64 * 64]).view(-1, 64)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        batch = rows[torch.randint(0, len(rows), (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = tmp_path / "trained"
    model.save_pretrained(trained)
    tokenizer.save_pretrained(trained)

    def loss_of(folder) -> float:
        with torch.no_grad():
            return AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids=rows, labels=rows).loss.item()

    def pruned(importance: str, seed: int = 0) -> float:
        out = tmp_path / f"{importance}-{seed}"
        prune(PruneConfig(model=str(trained), output=out, ratio=0.25, method="width", calib=calib, calib_chunks=4, importance=importance, seed=seed))
        return loss_of(out)

    measured = pruned("activation")
    at_random = [pruned("random", seed) for seed in range(3)]
    assert loss_of(trained) < measured < min(at_random)


def test_refuses_a_non_empty_output(tiny_hf_model, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        prune(PruneConfig(model=str(tiny_hf_model("llama")), output=tmp_path / "out", ratio=0.2))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_bad_requests_are_one_line_errors(tiny_hf_model, tmp_path):
    model = str(tiny_hf_model("llama"))
    out = str(tmp_path / "out")
    assert_clean_error(kecil("prune", model, "-o", out, "--ratio", "0"), "--ratio", "between 0 and 1")
    assert_clean_error(kecil("prune", model, "-o", out, "--ratio", "1"), "--ratio", "between 0 and 1")
    assert_clean_error(kecil("prune", model, "-o", out, "--ratio", "0.2", "--method", "magic"), "unknown pruning method", "minitron")
    assert_clean_error(kecil("prune", model, "-o", out), "--ratio", "--params")
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_clean_error(kecil("prune", str(bad), "-o", out, "--ratio", "0.2"), "truncated")
    assert not (tmp_path / "out").exists()


def test_cli_prunes_and_prints_the_sizes(tiny_hf_model, tmp_path, calib):
    done = kecil("prune", str(tiny_hf_model("mistral")), "-o", str(tmp_path / "out"), "--ratio", "0.25", "--method", "width", "--calib", str(calib))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "out")
    assert "MLP neurons per layer: 128 ->" in done.stderr and "parameters: 139,584 ->" in done.stderr
    gguf = tmp_path / "out.gguf"
    done = kecil("quantize", str(tmp_path / "out"), "--to", "q4_k_m", "-o", str(gguf), "--no-report")
    assert done.returncode == 0, done.stderr
    done = kecil("generate", str(gguf), "The cat", "--raw", "--max-tokens", "4", "--temperature", "0")
    assert done.returncode == 0 and "4 generated" in done.stderr, done.stderr
