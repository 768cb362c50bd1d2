"""Custom tasks from a YAML spec and a JSONL file, and the errors that name a bad line."""

from __future__ import annotations

import json

import pytest

from kecil.errors import ConfigError, DataMissingError
from kecil.eval.custom import load_task_file
from kecil.eval.tasks import ChoiceItem, GenerateItem


def write_task(tmp_path, spec: str, lines: list) -> object:
    (tmp_path / "items.jsonl").write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    path = tmp_path / "task.yaml"
    path.write_text(spec)
    return path


def test_choice_task_with_a_template_and_answers_by_text(tmp_path):
    path = write_task(
        tmp_path,
        "name: clauses\nkind: choice\ndata: items.jsonl\ntemplate: \"Clause: {clause}\\nType:\"\nshots: 1\n",
        [{"clause": "The tenant pays rent monthly.", "choices": ["payment", "termination"], "answer": "payment"},
         {"clause": "Either party may end this lease.", "choices": ["payment", "termination"], "answer": 1}],
    )
    task = load_task_file(path)
    assert task.name == "clauses" and task.kind == "choice" and task.metric == "acc" and task.default_shots == 1
    first, second = task.items()
    assert first == ChoiceItem("0", "Clause: The tenant pays rent monthly.\nType:", (" payment", " termination"), 0)
    assert second.answer == 1


def test_generate_task_defaults(tmp_path):
    path = write_task(tmp_path, "name: capitals\nkind: generate\ndata: items.jsonl\nmatch: contains\n",
                      [{"prompt": "Capital of France:", "answers": "Paris"}])
    task = load_task_file(path)
    assert task.items() == (GenerateItem("0", "Capital of France:", ("Paris",)),)
    assert task.stop == ("\n",) and task.match == "contains"


def test_a_malformed_line_is_named_by_number(tmp_path):
    path = write_task(tmp_path, "name: t\nkind: choice\ndata: items.jsonl\n",
                      [{"query": "Q", "choices": ["a", "b"], "answer": 0}, "", '{"query": "Q2", "choices": ["a", "b"], answer: 1}'])
    with pytest.raises(ConfigError, match="items.jsonl line 3: not valid JSON"):
        load_task_file(path)


def test_a_missing_field_and_a_bad_answer_are_named_by_line(tmp_path):
    path = write_task(tmp_path, "name: t\nkind: choice\ndata: items.jsonl\n",
                      [{"query": "Q", "choices": ["a", "b"], "answer": 0}, {"query": "Q", "answer": 0}])
    with pytest.raises(ConfigError, match="line 2: missing field 'choices'"):
        load_task_file(path)
    path = write_task(tmp_path, "name: t\nkind: choice\ndata: items.jsonl\n", [{"query": "Q", "choices": ["a", "b"], "answer": "c"}])
    with pytest.raises(ConfigError, match="line 1: answer 'c' is not one of the choices"):
        load_task_file(path)
    path = write_task(tmp_path, "name: t\nkind: generate\ndata: items.jsonl\ntemplate: '{question}'\n", [{"q": "x", "answers": ["y"]}])
    with pytest.raises(ConfigError, match="line 1: the template needs field 'question'"):
        load_task_file(path)


def test_spec_errors(tmp_path):
    with pytest.raises(DataMissingError, match="no task file"):
        load_task_file(tmp_path / "nope.yaml")
    path = write_task(tmp_path, "name: t\nkind: essay\ndata: items.jsonl\n", [{"prompt": "x"}])
    with pytest.raises(ConfigError, match="kind must be one of choice, generate, code"):
        load_task_file(path)
    path = write_task(tmp_path, "name: t\nkind: choice\n", [])
    with pytest.raises(ConfigError, match="lacks data"):
        load_task_file(path)
    path = write_task(tmp_path, "name: t\nkind: choice\ndata: other.jsonl\n", [])
    with pytest.raises(DataMissingError, match="other.jsonl does not exist"):
        load_task_file(path)
    path = write_task(tmp_path, "name: t\nkind: choice\ndata: items.jsonl\nshotz: 2\n", [])
    with pytest.raises(ConfigError, match="unknown keys shotz"):
        load_task_file(path)
