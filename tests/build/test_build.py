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
{prune}quantize:
  type: {qtype}
evaluate:
  tasks: [facts.yaml]
  general: [arc_easy]
  limit: 2
  system: {system}
gate:
  min_gain: {min_gain}
  max_general_loss: 1
"""


# Planted in the training data, the task and the documents: it must appear in no file outside the
# build and result folders (the knowledge base excepted: the user asked for it to ship).
MARKER = "Zorblax-7731-private"


def write_recipe(folder: Path, model: Path, *, seed: int = 0, qtype: str = "f16", min_gain: float = -1, name: str = "recipe.yaml",
                 prune: str = "", system: bool = False) -> Path:
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
    path.write_text(RECIPE.format(model=model, seed=seed, qtype=qtype, min_gain=min_gain, prune=prune, system=str(system).lower()))
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
    assert {"tiny.gguf", "tiny-lora.gguf", "Modelfile", "serve.sh", "kubernetes.yaml", "README.md", "report.json", "report.html",
            "knowledge"} <= names
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


def test_the_knowledge_stage_ships_a_sqlite_file_when_knowledge_bases_live_in_postgresql(tiny_hf_model, tmp_path, postgres_url,
                                                                                       monkeypatch):
    """With KECIL_RAG_STORE set, the build's knowledge base is made in PostgreSQL; the result still
    carries one portable file (it used to look for a SQLite file that was never written)."""
    from kecil.build.stages import KNOWLEDGE, knowledge_stage
    from kecil.rag.store import list_kbs, open_file

    recipe = load_recipe(write_recipe(tmp_path, tiny_hf_model("llama")))
    monkeypatch.setenv("KECIL_RAG_STORE", postgres_url)
    (tmp_path / "work").mkdir()
    summary = knowledge_stage(recipe, tmp_path / "work", {}, lambda *_: None)
    assert summary["files"] == 1 and summary["chunks"] >= 1 and not summary["skipped"]
    with open_file(tmp_path / "work" / KNOWLEDGE) as kb:
        (path,) = kb.files()
        assert path.endswith("/docs/cats.md")
        assert any(MARKER in chunk.text for chunk in kb.chunks(sorted(kb.chunk_ids_under(path))).values())
    assert not [name for name in list_kbs() if name.startswith("build-")]  # the build's own copy is gone


def k8s_bytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) * 2**20


def manifest_values(result_dir: Path) -> tuple[dict, dict]:
    """The written kubernetes.yaml, parsed: its Deployment's pod spec and the Service."""
    import yaml

    deployment, service = yaml.safe_load_all((result_dir / "kubernetes.yaml").read_text())
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    return deployment["spec"]["template"]["spec"], service


def test_the_kubernetes_manifest_carries_this_models_values(first_build):
    """Without a measured peak (the recipe's evaluate.system is false) the memory is an estimate from
    the file, and the manifest says so; the model, the knowledge base and the API keys are wired in."""
    from kecil.build.kubernetes import SERVER_OVERHEAD

    recipe, result = first_build
    pod, service = manifest_values(result.result_dir)
    container = pod["containers"][0]
    args = container["args"]
    assert args[:3] == ["kecil", "serve", "/models/tiny.gguf"] and "--api-keys-file" in args
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    size = result.report["size_bytes"]
    assert size == (result.result_dir / "tiny.gguf").stat().st_size
    request = k8s_bytes(container["resources"]["requests"]["memory"])
    limit = k8s_bytes(container["resources"]["limits"]["memory"])
    assert 0 <= request - (2 * size + SERVER_OVERHEAD) < 2**20  # estimated: twice the file and the server's own
    assert 0 <= limit - request - size < 2**20
    assert args[args.index("--max-memory") + 1] == f"{request // 2**20}MiB"
    (init,) = pod["initContainers"]  # the knowledge base, copied where kecil serve finds it (rag:tiny)
    assert "cp /models/knowledge/tiny.sqlite /var/lib/kecil/kb/" in init["command"][-1]
    assert (result.result_dir / "knowledge" / "tiny.sqlite").is_file()
    assert service["metadata"]["name"] == "kecil-tiny"
    text = (result.result_dir / "kubernetes.yaml").read_text()
    assert "an estimate from the file size" in text and "serve.sh" not in text


def test_the_kubernetes_manifest_passes_the_api_schemas(first_build):
    import subprocess

    from tests.serve.test_deploy import tool

    _, result = first_build
    done = subprocess.run([tool("kubernetes-validate"), "--strict", str(result.result_dir / "kubernetes.yaml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deployment/kecil-tiny" in done.stdout + done.stderr


def test_no_user_text_is_left_outside_the_build_and_result_folders(first_build, kecil_home):
    recipe, result = first_build
    leaks = [p for p in Path(kecil_home).rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]
    assert not leaks  # kecil's own folders: caches, logs, the knowledge base's ingest
    for name in ("report.json", "report.html", "README.md", "Modelfile", "serve.sh", "kubernetes.yaml"):
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


PRUNE = """\
prune:
  ratio: {ratio}
  method: minitron
  calib_chunks: 1
  heal_tokens: 128
  heal_seq_len: 32
"""


@pytest.fixture(scope="module")
def pruned_build(tiny_hf_model, tmp_path_factory):
    """The tiny build with prune-and-heal, measuring the system figures (so the peak RAM is measured)."""
    folder = tmp_path_factory.mktemp("pruned")
    recipe = load_recipe(write_recipe(folder, tiny_hf_model("llama"), prune=PRUNE.format(ratio=0.3), system=True))
    return recipe, build(recipe, folder / "result")


def test_a_prune_stage_runs_between_merge_and_quantize_and_heals(pruned_build):
    recipe, result = pruned_build
    assert [s.name for s in result.stages] == ["tune", "merge", "prune", "quantize", "knowledge", "evaluate"]
    prune = result.stages[2].detail
    assert prune["method"] == "minitron" and prune["params_after"] <= 0.7 * prune["params_before"]
    assert prune["heal"]["steps"] >= 1 and prune["heal"]["tokens"] >= 128
    pruned = recipe.folder / f"prune-{result.stages[2].key}" / "model"
    assert (pruned / "config.json").is_file() and not (pruned.parent / "pruned").exists()
    from gguf import GGUFReader

    # the shipped GGUF is the pruned model: its width is the pruned folder's, narrower than the base's
    field = GGUFReader(result.result_dir / "tiny.gguf").fields["llama.embedding_length"]
    hidden = int(field.parts[field.data[0]][0])
    base_hidden = json.loads((Path(recipe.base) / "config.json").read_text())["hidden_size"]
    assert hidden == json.loads((pruned / "config.json").read_text())["hidden_size"] < base_hidden
    card = (result.result_dir / "README.md").read_text()
    assert f"{prune['params_before']:,} -> {prune['params_after']:,} parameters, healed by distillation" in card
    assert not list(recipe.folder.glob(".work-*"))


def test_the_manifests_memory_comes_from_the_measured_peak(pruned_build):
    from kecil.build.kubernetes import SERVER_OVERHEAD

    _, result = pruned_build
    peak = result.report["systems"]["result"]["peak_rss_bytes"]
    assert peak > 20e6  # measured by the evaluation, in a fresh process
    container = manifest_values(result.result_dir)[0]["containers"][0]
    request = k8s_bytes(container["resources"]["requests"]["memory"])
    limit = k8s_bytes(container["resources"]["limits"]["memory"])
    assert 0 <= request - (peak + SERVER_OVERHEAD) < 2**20
    assert 0 <= limit - request - result.report["size_bytes"] < 2**20
    assert "the evaluation's measured peak RAM" in (result.result_dir / "kubernetes.yaml").read_text()


def test_energy_is_none_where_the_counters_are_unreadable_never_zero(pruned_build):
    from kecil.infer.measure import energy_unreadable_reason

    _, result = pruned_build
    report = json.loads((result.result_dir / "report.json").read_text())
    per_token = report["joules_per_token"]
    assert set(per_token) == {"base", "result"}
    reason = energy_unreadable_reason()
    if reason is None:  # a machine with readable counters
        assert all(v > 0 for v in per_token.values()) and report["energy_readable"]
    else:  # this development machine
        assert per_token == {"base": None, "result": None} and report["energy_readable"] is False
        assert report["energy"] == reason and reason.startswith("not readable here")
        assert all(s["joules"] is None for s in report["stages"])
        page = (result.result_dir / "report.html").read_text()
        assert "not readable here" in page and "0 J" not in page


def test_a_cached_rerun_skips_prune_and_a_changed_ratio_reruns_it_and_what_follows(pruned_build):
    recipe, result = pruned_build
    again = build(recipe, result.result_dir)
    assert all(s.cached for s in again.stages)
    changed = load_recipe(write_recipe(recipe.path.parent, Path(recipe.base), prune=PRUNE.format(ratio=0.6), system=True, name="r2.yaml"))
    rerun = build(changed, recipe.path.parent / "result-0.6")
    ran = {s.name: not s.cached for s in rerun.stages}
    assert ran == {"tune": False, "merge": False, "prune": True, "quantize": True, "knowledge": False, "evaluate": True}
    # more removed (the tiny model's widths move in steps of 32, so 0.3 and 0.5 would give one shape)
    assert rerun.stages[2].detail["params_after"] < result.stages[2].detail["params_after"]


def test_a_build_killed_after_pruning_heals_without_pruning_again(pruned_build):
    recipe, _ = pruned_build
    # another ratio beside the same recipe: tune and merge are cached, the prune stage is new
    path = write_recipe(recipe.path.parent, Path(recipe.base), prune=PRUNE.format(ratio=0.45).replace("128", "4096"), name="r3.yaml")
    killed = load_recipe(path)
    slot = next(s.slot for s in plan(killed) if s.name == "prune")
    command = [sys.executable, "-m", "kecil", "build", str(path), "-o", str(recipe.path.parent / "result-kill")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (slot.work / "pruned.json").is_file(), process)  # pruned, healing under way
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not slot.done and (slot.work / "pruned" / "config.json").is_file()

    seen = set()
    result = build(killed, recipe.path.parent / "result-kill", progress=lambda stage, done, total: seen.add(stage))
    assert "heal" in seen and not {"prune-load", "prune-calibrate", "prune"} & seen  # healed the kept pruned model
    prune = next(s for s in result.stages if s.name == "prune")
    assert not prune.cached and prune.detail["heal"]["tokens"] >= 4096
    assert slot.done and not slot.work.exists() and not (slot.folder / "teacher").exists()
