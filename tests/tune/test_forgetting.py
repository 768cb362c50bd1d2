"""The forgetting check: general questions asked without and with an adapter, what was right and is no longer."""

from __future__ import annotations

from kecil.tune.forgetting import GENERAL_QUESTIONS, GeneralAnswer, describe_check
from kecil.tune.lora import LINEAR_TARGETS, TuneConfig, tune
from tests.cli_helpers import kecil
from tests.tune.helpers import memorisable_chat, write_jsonl


def test_right_before_and_wrong_after_is_reported_as_forgotten():
    answers = [
        GeneralAnswer("What is the capital of France?", ("Paris",), "The capital of France is Paris.", "It is Tarnholm."),
        GeneralAnswer("How many legs does a spider have?", ("eight", "8"), "A spider has 8 legs.", "A spider has 80 legs."),
        GeneralAnswer("What color is the sky on a clear day?", ("blue",), "Green.", "Blue."),
    ]
    assert [a.forgotten for a in answers] == [True, True, False]  # "80" is not "8"
    lines = describe_check(answers)
    assert lines[0] == "general questions: 2/3 right before tuning, 1/3 after"
    assert "capital of France" in lines[1] and "Tarnholm" in lines[1] and "--lr" in lines[-1]


def test_wrong_before_and_right_after_is_reported_as_gained():
    answers = [GeneralAnswer("What is the opposite of hot?", ("cold",), "Warm.", "Cold."),
               GeneralAnswer("What is the capital of France?", ("Paris",), "Paris.", "Paris, France.")]
    lines = describe_check(answers)
    assert lines[0] == "general questions: 1/2 right before tuning, 2/2 after"
    assert lines[1].startswith("gained: 'What is the opposite of hot?'") and len(lines) == 2  # nothing forgotten: no advice


def test_tune_asks_the_general_questions_by_default(tiny_hf_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(8))
    stages = []
    result = tune(TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "out", epochs=6, lr=1e-2,
                             batch_size=1, max_length=48, val_split=0, dropout=0.0, threads=1, mix_general=0,
                             target_modules=LINEAR_TARGETS + ("lm_head",)),
                  on_stage=lambda stage, done, total: stages.append((stage, done, total)))
    assert [a.question for a in result.general] == [q for q, _ in GENERAL_QUESTIONS]
    assert any(a.before != a.after for a in result.general)  # the adapter was applied for "after"
    assert stages[-1] == ("general", 12, 12) and {s for s, _, _ in stages} == {"general"}  # no replay asked for
    assert tune(TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "plain", epochs=1,
                           val_split=0, threads=1, mix_general=0, check_general=False)).general == ()


def test_the_cli_prints_the_general_check_without_being_asked(tiny_hf_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(8))
    done = kecil("tune", str(tiny_hf_model("llama")), str(data), "-o", str(tmp_path / "out"), "--epochs", "1", "--threads", "1",
                 "--mix-general", "0")
    assert done.returncode == 0, done.stderr
    assert "general questions: 0/6 right before tuning, 0/6 after" in done.stderr  # a random model knows none
    assert "Warning" not in done.stderr and "warn(" not in done.stderr
