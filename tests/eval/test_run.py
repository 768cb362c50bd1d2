"""kecil eval end to end: tiny random models for the machinery (resume, errors, JSON, HTML, CLI),
the bundled model for known answers."""

from __future__ import annotations

import json
import math
import re

import pytest
from typer.testing import CliRunner

from kecil.cli import app
from kecil.errors import BackendError
from kecil.eval import multiple_choice
from kecil.eval.custom import load_task_file
from kecil.eval.html import pareto_front, render, write_html
from kecil.eval.report import json_lines, table
from kecil.eval.run import EvalConfig, evaluate, run_task
from kecil.eval.cache import ResultCache
from kecil.infer.backend import Backend
from kecil.infer.measure import energy_unreadable_reason
from kecil.infer.load import load_model
from tests.tiny_models import training_lines

CHOICE_ITEMS = [
    {"query": f"Line {i}: the cat sat on the", "choices": ["mat", "sun", "train"], "answer": i % 3} for i in range(6)
]


def choice_task(folder, items=CHOICE_ITEMS, name="cats"):
    (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\nkind: choice\ndata: {name}.jsonl\n")
    return spec


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh KECIL_HOME, so the result cache starts empty."""
    monkeypatch.setenv("KECIL_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture(scope="module")
def two_model_report(tiny_hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    text = folder / "text.txt"
    text.write_text(" ".join(training_lines()))
    models = (str(tiny_hf_model("llama")), str(tiny_hf_model("qwen2")))
    config = EvalConfig(models=models, tasks=("cats", "perplexity"), task_files=(choice_task(folder),), text=text, context=64)
    return evaluate(config)


def test_models_side_by_side_with_system_figures(two_model_report):
    report = two_model_report
    assert [(r.task, r.metric, r.n) for r in report.results] == [("cats", "acc", 6), ("perplexity", "perplexity", report.results[1].n)] * 2
    assert all(r.error is None for r in report.results)
    assert all(0 <= r.value <= 1 for r in report.results if r.task == "cats")
    assert all(r.value > 1 and r.n > 0 for r in report.results if r.task == "perplexity")
    for figures in report.systems.values():
        assert figures.size_bytes > 0 and figures.peak_rss_bytes > 50e6 and figures.load_seconds > 0
        assert figures.prompt_tokens_per_second > 0 and figures.decode_tokens_per_second > 0
        # energy from the machine's counters, or None: never a 0 standing in for "not measured"
        if energy_unreadable_reason() is None:
            assert figures.joules_per_token > 0 and figures.energy_counters
        else:
            assert figures.joules_per_token is None and figures.energy_counters is None


def test_json_lines_have_the_promised_fields(two_model_report):
    rows = [json.loads(line) for line in json_lines(two_model_report)]
    quality = [r for r in rows if r["task"] != "system"]
    assert len(quality) == 4
    for row in quality:
        assert {"model", "task", "metric", "value", "n"} <= set(row)
    system = {(r["model"], r["metric"]) for r in rows if r["task"] == "system"}
    assert len(system) == 2 * 6
    energy = [r for r in rows if r["metric"] == "joules_per_token"]
    assert all((r["value"] is None) == (energy_unreadable_reason() is not None) for r in energy)


def test_table_and_html_report(two_model_report, tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(table(two_model_report))
    text = console.export_text()
    assert "cats" in text and "peak RAM" in text and "decode speed" in text and "energy per token" in text
    assert ("not readable here" in text) == (energy_unreadable_reason() is not None)
    # Sizes in the units `kecil models` writes them (93.8 MiB there was "98 MB" here).
    from kecil.models.info import format_bytes

    sizes = [figures.size_bytes for figures in two_model_report.systems.values()]
    assert len(sizes) == 2 and all("size on disk" in text and format_bytes(size) in text for size in sizes), text
    path = write_html(two_model_report, tmp_path / "out" / "report.html")
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "Pareto front" in page and "Quality against size" in page
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_pareto_front():
    points = [(100, 50.0), (200, 60.0), (300, 55.0), (100, 40.0)]
    assert pareto_front(points, lower_x_better=True, higher_y_better=True) == [0, 1]
    assert pareto_front(points, lower_x_better=False, higher_y_better=True) == [1, 2]


def test_an_interrupted_run_resumes_from_cached_items(home, tiny_hf_model, monkeypatch):
    spec = choice_task(home)
    config = EvalConfig(models=(str(tiny_hf_model("llama")),), tasks=("cats",), task_files=(spec,), system=False)

    def stop_after_three(model, task, done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(config, progress=stop_after_three)
    with ResultCache() as cache:
        assert cache.count() == 3
    calls = []
    real = multiple_choice.evaluate_item
    monkeypatch.setattr(multiple_choice, "evaluate_item", lambda *a: calls.append(a[2].id) or real(*a))
    resumed = evaluate(config).results[0]
    assert calls == ["3", "4", "5"]  # only what the interrupted run had not finished
    assert resumed.n == 6
    calls.clear()
    again = evaluate(config).results[0]
    assert calls == [] and again.value == resumed.value


def test_a_task_that_cannot_run_is_reported(home, tiny_hf_model):
    config = EvalConfig(models=(str(tiny_hf_model("llama")),), tasks=("perplexity",), text=choice_task(home), context=64, system=False)
    (result,) = evaluate(config).results
    assert result.value is None and "needs at least" in result.error


class GenerationOnly(Backend):
    """An engine that can generate but gives no logits (as a remote completion API would)."""

    name = "generation-only"

    def __init__(self, inner):
        super().__init__(inner.ref, inner.info, inner.context_length)
        self.inner = inner

    def tokenize(self, text, *, add_bos):
        return self.inner.tokenize(text, add_bos=add_bos)

    def detokenize(self, ids):
        return self.inner.detokenize(ids)

    def stream_ids(self, prompt_ids, config):
        return self.inner.stream_ids(prompt_ids, config)


def test_log_likelihood_on_an_engine_without_logits_is_refused_by_name(home, tiny_hf_model):
    task = load_task_file(choice_task(home))
    with load_model(str(tiny_hf_model("llama")), context_length=256) as inner, ResultCache(enabled=False) as cache:
        with pytest.raises(BackendError, match="cannot give token logits.*--backend"):
            run_task(GenerationOnly(inner), "tiny", task, EvalConfig(models=("x",), tasks=("cats",)), cache, "key", lambda *a: None)


def test_evaluate_reports_a_task_the_engine_cannot_run_and_runs_the_rest(home, tiny_hf_model, monkeypatch):
    """Through evaluate() itself: the log-likelihood task becomes a row with the reason, the
    generative task on the same engine still runs; nothing is silently left out."""
    import kecil.infer.load as load

    (home / "echo.jsonl").write_text(json.dumps({"prompt": "the cat sat on the", "answers": ["mat"]}) + "\n")
    (home / "echo.yaml").write_text("name: echo\nkind: generate\ndata: echo.jsonl\nmax_tokens: 4\n")
    real = load.load_model
    monkeypatch.setattr(load, "load_model", lambda *a, **k: GenerationOnly(real(*a, **k)))
    config = EvalConfig(models=(str(tiny_hf_model("llama")),), tasks=("cats", "echo"), system=False,
                        task_files=(choice_task(home), home / "echo.yaml"))
    cats, echo = evaluate(config).results
    assert cats.task == "cats" and cats.value is None and "cannot give token logits" in cats.error
    assert echo.task == "echo" and echo.error is None and echo.n == 1 and echo.value in (0.0, 1.0)
    rows = [json.loads(line) for line in json_lines(evaluate(config))]
    assert rows[0]["task"] == "cats" and rows[0]["value"] is None and "--backend" in rows[0]["error"]


def test_zero_shot_and_few_shot_prompts(home, tiny_hf_model, monkeypatch):
    """--shots 0 asks the bare question; --shots 2 puts two other items, with their answers, first;
    the same seed gives the same examples, and the result records the shots."""
    spec = choice_task(home)
    prompts: dict[int, list[str]] = {}
    real = multiple_choice.evaluate_item

    def record(shots):
        def evaluate_item(backend, task, item, prompt):
            prompts.setdefault(shots, []).append(prompt)
            return real(backend, task, item, prompt)
        return evaluate_item

    model = str(tiny_hf_model("llama"))
    for shots in (0, 2):
        monkeypatch.setattr(multiple_choice, "evaluate_item", record(shots))
        config = EvalConfig(models=(model,), tasks=("cats",), task_files=(spec,), shots=shots, system=False, cache=False)
        assert evaluate(config).results[0].shots == shots
    assert prompts[0] == [item["query"] for item in CHOICE_ITEMS]
    for item, prompt in zip(CHOICE_ITEMS, prompts[2]):
        *examples, question = prompt.split("\n\n")
        assert question == item["query"] and len(examples) == 2
        for example in examples:
            query, answer = example.rsplit(" ", 1)
            shown = next(x for x in CHOICE_ITEMS if x["query"] == query)
            assert answer == shown["choices"][shown["answer"]] and shown is not item
    monkeypatch.setattr(multiple_choice, "evaluate_item", record(3))
    evaluate(EvalConfig(models=(model,), tasks=("cats",), task_files=(spec,), shots=2, system=False, cache=False))
    assert prompts[3] == prompts[2]  # the seed fixes the examples


def test_limit_takes_the_same_subset_for_the_same_seed(home, tiny_hf_model, monkeypatch):
    spec = choice_task(home)
    seen: dict[tuple, list[str]] = {}
    real = multiple_choice.evaluate_item
    model = str(tiny_hf_model("llama"))
    for run, seed in enumerate((1, 1, 2)):
        monkeypatch.setattr(multiple_choice, "evaluate_item", lambda b, t, item, p, key=(run, seed): seen.setdefault(key, []).append(item.id) or real(b, t, item, p))
        (result,) = evaluate(EvalConfig(models=(model,), tasks=("cats",), task_files=(spec,), limit=3, seed=seed, system=False, cache=False)).results
        assert result.n == 3
    assert seen[(0, 1)] == seen[(1, 1)] == ["0", "1", "4"]
    assert seen[(2, 2)] == ["0", "4", "5"]


def test_cli_names_the_malformed_line_in_one_line(home, tiny_hf_model):
    spec = choice_task(home)
    (home / "cats.jsonl").write_text(json.dumps(CHOICE_ITEMS[0]) + "\n" + json.dumps(CHOICE_ITEMS[1]) + "\n{oops\n")
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kecil", "eval", str(tiny_hf_model("llama")), "--tasks", "cats", "--task-file", str(spec), "--no-system"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "KECIL_DEBUG": ""})
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("kecil: error:") and "cats.jsonl line 3: not valid JSON" in line


@pytest.fixture(scope="module")
def tiny_gguf(tiny_hf_model, tmp_path_factory):
    from kecil.compress.quantize import QuantizeConfig, quantize

    out = tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf"
    return quantize(QuantizeConfig(model=str(tiny_hf_model("llama")), to="q8_0", output=out, method="none", report=False)).output


def test_scoring_moves_to_torch_only_when_it_pays(home, tiny_gguf, monkeypatch):
    """A GGUF's log-likelihood tasks run on a torch copy when there is enough to score (the
    threshold, lowered here), its generation stays on llama.cpp, and a named --backend is obeyed."""
    from kecil.eval import run

    (home / "echo.jsonl").write_text(json.dumps({"prompt": "the cat sat on the", "answers": ["mat"]}) + "\n")
    (home / "echo.yaml").write_text("name: echo\nkind: generate\ndata: echo.jsonl\nmax_tokens: 4\n")
    files = (choice_task(home), home / "echo.yaml")

    def backends(**overrides):
        config = EvalConfig(models=(str(tiny_gguf),), tasks=("cats", "echo"), task_files=files, system=False, cache=False, **overrides)
        return [(r.task, r.extra.get("backend"), r.error) for r in evaluate(config).results]

    assert backends() == [("cats", "llamacpp", None), ("echo", "llamacpp", None)]  # 6 short questions: not worth a load
    monkeypatch.setattr(run, "TORCH_SCORING_MIN_TOKENS", 1)
    assert backends() == [("cats", "torch", None), ("echo", "llamacpp", None)]
    assert backends(backend="llamacpp") == [("cats", "llamacpp", None), ("echo", "llamacpp", None)]
    with load_model(str(tiny_gguf)) as model:
        config = EvalConfig(models=("x",), tasks=("cats",), task_files=files)
        each = [len(model.tokenize(x["query"], add_bos=model.adds_bos)) for x in CHOICE_ITEMS]
        # every question after the first shares at least BOS and "Line" with the one before
        assert each[0] <= run.scoring_tokens(model, run.resolve_tasks(config), config) < sum(each)


def test_cli_eval_json(home, tiny_hf_model):
    spec = choice_task(home)
    result = CliRunner().invoke(app, ["eval", str(tiny_hf_model("llama")), "--tasks", "cats", "--task-file", str(spec), "--json", "--no-system", "--limit", "4"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["task"] == "cats" and rows[0]["n"] == 4 and rows[0]["metric"] == "acc"


def test_cli_eval_shows_progress_in_a_log(home, tiny_hf_model):
    # With stderr not a terminal (a log, CI) a bar drew nothing: a long run sat silent, then a
    # blank line. Each task now writes "MODEL TASK: done/total" lines, as quantize's stages do.
    from tests.cli_helpers import PROGRESS_LINE, kecil

    spec = choice_task(home)
    done = kecil("eval", str(tiny_hf_model("llama")), "--tasks", "cats", "--task-file", str(spec), "--no-system",
                 "--limit", "4", "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(PROGRESS_LINE.fullmatch(line) for line in lines), done.stderr
    assert lines[-1].endswith(" cats: 4/4"), done.stderr


# --- known answers on the bundled model ----------------------------------------------------
KNOWN = [
    {"query": "The capital of France is", "choices": ["Paris", "a banana", "the ocean floor"], "answer": 0},
    {"query": "One, two, three, four,", "choices": ["five", "purple", "yesterday"], "answer": 0},
    {"query": "The sun rises in the", "choices": ["east", "refrigerator", "sandwich"], "answer": 0},
    {"query": "Cats and dogs are", "choices": ["animals", "planets", "numbers"], "answer": 0},
]


@pytest.mark.slow
def test_known_answers_on_the_bundled_model(home):
    folder = home
    choice = choice_task(folder, KNOWN, name="known")
    (folder / "copy.jsonl").write_text(json.dumps({"prompt": "The capital of France is", "answers": ["Paris"]}) + "\n")
    (folder / "copy.yaml").write_text("name: copy\nkind: generate\ndata: copy.jsonl\nmatch: contains\nmax_tokens: 12\n")
    config = EvalConfig(models=("smollm2-135m",), tasks=("known", "copy"), task_files=(choice, folder / "copy.yaml"), system=False)
    results = {r.task: r for r in evaluate(config).results}
    assert results["known"].value == 1.0 and results["known"].n == 4
    assert results["copy"].value == 1.0 and results["copy"].metric == "contains"


@pytest.mark.slow
def test_cli_perplexity_on_a_text_file(home):
    text = home / "doc.txt"
    text.write_text(" ".join(training_lines()[:40]))
    result = CliRunner().invoke(app, ["eval", "smollm2-135m", "--tasks", "perplexity", "--text", str(text), "--context", "64", "--json", "--no-system"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert row["metric"] == "perplexity" and row["context"] == 64 and row["chunks"] >= 2
    assert 1 < row["value"] < 100 and math.isclose(row["nll"], math.log(row["value"]), rel_tol=1e-9)
    assert re.fullmatch(r"\d+", str(row["n"]))
