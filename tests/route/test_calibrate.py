"""`kecil route calibrate` on a tiny labelled set: both models answer, the combiner is fitted on
where the small one is wrong, and the route file it writes loads and routes."""

from __future__ import annotations

import json

from kecil.route.calibrate import apgr, routing_curve, share_for_gap
from kecil.route.confidence import auroc, fit_combiner
from kecil.route.routefile import load_route
from tests.cli_helpers import assert_clean_error, kecil

# Easy ones the 135M model gets right and hard ones it gets wrong: the combiner needs both.
QUESTIONS = [
    ("What is the capital of France?", ["Paris"]),
    ("What colour is the sky on a clear day?", ["blue"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("What is the largest planet in the solar system?", ["Jupiter"]),
    ("Who won the 1987 Tour de France?", ["Stephen Roche"]),
    ("What is the atomic number of molybdenum?", ["42"]),
    ("Which city hosted the 1956 Summer Olympics?", ["Melbourne"]),
    ("Who wrote the novel 'The Tin Drum'?", ["Günter Grass", "Gunter Grass"]),
]


def test_calibrate_writes_a_route_file_that_loads(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answers": a}) + "\n" for q, a in QUESTIONS))
    out = tmp_path / "mine.route.json"
    result = kecil("route", "calibrate", "smollm2-135m", "--large", "smollm2-135m", "--data", str(data), "--name", "mine",
                     "-o", str(out), "--samples", "2", "--max-tokens", "12", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["questions"] == len(QUESTIONS) and summary["route_file"] == str(out)
    route = load_route(out)
    assert route.name == "mine" and [t.model for t in route.tiers] == ["smollm2-135m", "smollm2-135m"]
    assert 0.0 <= route.tiers[0].threshold <= 1.0
    curve = route.calibration["curve"]
    assert curve[0]["escalated"] == 0.0 and curve[-1]["escalated"] == 1.0
    assert abs(route.calibration["escalated"] - 0.3) <= 1 / len(QUESTIONS)  # the default target rate, to a question
    # A second run reads every answer back (resumable): no model is loaded, so it is quick.
    again = kecil("route", "calibrate", "smollm2-135m", "--large", "smollm2-135m", "--data", str(data), "--name", "mine",
                    "-o", str(out), "--samples", "2", "--max-tokens", "12", "--threads", "1", "--json")
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["threshold"] == summary["threshold"]


def test_bad_data_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Where?"}\n')
    assert_clean_error(kecil("route", "calibrate", "smollm2-135m", "--large", "smollm2-135m", "--data", str(bad)), "bad.jsonl:1", "answers")
    assert_clean_error(kecil("route", "calibrate", "smollm2-135m", "--large", "smollm2-135m", "--data", "no_such_task"),
                       "neither a JSONL file nor")


def test_the_combiner_separates_what_it_was_fitted_on():
    rows = [{"a": float(i), "b": 1.0} for i in range(20)]
    right = [i >= 10 for i in range(20)]
    combiner = fit_combiner(rows, right, features=("a", "b"))
    scores = [combiner.confidence(r) for r in rows]
    assert auroc(scores, right) == 1.0 and combiner.weights[1] == 0.0  # a constant signal gets no weight
    assert scores[0] < 0.5 < scores[-1]


def test_the_routing_curve_and_apgr():
    small = [True, False, False, True]
    large = [True, True, True, False]
    perfect = routing_curve([0.9, 0.1, 0.2, 0.8], small, large)  # the wrong ones are least confident
    assert [p["accuracy"] for p in perfect] == [0.5, 0.75, 1.0, 0.75, 0.75]
    assert share_for_gap(perfect, 0.5, 0.75, 0.5) == 0.25
    assert apgr(perfect, 0.5, 0.75) > 0.5 > apgr(routing_curve([0.1, 0.9, 0.8, 0.2], small, large), 0.5, 0.75)
