"""The shipped demo recipe on the real embedded model: its gate passes (minutes: heavy, run by `make test-heavy`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kecil.build.pipeline import build
from kecil.build.recipe import load_recipe

DEMO = Path(__file__).resolve().parents[2] / "kecil" / "build" / "demo"


@pytest.mark.heavy
def test_the_demo_recipe_builds_and_passes_its_gate(tmp_path):
    shutil.copytree(DEMO, tmp_path / "demo")  # the build folder goes beside the recipe
    result = build(load_recipe(tmp_path / "demo" / "recipe.yaml"), tmp_path / "result")
    assert result.verdict.passed
    report = json.loads((tmp_path / "result" / "report.json").read_text())
    handbook = next(r for r in report["evaluation"] if r["yours"])
    assert handbook["result"] - handbook["base"] >= 0.15
    assert (tmp_path / "result" / "kestrel-handbook.gguf").is_file() and (tmp_path / "result" / "Modelfile").is_file()
