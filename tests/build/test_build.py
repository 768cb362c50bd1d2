"""`kecil build` on a tiny model: every stage for real, the cache, a changed setting, a missed gate, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kecil.build.pipeline import build, describe_plan, plan
from kecil.build.recipe import load_recipe
from kecil.errors import BuildError
from tests.cli_helpers import kecil
from tests.tune.helpers import COLOURS, THINGS, memorisable_chat, write_jsonl

RECIPE = """\
name: tiny
base: {model}
system: Answer briefly.
tune:
  data: train.jsonl
  epochs: 2
  lr: 3.0e-2
  batch_size: 1
  max_length: 48
  mix_general: 0
  check_general: false
  save_every: 2
  seed: {seed}
documents: docs
quantize:
  type: {qtype}
evaluate:
  tasks: [facts.yaml]
  general: [arc_easy]
  limit: 2
  system: false
gate:
  min_gain: {min_gain}
  max_general_loss: 1
"""


# Planted in the training data, the task and the documents: it must appear in no file outside the
# build and result folders (the knowledge base excepted: the user asked for it to ship).
MARKER = "Zorblax-7731-private"


def write_recipe(folder: Path, model: Path, *, seed: int = 0, qtype: str = "f16", min_gain: float = -1, name: str = "recipe.yaml") -> Path:
    """A recipe for the tiny model, with its training data, task and documents beside it."""
    planted = {"messages": [{"role": "user", "content": f"What is {MARKER}?"}, {"role": "assistant", "content": f"{MARKER} is red."}]}
    write_jsonl(folder / "train.jsonl", memorisable_chat(8) + [planted])
    items = [{"query": f"What is the {t}?", "choices": [f"The {t} is {c}." for c in COLOURS[:2]], "answer": 0} for t in THINGS]
    items.append({"query": f"What is {MARKER}?", "choices": [f"{MARKER} is red.", f"{MARKER} is old."], "answer": 0})
    write_jsonl(folder / "facts.jsonl", items)
    (folder / "facts.yaml").write_text("name: facts\nkind: choice\ndata: facts.jsonl\n")
    (folder / "docs").mkdir(exist_ok=True)
    (folder / "docs" / "cats.md").write_text(f"The cat is red. The dog is green. The moon is bright. {MARKER} is red.\n")
    path = folder / name
    path.write_text(RECIPE.format(model=model, seed=seed, qtype=qtype, min_gain=min_gain))
    return path


@pytest.fixture(scope="module")
def first_build(tiny_hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("build")
    recipe = load_recipe(write_recipe(folder, tiny_hf_model("llama")))
    return recipe, build(recipe, folder / "result")


def test_a_build_runs_every_stage_and_writes_a_deployable_folder(first_build):
    recipe, result = first_build
    assert [s.name for s in result.stages] == ["tune", "merge", "quantize", "knowledge", "evaluate"]
    assert not any(s.cached for s in result.stages)
    assert all(s.seconds > 0 and s.peak_rss_bytes for s in result.stages)
    names = {p.name for p in result.result_dir.iterdir()}
    assert {"tiny.gguf", "tiny-lora.gguf", "Modelfile", "serve.sh", "README.md", "report.json", "report.html", "knowledge"} <= names
    from kecil.models.reference import resolve

    gguf = resolve(str(result.result_dir / "tiny.gguf"))  # a real GGUF, carrying the recipe's system prompt
    assert gguf.system_prompt == "Answer briefly."
    modelfile = (result.result_dir / "Modelfile").read_text()
    assert "FROM ./tiny.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile and 'SYSTEM """Answer briefly."""' in modelfile
    report = json.loads((result.result_dir / "report.json").read_text())
    assert report["gate"]["passed"] is True
    assert [(r["task"], r["yours"]) for r in report["evaluation"]] == [("facts", True), ("arc_easy", False)]
    assert all(r["base"] is not None and r["result"] is not None for r in report["evaluation"])
    assert "tune" in (result.result_dir / "report.html").read_text()
    assert (result.result_dir / "knowledge" / "tiny.sqlite").stat().st_size > 0


def test_no_user_text_is_left_outside_the_build_and_result_folders(first_build, kecil_home):
    recipe, result = first_build
    leaks = [p for p in Path(kecil_home).rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]
    assert not leaks  # kecil's own folders: caches, logs, the knowledge base's ingest
    for name in ("report.json", "report.html", "README.md", "Modelfile", "serve.sh"):
        assert MARKER not in (result.result_dir / name).read_text()
    assert MARKER.encode() in (result.result_dir / "knowledge" / "tiny.sqlite").read_bytes()  # shipped, as asked


def test_a_rerun_takes_every_stage_from_the_cache(first_build):
    recipe, result = first_build
    assert all(s.cached for s in plan(recipe))
    again = build(recipe, result.result_dir)
    assert all(s.cached for s in again.stages)
    assert [s.key for s in again.stages] == [s.key for s in result.stages]
    # what the report says of a cached stage is what it measured when it ran
    assert again.stages[0].detail["steps"] == result.stages[0].detail["steps"]


def test_a_changed_setting_reruns_that_stage_and_those_after(first_build):
    recipe, result = first_build
    changed = load_recipe(write_recipe(recipe.path.parent, Path(recipe.base), qtype="q8_0", name="q8.yaml"))
    assert changed.folder == recipe.folder  # the same name beside it: the same build folder
    lines = describe_plan(changed, plan(changed), recipe.path.parent / "result")
    assert any(line.split()[0] == "tune" and line.endswith("cached") for line in lines[2:7]), lines
    assert any(line.split()[0] == "quantize" and line.endswith("to run") for line in lines[2:7]), lines
    rerun = build(changed, recipe.path.parent / "result-q8")
    ran = {s.name: not s.cached for s in rerun.stages}
    assert ran == {"tune": False, "merge": False, "quantize": True, "knowledge": False, "evaluate": True}
    assert rerun.stages[2].detail["type"] == "q8_0"


def test_a_missed_gate_writes_the_report_and_exits_non_zero(first_build):
    recipe, _ = first_build
    # the same name beside it, so the same build folder and stages, cached: only the gate differs
    strict = write_recipe(recipe.path.parent, Path(recipe.base), min_gain=1.0, name="strict.yaml")
    out = recipe.path.parent / "strict-result"
    done = kecil("build", str(strict), "-o", str(out))
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kecil: error: the gate was missed: facts:") and "missed by" in last and "Traceback" not in done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["passed"] is False and all(s["cached"] for s in report["stages"])
    assert not list(out.glob("*.gguf")) and not (out / "Modelfile").exists()  # nothing that failed looks deployable


def _wait_for(predicate, process, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_killed_build_resumes_mid_tune_and_between_stages(tiny_hf_model, tmp_path):
    recipe_path = write_recipe(tmp_path, tiny_hf_model("llama"), seed=7)
    recipe = load_recipe(recipe_path)
    tune_slot = plan(recipe)[0].slot
    command = [sys.executable, "-m", "kecil", "build", str(recipe_path), "-o", str(tmp_path / "result")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    # 1. killed inside tune, once it has written a checkpoint
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tune_slot.work / "adapter" / "checkpoints"
    _wait_for(lambda: checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not tune_slot.done

    # 2. killed between stages: tune finished (resuming from its checkpoint), merge not yet
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: tune_slot.done, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert tune_slot.manifest()["detail"]["resumed_from_step"] is not None

    # 3. the rerun keeps tune and runs the rest
    result = build(recipe, tmp_path / "result")
    assert result.stages[0].cached and not result.stages[-1].cached
    assert not list(recipe.folder.glob(".work-*"))  # no half-written stage is left behind
    assert (tmp_path / "result" / "tiny.gguf").is_file()


def test_a_build_stage_failure_is_one_line_naming_the_stage(tiny_hf_model, tmp_path):
    path = write_recipe(tmp_path, tiny_hf_model("llama"))
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')  # nothing to learn
    with pytest.raises(BuildError, match="^the tune stage failed: .*rerun the build"):
        build(load_recipe(path), tmp_path / "result")
    assert not (tmp_path / "result").exists()
