"""The tasks in other languages: XCOPA's five languages read from the bundled files with
lm-evaluation-harness's prompt, gk-hi and the Malay set load as valid items, and all of them
score on the bundled model with the tokenizer's fertility in the report."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kecil.cli import app
from kecil.eval.language_tasks import bundled_file, read_jsonl
from kecil.eval.report import json_lines
from kecil.eval.run import EvalConfig, evaluate
from kecil.eval.tasks import get_task

XCOPA = ("id", "th", "vi", "zh", "ta")

# Item test/0 is a "cause" item and test/1 an "effect" item in COPA (and in the Vietnamese,
# Chinese and Tamil files). The premise loses only a full stop; Thai and Tamil have none to lose.
KNOWN = {
    "id": ("Barang itu dikemas dalam bungkus gelembung karena", "Saya kosongkan kantong saya maka"),
    "th": ("สิ่งของถูกห่อไว้ในพลาสติก เพราะ", "ฉันเอาของออกจากกระเป๋า ดังนั้น"),
    "vi": ("Các mặt hàng đã được đóng gói trong bọc bong bóng bởi vì", "Tôi lục túi của tôi vì vậy"),
    "zh": ("该物品用气泡包装纸包着 因为", "我掏空了口袋 所以"),
    "ta": ("அந்த பொருள் பாதுகாப்பான வகையில் பொட்டலம் கட்டப்பட்டது காரணமாக", "நான் என் சட்டைப்பையைக் காலி செய்தேன் எனவே"),
}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KECIL_HOME", str(tmp_path / "home"))  # an empty result cache
    return tmp_path


@pytest.mark.parametrize("language", XCOPA)
def test_xcopa_items_and_connectors(language):
    task = get_task(f"xcopa_{language}")
    items = task.items()
    assert len(items) == 500 and len({i.id for i in items}) == 500
    assert len(task.examples("")) == 100  # few-shot examples come from the validation split
    assert all(len(i.choices) == 2 and i.answer in (0, 1) for i in items)
    rows = read_jsonl(bundled_file(f"xcopa/test.{language}.jsonl"))
    cause, effect = KNOWN[language]
    assert items[0].query == cause and items[1].query == effect
    # the choice with its first letter lower-cased, after a space (the harness's target delimiter)
    assert items[0].choices == tuple(" " + rows[0][k][:1].lower() + rows[0][k][1:] for k in ("choice1", "choice2"))
    assert items[0].answer == rows[0]["label"]


def test_xcopa_question_types_come_from_the_item_not_the_thai_file():
    thai = read_jsonl(bundled_file("xcopa/test.th.jsonl"))
    assert {r["question"] for r in thai} == {"effect"}  # the shipped file's error
    queries = [i.query for i in get_task("xcopa_th").items()]
    assert sum(q.endswith(" เพราะ") for q in queries) == 250 and sum(q.endswith(" ดังนั้น") for q in queries) == 250
    indonesian = get_task("xcopa_id").items()
    assert indonesian[84].query.endswith(" karena")  # the file says effect; its choices are causes
    assert read_jsonl(bundled_file("xcopa/test.id.jsonl"))[84]["question"] == "effect"


def test_xcopa_ships_its_licence_and_attribution():
    assert "Attribution 4.0 International" in bundled_file("xcopa/LICENSE.md").read_text()
    readme = bundled_file("xcopa/README.md").read_text()
    assert "Ponti" in readme and "CC BY 4.0" in readme


def test_every_bundled_file_is_package_data():
    """What ships in the wheel is what pyproject.toml's package-data names: a file the globs miss
    would be in a checkout but not in an install, and the task would fail for users only."""
    import tomllib
    from pathlib import Path

    from kecil.eval.language_tasks import BUNDLED

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kecil.eval"]
    package = BUNDLED.parent
    files = [p for p in BUNDLED.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) >= 17
    for path in files:
        assert any(path.relative_to(package).match(glob) for glob in globs), path


@pytest.mark.parametrize("name, count, language", [("gk_hi", 208, "hi"), ("mcq_ms", 100, "ms")])
def test_hindi_and_malay_items_are_valid(name, count, language):
    task = get_task(name)
    items = task.items()
    assert len(items) == count and task.language == language
    assert len({i.query for i in items}) == count  # no question twice
    for item in items:
        assert len(item.choices) == 4 and 0 <= item.answer < 4
        assert len(set(item.choices)) == 4, item  # no choice twice within a question
        assert all(c.startswith(" ") and c.strip() for c in item.choices)


def test_malay_answers_are_spread_over_the_positions():
    rows = read_jsonl(bundled_file("mcq_ms/mcq_ms.jsonl"))
    assert sorted(r["answer"] for r in rows).count(0) == 25
    assert {r["answer"] for r in rows} == {0, 1, 2, 3}
    assert len({r["id"] for r in rows}) == 100


@pytest.mark.slow
def test_language_tasks_score_on_the_bundled_model_with_fertility(home):
    names = tuple(f"xcopa_{code}" for code in XCOPA) + ("gk_hi", "mcq_ms")
    report = evaluate(EvalConfig(models=("smollm2-135m",), tasks=names, limit=2, system=False))
    assert [r.task for r in report.results] == list(names)
    for result in report.results:
        assert result.error is None and result.n == 2 and 0 <= result.value <= 1
        assert result.chance == (0.5 if result.task.startswith("xcopa") else 0.25)
    measured = {f.language: f for f in report.fertility["smollm2-135m"]}
    assert list(measured) == ["en", *XCOPA, "hi", "ms"]  # English first, the reference
    assert measured["th"].vs_english > 2 and measured["en"].vs_english == 1
    rows = [json.loads(line) for line in json_lines(report)]
    fertility = [r for r in rows if r["task"] == "fertility"]
    assert len(fertility) == 8 and all(r["n"] == 100 and r["value"] == r["tokens_per_word"] for r in fertility)


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_the_plots(home):
    html = home / "r.html"
    tasks = ",".join(f"xcopa_{code}" for code in XCOPA)
    result = CliRunner().invoke(app, ["eval", "smollm2-135m", "--tasks", tasks, "--limit", "1", "--html", str(html)])
    assert result.exit_code == 0, result.output
    for code in XCOPA:
        assert f"xcopa_{code}" in result.stdout
    assert "Thai (th)" in result.stdout and "decode speed" in result.stdout
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 3  # size, speed, tokens against English
    assert "Tokens against English" in page and "Tamil (ta)" in page
