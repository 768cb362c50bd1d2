"""General replay (`kecil tune --mix-general RATIO`): the base model's own answers to bundled general
prompts, mixed into training so a run on narrow data keeps the model's general answers (issue 26, point 6)."""

from __future__ import annotations

import json
import shutil

import pytest

from kecil.tune.forgetting import GENERAL_QUESTIONS
from kecil.tune.lora import TuneConfig, tune
from kecil.tune.replay import general_prompts, replay_count
from tests.tune.helpers import memorisable_chat, write_jsonl

FACTS = __import__("pathlib").Path(__file__).parent / "data" / "brellwick_facts.jsonl"


def test_the_forgetting_check_asks_nothing_replay_trains_on():
    """The check must measure what replay protects, not what it rehearsed: none of its questions
    (nor a question about the same thing) is among the prompts."""
    prompts = {p.lower() for p in general_prompts()}
    assert len(prompts) == len(general_prompts()) >= 200  # no duplicates
    assert not prompts & {q.lower() for q, _ in GENERAL_QUESTIONS}
    # What each check question is about, and its distinctive answers: no prompt mentions them.
    topics = ("france", "paris", "romeo", "shakespeare", "spider", "symbol for water", "h2o", "sky", "opposite of hot")
    assert len(GENERAL_QUESTIONS) == 6
    assert not [(t, p) for t in topics for p in prompts if t in p]


def test_the_ratio_counts_replay_against_training_examples():
    assert replay_count(1.0, 48, 221) == 48
    assert replay_count(0.5, 36, 221) == 18
    assert replay_count(2.0, 200, 221) == 221  # at most the prompts there are
    assert replay_count(0.0, 48, 221) == 0


def test_a_model_that_never_finishes_an_answer_gets_no_replay_and_is_told(tiny_hf_model, tmp_path):
    """A random model rambles to the token limit on every prompt: nothing is mixed in, and the
    plan's warnings say why rather than training on rambling."""
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(8))
    result = tune(TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "out", epochs=1, threads=1,
                             check_general=False, mix_general=1.0))
    assert result.replay_examples == 0 and result.train_examples == 8
    assert any(w.startswith("0 general replay examples, not 8") for w in result.warnings), result.warnings


@pytest.mark.slow
def test_mix_general_mixes_the_stated_share_of_the_base_models_own_answers(tmp_path, kecil_home):
    """12 facts with --mix-general 0.5: 6 of the model's own finished answers join them, the plan
    says so, and a second run takes the answers from the cache instead of asking again."""
    lines = FACTS.read_text().splitlines()[:12]
    data = tmp_path / "facts.jsonl"
    data.write_text("\n".join(lines) + "\n")
    # The session's KECIL_HOME is shared: an earlier tune test may have cached this model's answers.
    shutil.rmtree(kecil_home / "tune" / "replay", ignore_errors=True)
    stages = []

    def run(name: str):
        return tune(TuneConfig(model="smollm2-135m", data=data, output=tmp_path / name, mix_general=0.5, max_steps=2,
                               check_general=False), on_stage=lambda stage, done, total: stages.append((stage, done, total)))

    result = run("first")
    assert result.replay_examples == 6 and result.train_examples == 18 and result.plan.examples == 18
    assert "18 training examples, 6 of them general replay" in result.plan.describe()[0]
    assert stages and {s for s, _, _ in stages} == {"replay"} and stages[-1][1] == stages[-1][2]
    cached = next((kecil_home / "tune" / "replay").glob("smollm2-135m-*.json"))
    answers = json.loads(cached.read_text())["answers"]
    assert len(answers) >= 6 and all(set(a) == {"answer", "finished"} for a in answers.values())
    assert sum(a["finished"] for a in answers.values()) >= 6
    stages.clear()
    again = run("second")
    assert again.replay_examples == 6 and stages == []  # answered once per model
    summary = json.loads((tmp_path / "second" / "kecil_tune.json").read_text())
    assert summary["replay_examples"] == 6
