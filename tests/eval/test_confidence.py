"""Every accuracy comes with its 95% interval, and a score guessing could reach is marked."""

from __future__ import annotations

import json

import pytest

from kecil.eval.confidence import chance_level, mean_interval, wilson_interval
from kecil.eval.html import quality_points
from kecil.eval.report import format_value, json_lines
from kecil.eval.run import EvalConfig, EvalInterrupted, EvalReport, TaskResult, evaluate
from tests.eval.test_run import choice_task


@pytest.mark.parametrize(("rate", "n", "low", "high"), [
    (0.5, 20, 0.2993, 0.7007),  # the textbook case (e.g. Newcombe 1998, Table I, method 3)
    (0.0, 10, 0.0, 0.2775),  # stays inside [0, 1] where the normal approximation would not
    (0.9, 100, 0.8256, 0.9448),
])
def test_wilson_interval_matches_published_values(rate, n, low, high):
    assert wilson_interval(rate, n) == pytest.approx((low, high), abs=1e-4)


def test_chance_and_the_mean_of_several_tasks():
    assert chance_level([4, 4, 2]) == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert chance_level([]) is None
    assert mean_interval([0.5], [100]) == pytest.approx(1.96 * 0.05, abs=1e-3)
    assert mean_interval([0.5, 0.5], [100, 100]) < mean_interval([0.5], [100])  # more items, narrower


def result(value, n, chance):
    return TaskResult("m", "t", "acc", value, n, ci=wilson_interval(value, n), chance=chance)


def test_a_score_guessing_could_reach_is_marked_in_table_and_json():
    noise = result(0.45, 20, 0.25)  # 20 items: 45% means anything from 26% to 66%
    assert not noise.at_chance and format_value(noise) == "45.0% ±20.8"  # the wider side of the interval
    guess = result(0.30, 20, 0.25)
    assert guess.at_chance and format_value(guess).endswith("(chance)")
    report = EvalReport(EvalConfig(models=("m",), tasks=("t",)), results=[guess], systems={})
    row = json.loads(next(json_lines(report)))
    assert row["at_chance"] is True and row["chance"] == 0.25
    assert row["ci_low"] < 0.25 < row["ci_high"]


def test_plots_carry_the_interval(tiny_hf_model, tmp_path, monkeypatch):
    monkeypatch.setenv("KECIL_HOME", str(tmp_path / "home"))
    config = EvalConfig(models=(str(tiny_hf_model("llama")),), tasks=("cats",), task_files=(choice_task(tmp_path),), system=False)
    report = evaluate(config)
    cats = report.results[0]
    assert cats.chance == pytest.approx(1 / 3) and cats.ci[0] <= cats.value <= cats.ci[1]
    points, _, higher = quality_points(report)
    assert higher and points[0].error > 20  # 6 items: a wide interval, drawn as an error bar


def test_ctrl_c_hands_back_what_finished(tiny_hf_model, tmp_path, monkeypatch):
    monkeypatch.setenv("KECIL_HOME", str(tmp_path / "home"))
    first, second = choice_task(tmp_path), choice_task(tmp_path, name="dogs")
    config = EvalConfig(models=(str(tiny_hf_model("llama")),), tasks=("cats", "dogs"), task_files=(first, second), system=False)

    def stop_in_the_second_task(model, task, done, total):
        if task == "dogs" and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(EvalInterrupted) as caught:
        evaluate(config, progress=stop_in_the_second_task)
    assert [(r.task, r.n) for r in caught.value.report.results] == [("cats", 6)]


def test_cli_ctrl_c_prints_what_finished_and_how_to_resume(tiny_hf_model, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kecil.cli import app
    from kecil.eval import multiple_choice

    monkeypatch.setenv("KECIL_HOME", str(tmp_path / "home"))
    first, second = choice_task(tmp_path), choice_task(tmp_path, name="dogs")
    real, calls = multiple_choice.evaluate_item, []

    def interrupted_in_the_second_task(*args):
        calls.append(args[1].name)
        if calls.count("dogs") == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return real(*args)

    monkeypatch.setattr(multiple_choice, "evaluate_item", interrupted_in_the_second_task)
    result = CliRunner().invoke(app, ["eval", str(tiny_hf_model("llama")), "--tasks", "cats,dogs", "--task-file", str(first),
                                      "--task-file", str(second), "--json", "--no-system"])
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.stderr and "run the same command again to resume" in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["task"], r["n"]) for r in rows] == [("cats", 6)]
