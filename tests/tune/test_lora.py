"""LoRA training on tiny random models: it learns, it runs on every architecture, it resumes exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from kecil.errors import ConfigError
from kecil.tune.lora import LINEAR_TARGETS, TuneConfig, tune
from tests.tune.helpers import memorisable_chat, write_jsonl


def test_loss_falls_on_a_memorisable_set(tiny_hf_model, tmp_path):
    # A random tiny model's output layer is too small (std 0.02) for sharp predictions through
    # the blocks alone, so here the adapter covers lm_head too; real models need no such help.
    data = write_jsonl(tmp_path / "facts.jsonl", memorisable_chat(8))
    seen = []
    result = tune(
        TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "out", epochs=12, lr=1e-2,
                   batch_size=1, max_length=64, val_split=0, dropout=0.0, save_every=1000,
                   target_modules=LINEAR_TARGETS + ("lm_head",)),
        progress=seen.append,
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert max(losses[-3:]) < 0.5 * losses[0], losses
    assert result.steps == len(seen) == seen[-1].total_steps
    assert seen[-1].eta_seconds == 0 and all(p.tokens_per_second > 0 for p in seen)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "kecil_tune.json", "checkpoints"} <= names


def trains_with_its_default_targets(arch, tiny_hf_model, tmp_path):  # a row of tests/test_architectures.py
    import json

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(10))
    result = tune(TuneConfig(model=str(tiny_hf_model(arch)), data=data, output=tmp_path / "out", epochs=2,
                             batch_size=2, max_length=64, val_split=0.2, eval_every=1, lr=5e-3))
    assert result.val_examples == 2 and result.first_val_loss is not None
    assert result.val_loss < result.first_val_loss
    targets = json.loads((tmp_path / "out" / "adapter_config.json").read_text())["target_modules"]
    assert ("qkv_proj" in targets) if arch == "phi3" else ({"q_proj", "down_proj"} <= set(targets))


def test_gradient_accumulation_matches_one_big_batch(tiny_hf_model, tmp_path):
    """Loss is normalised over the whole step, so 2 micro-batches of 1 row = 1 micro-batch of 2."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(8))
    # float32: a bfloat16 base (the default on AMX CPUs) rounds two batches differently from one.
    common = dict(model=str(tiny_hf_model("llama")), data=data, epochs=2, max_length=24, val_split=0, dropout=0.0, lr=1e-3,
                  precision="float32")
    tune(TuneConfig(output=tmp_path / "a", batch_size=2, grad_accum=1, **common))
    tune(TuneConfig(output=tmp_path / "b", batch_size=1, grad_accum=2, **common))
    a = load_file(tmp_path / "a" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter_model.safetensors")
    import torch

    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_an_existing_run_is_not_overwritten(tiny_hf_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(4))
    config = TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "out", epochs=1, val_split=0)
    tune(config)
    with pytest.raises(ConfigError, match="--resume"):
        tune(config)


def _kecil(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "kecil", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "KECIL_DEBUG": ""}, **kwargs)


def test_resume_after_sigkill_gives_the_same_adapter(tiny_hf_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(16) * 4)
    args = [str(tiny_hf_model("llama")), str(data), "--epochs", "3", "--batch-size", "1", "--max-length", "48",
            "--save-every", "5", "--eval-every", "10", "--lr", "3e-3", "--threads", "1"]
    # The same run uninterrupted ...
    whole = _kecil("tune", *args, "-o", str(tmp_path / "whole"))
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    # ... and killed (SIGKILL: no chance to clean up) once a few checkpoints exist, then resumed.
    killed = _kecil("tune", *args, "-o", str(tmp_path / "killed"))
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "step-0000010").exists():
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "adapter_config.json").exists()
    again = _kecil("tune", *args, "-o", str(tmp_path / "killed"))
    assert again.wait(timeout=60) != 0 and "--resume" in again.stderr.read()
    resumed = _kecil("tune", *args, "-o", str(tmp_path / "killed"), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert "resumed from step" in resumed.stderr.read()
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), max(float((a[k] - b[k]).abs().max()) for k in a)


def test_resume_refuses_changed_settings(tiny_hf_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(4))
    base = dict(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "out", epochs=1, val_split=0)
    tune(TuneConfig(**base))
    with pytest.raises(ConfigError, match="rank"):
        tune(TuneConfig(**base, rank=8, resume=True))


def test_cli_reports_bad_data_in_one_line_before_loading(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "ok"}\n{"text": 3}\n')
    done = subprocess.run([sys.executable, "-m", "kecil", "tune", "smollm2-135m", str(data), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kecil: error:") and "line 2" in last, done.stderr


def test_learning_rate_warms_up_then_decays(tiny_hf_model, tmp_path):
    """The scheduler's learning rate over the steps: linear warm-up from near 0, peak, cosine to 0."""
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(16))
    result = tune(TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "out", epochs=2, batch_size=1,
                             max_length=24, val_split=0, lr=1e-3, warmup=0.25, save_every=1000, threads=1))
    rates = [h["lr"] for h in result.history if "lr" in h]  # the rate each step trained with
    total, warm = result.steps, int(0.25 * result.steps)
    assert len(rates) == total == 32 and warm == 8
    assert rates[0] == pytest.approx(1e-3 / (warm + 1))  # the first step barely moves the weights
    assert all(b > a for a, b in zip(rates[:warm], rates[1 : warm + 1]))  # rising through the warm-up
    assert rates[warm] == pytest.approx(1e-3)  # the peak, right after it
    assert all(b < a for a, b in zip(rates[warm:], rates[warm + 1 :]))  # then cosine decay
    assert rates[-1] < 0.01 * 1e-3


def test_a_gguf_source_trains_as_float_and_its_adapter_runs_in_llama_cpp(tiny_hf_model, tmp_path):
    """A GGUF file is dequantized and trained in float32; the adapter then applies to the same GGUF in llama.cpp."""
    from kecil.infer.generation import GenerationConfig
    from kecil.infer.load import load_model
    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

    source = convert_hf_to_gguf(tiny_hf_model("llama"), tmp_path / "tiny.gguf", out_type="f16")
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(10))
    result = tune(TuneConfig(model=str(source), data=data, output=tmp_path / "out", epochs=3, batch_size=1, max_length=48,
                             val_split=0.2, eval_every=1, lr=2e-2, dropout=0.0, threads=1))
    assert result.val_loss < result.first_val_loss
    assert result.gguf_adapter is not None
    greedy = GenerationConfig(temperature=0, max_tokens=8, ignore_eos=True)
    with load_model(str(source), adapter=tmp_path / "out", threads=1) as model:
        assert model.name == "llamacpp"
        adapted = model.generate("What is the cat?", greedy).text
    with load_model(str(source), threads=1) as model:
        assert model.generate("What is the cat?", greedy).text != adapted


def test_resume_passes_over_a_truncated_newest_checkpoint(tiny_hf_model, tmp_path, caplog):
    """A newest checkpoint cut short (a full disk) is skipped with a warning; the run resumes from
    the one before it and ends with the same adapter as a run never interrupted."""
    import shutil

    import torch
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(8))
    config = dict(model=str(tiny_hf_model("llama")), data=data, epochs=2, batch_size=1, max_length=24, val_split=0, lr=3e-3,
                  save_every=3, threads=1, precision="float32")
    whole = tune(TuneConfig(output=tmp_path / "whole", **config))
    # The same run, as if it had died right after writing its last two checkpoints, the newest one cut short.
    shutil.copytree(tmp_path / "whole" / "checkpoints", tmp_path / "cut" / "checkpoints")
    newest, previous = sorted((tmp_path / "cut" / "checkpoints").iterdir())[::-1][:2]
    weights = newest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="kecil.tune.lora"):
        resumed = tune(TuneConfig(output=tmp_path / "cut", resume=True, **config))
    assert resumed.resumed_from_step == int(previous.name.split("-")[1]) < whole.steps == resumed.steps
    assert any(newest.name in w and "cannot be read" in w for w in resumed.warnings), resumed.warnings
    assert newest.name in caplog.text
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_no_readable_checkpoint_says_so(tiny_hf_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(4))
    config = dict(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "out", epochs=1, val_split=0, threads=1)
    tune(TuneConfig(**config))
    for state in (tmp_path / "out" / "checkpoints").glob("step-*/optimizer.pt"):
        state.write_bytes(b"")
    with pytest.raises(ConfigError, match="no checkpoint .* can be read back"):
        tune(TuneConfig(**config, resume=True))


def test_defaults_plan_small_data_and_report_the_plan_before_training(tiny_hf_model, tmp_path):
    """With nothing but model, data and output, 20 examples get the plan's steps, and the plan comes first."""
    from kecil.tune.plan import MIN_STEPS

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(20))
    events = []
    result = tune(TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "out", threads=1, save_every=1000),
                  progress=lambda p: events.append("step"), on_plan=events.append)
    plan = result.plan
    assert events[0] is plan and events[1:] == ["step"] * result.steps
    assert result.steps == plan.total_steps >= MIN_STEPS and plan.batch_size == 1 and plan.val_examples == 0
    assert result.val_examples == 0 and result.train_examples == plan.examples == 20


def _interrupt_after_progress(args, log):
    """Run `kecil tune ARGS` until its first progress line, Ctrl-C it, return (exit code, stderr)."""
    with log.open("w") as stderr:
        run = subprocess.Popen([sys.executable, "-m", "kecil", "tune", *args], stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 300
        while not re.search(r"\b\d+/\d+\b", log.read_text()):
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        return run.wait(timeout=120), log.read_text()


def test_ctrl_c_saves_a_checkpoint_of_the_last_step_and_resume_goes_on(tiny_hf_model, tmp_path):
    """A first Ctrl-C between --save-every checkpoints used to lose every step since the last one."""
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(16) * 4)
    args = [str(tiny_hf_model("llama")), str(data), "--epochs", "40", "--batch-size", "1", "--max-length", "48",
            "--save-every", "100000", "--threads", "1", "--no-check-general", "--mix-general", "0", "-o", str(tmp_path / "out")]
    code, message = _interrupt_after_progress(args, tmp_path / "first.txt")
    assert code == 130, message
    assert "--resume" in message and "checkpoint" in message and "internal error" not in message
    checkpoints = tmp_path / "out" / "checkpoints"
    first = [int(p.name.split("-")[1]) for p in checkpoints.glob("step-*")]
    assert len(first) == 1 and 0 < first[0] < 100000
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    code, message = _interrupt_after_progress([*args, "--resume"], tmp_path / "second.txt")
    assert code == 130, message
    later = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*"))
    assert later[-1] > first[0], (first, later)  # it went on from the saved step
