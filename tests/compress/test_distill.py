"""kecil distill: the student moves toward the teacher; the stored teacher logits are the teacher's;
a killed run resumes to the same student; prune --heal; mismatched tokenizers and bad models are
one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kecil.compress.distill import DistillConfig, distill, distill_loss
from kecil.errors import ConfigError
from tests.cli_helpers import assert_clean_error, kecil
from tests.tiny_models import training_lines

SEQ = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("distill") / "data.txt"
    path.write_text("\n".join(training_lines()))
    return path


def _rows_and_cache(result, student_folder, data):
    from transformers import AutoTokenizer

    from kecil.compress.distill_data import TeacherCache, read_rows

    stored = json.loads((result.teacher_cache / "meta.json").read_text())["rows"]
    rows = read_rows(data, AutoTokenizer.from_pretrained(student_folder), SEQ)[:stored]
    return rows, TeacherCache(result.teacher_cache, result.teacher_cache.name, stored, SEQ, 16)


def _kl(folder, rows, cache, picked):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.from_numpy(rows[picked].astype(np.int64))
    values, indices = cache.read(picked)
    with torch.no_grad():
        return distill_loss(model(input_ids=ids).logits, ids, values, indices, 1.0, 0.0)[1].item()


def test_distillation_lowers_the_kl_and_stored_logits_are_the_teachers(tiny_hf_model, tmp_path, data):
    import torch
    from transformers import AutoModelForCausalLM

    student, teacher = tiny_hf_model("qwen2"), tiny_hf_model("llama")  # one tokenizer, two models
    result = distill(DistillConfig(student=str(student), teacher=str(teacher), output=tmp_path / "out", data=data, seq_len=SEQ,
                                   top_k=16, lr=3e-3, batch_size=4, tokens=SEQ * 4 * 25))  # fmt: skip
    assert result.steps == 25 and result.teacher_seconds > 0
    rows, cache = _rows_and_cache(result, student, data)
    picked = np.arange(8)
    assert _kl(tmp_path / "out", rows, cache, picked) < 0.9 * _kl(student, rows, cache, picked)

    # the stored top-k logits give the loss the live teacher gives (float16 storage aside)
    live = AutoModelForCausalLM.from_pretrained(teacher).eval()
    ids = torch.from_numpy(rows[picked].astype(np.int64))
    with torch.no_grad():
        top = torch.topk(live(input_ids=ids).logits, 16, dim=-1)
        student_logits = AutoModelForCausalLM.from_pretrained(student).eval()(input_ids=ids).logits
        stored = distill_loss(student_logits, ids, *cache.read(picked), 2.0, 0.1)[0].item()
        fresh = distill_loss(student_logits, ids, top.values, top.indices, 2.0, 0.1)[0].item()
    assert abs(stored - fresh) < 1e-3 * abs(fresh)

    # a rerun on the same data does not run the teacher again
    again = distill(DistillConfig(student=str(student), teacher=str(teacher), output=tmp_path / "again", data=data, seq_len=SEQ,
                                  top_k=16, lr=3e-3, batch_size=4, tokens=SEQ * 4 * 2))  # fmt: skip
    assert again.teacher_seconds == 0 and again.teacher_cache == result.teacher_cache


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_killed_run_resumes_to_the_same_student(tiny_hf_model, tmp_path, data):
    student, teacher = str(tiny_hf_model("qwen2")), str(tiny_hf_model("llama"))
    settings = ["--teacher", teacher, "--seq-len", str(SEQ), "--top-k", "16", "--lr", "3e-3", "--tokens", str(SEQ * 4 * 20), "--save-every", "2"]
    whole = distill(DistillConfig(student=student, teacher=teacher, output=tmp_path / "whole", data=data, seq_len=SEQ, top_k=16, lr=3e-3,
                                  tokens=SEQ * 4 * 20, save_every=2))  # fmt: skip
    assert whole.steps == 20
    # kill -9 once a checkpoint exists, then resume
    out = tmp_path / "killed"
    run = subprocess.Popen([sys.executable, "-m", "kecil", "distill", student, str(data), "-o", str(out), *settings],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while not list((out / "checkpoints").glob("step-*/state.json")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not (out / "config.json").exists(), "the run ended before it could be killed"
    done = kecil("distill", student, str(data), "-o", str(out), *settings, "--resume")
    assert done.returncode == 0, done.stderr
    assert "resumed from step" in done.stderr
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)
    assert not (out / "checkpoints").exists()


def test_resume_with_other_settings_is_refused(tiny_hf_model, tmp_path, data):
    student, teacher = str(tiny_hf_model("qwen2")), str(tiny_hf_model("llama"))
    common = dict(student=student, teacher=teacher, output=tmp_path / "out", data=data, seq_len=SEQ, top_k=16, tokens=SEQ * 4 * 6, save_every=2)
    distill(DistillConfig(**common, max_steps=2))
    with pytest.raises(ConfigError, match="lr"):
        distill(DistillConfig(**{**common, "resume": True}, lr=1e-2))
    with pytest.raises(ConfigError, match="--resume"):
        distill(DistillConfig(**common))


def test_prune_heal_distills_the_pruned_model_from_the_original(tiny_hf_model, tmp_path, data):
    from kecil.compress.prune import PruneConfig, prune

    result = prune(PruneConfig(model=str(tiny_hf_model("llama")), output=tmp_path / "small", ratio=0.25, method="width", calib=data,
                               calib_chunks=1, heal=True, heal_tokens=256 * 4 * 2))  # fmt: skip
    assert result.heal["steps"] == 2 and result.heal["first_loss"] is not None
    assert (tmp_path / "small" / "config.json").is_file() and not (tmp_path / "small" / "checkpoints").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert sum(p.numel() for p in model.parameters()) == result.params_after


def test_mismatched_tokenizers_and_bad_models_are_one_line_errors(tiny_hf_model, tmp_path, data):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_hf_model("llama"), other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|not-in-the-student|>"])
    tokenizer.save_pretrained(other)
    student = str(tiny_hf_model("qwen2"))
    done = kecil("distill", student, str(data), "--teacher", str(other), "-o", str(tmp_path / "out"), "--seq-len", str(SEQ))
    assert_clean_error(done, "another tokenizer", "513 tokens against 512")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_hf_model("llama"), bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    assert_clean_error(kecil("distill", str(bad), "--teacher", student, "-o", str(tmp_path / "out2")), "model.safetensors")
    assert_clean_error(kecil("distill", student, "--teacher", student, "-o", str(tmp_path / "o3"), "--tokens", "0"), "--tokens")
