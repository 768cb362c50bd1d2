"""Recipes: the shipped ones load, and a bad one is refused in one line naming the field and its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kecil.build.recipe import example_text, load_recipe
from kecil.errors import ConfigError
from tests.cli_helpers import assert_clean_error, kecil

DEMO = Path(__file__).resolve().parents[2] / "kecil" / "build" / "demo" / "recipe.yaml"
GOOD = """\
base: smollm2-135m
tune:
  data: train.jsonl
  epochs: 3
evaluate:
  tasks: [task.yaml]
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "items.jsonl").write_text('{"query": "a?", "choices": ["x", "y"], "answer": 0}\n')
    (tmp_path / "task.yaml").write_text("name: mine\nkind: choice\ndata: items.jsonl\n")
    return tmp_path


def _refused(folder: Path, text: str, *words: str) -> str:
    (folder / "r.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_recipe(folder / "r.yaml")
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


def test_a_good_recipe_loads_with_defaults_and_paths_beside_it(folder):
    (folder / "r.yaml").write_text(GOOD)
    recipe = load_recipe(folder / "r.yaml")
    assert recipe.name == "r" and recipe.data == folder / "train.jsonl" and recipe.tune == {"epochs": 3}
    assert recipe.evaluate.tasks == (folder / "task.yaml",) and recipe.quantize.type == "q8_0"
    assert recipe.folder == folder / "r.build"


@pytest.mark.parametrize(("change", "words"), [
    (GOOD + "tunes: {}\n", ("r.yaml line 7", "tunes", "unknown section")),
    (GOOD.replace("epochs: 3", "epochs: many"), ("line 4", "tune.epochs", "whole number")),
    (GOOD.replace("epochs: 3", "rank: 0"), ("line 4", "tune.rank", "at least 1")),
    (GOOD.replace("epochs: 3", "lr: fast"), ("line 4", "tune.lr", "number")),
    (GOOD.replace("epochs: 3", "learning_rate: 0.1"), ("line 4", "tune.learning_rate", "unknown setting")),
    (GOOD.replace("train.jsonl", "missing.jsonl"), ("line 3", "tune.data", "no such file")),
    (GOOD.replace("task.yaml", "nope.yaml"), ("line 6", "evaluate.tasks", "no task file")),
    (GOOD + "quantize:\n  type: q9_9\n", ("line 8", "quantize.type", "q4_k_m")),
    (GOOD + "quantize:\n  type: q8_0\n  memory: 1GB\n", ("line 9", "quantize.memory", "not both")),
    (GOOD + "gate:\n  min_gain: 15\n", ("line 8", "gate.min_gain", "between -1 and 1")),
    (GOOD + "gate:\n  max_size: lots\n", ("line 8", "gate.max_size", "memory size")),
    (GOOD + "evaluate2: [\n", ("line", "not valid YAML")),
    (GOOD.replace("base: smollm2-135m\n", ""), ("line 1", "base", "missing")),
    (GOOD + "tune:\n  data: train.jsonl\n", ("line 7", "given twice")),
    (GOOD + "prune:\n  ratio: 1.5\n", ("line 8", "prune.ratio", "between 0 and 1")),
    (GOOD + "prune:\n  ratio: 0.2\n  method: sideways\n", ("line 9", "prune.method", "minitron")),
    (GOOD + "prune:\n  method: width\n", ("line 8", "prune:", "exactly one of --ratio")),
    (GOOD + "prune:\n  ratio: 0.2\n  heal_tokens: lots\n", ("line 9", "prune.heal_tokens", "whole number")),
    (GOOD + "prune:\n  ratio: 0.2\n  heal_tokens: 100\n  heal_minutes: 2\n", ("line 10", "prune.heal_minutes", "not both")),
    (GOOD + "prune:\n  ratio: 0.2\n  heal_seq_len: 4\n", ("line 9", "prune.heal_seq_len", "at least 16")),
    (GOOD + "prune:\n  ratio: 0.2\n  shrink: 2\n", ("line 9", "prune.shrink", "unknown setting")),
])
def test_a_bad_recipe_names_the_field_and_its_line(folder, change, words):
    _refused(folder, change, *words)


def test_a_prune_section_is_read_with_its_defaults(folder):
    from kecil.build.recipe import PruneSettings

    (folder / "r.yaml").write_text(GOOD + "prune:\n  ratio: 0.25\n  heal_tokens: 5000\n")
    assert load_recipe(folder / "r.yaml").prune == PruneSettings(ratio=0.25, heal_tokens=5000, method="minitron", heal=True)
    (folder / "r.yaml").write_text(GOOD)
    assert load_recipe(folder / "r.yaml").prune is None  # no section: no stage


def test_the_command_prints_the_recipe_error_as_one_line(folder):
    (folder / "r.yaml").write_text(GOOD.replace("epochs: 3", "epochs: -2"))
    assert_clean_error(kecil("build", str(folder / "r.yaml")), "r.yaml line 4", "tune.epochs")


def test_init_writes_an_example_recipe_that_loads(folder):
    target = folder / "recipe.yaml"
    done = kecil("build", "init", "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert target.read_text() == example_text()
    recipe = load_recipe(target)  # its train.jsonl and task.yaml are the fixture's
    assert recipe.base == "smollm2-135m" and recipe.gate.min_gain == 0.10
    assert recipe.prune is None and "\n# prune: " in example_text() and "\n#   ratio: 0.25 " in example_text()  # shown, commented out
    uncommented = example_text().replace("# prune:", "prune:").replace("#   ratio:", "  ratio:").replace("#   method:", "  method:")
    target.write_text(uncommented.replace("#   heal_tokens:", "  heal_tokens:"))
    assert load_recipe(target).prune.ratio == 0.25  # and works when uncommented
    assert_clean_error(kecil("build", "init", "-o", str(target)), "already exists")


def test_the_demo_recipe_loads():
    recipe = load_recipe(DEMO)
    assert recipe.base == "smollm2-135m" and recipe.documents is not None and recipe.documents.is_dir()
    assert len(recipe.data.read_text().splitlines()) >= 24
