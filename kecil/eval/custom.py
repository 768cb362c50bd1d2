"""A team's own task without Python: a small YAML spec and a JSONL file of items (`--task-file`).

    name: thai-contract-clauses
    kind: choice            # choice | generate | code
    data: clauses.jsonl     # relative to this YAML file
    template: "Clause: {clause}\\nType:"   # optional; else each line has `query` (choice) or `prompt`
    shots: 2                # optional few-shot examples drawn from the other items
    language: th            # optional: the report adds this language's tokenizer fertility
    # choice:   each line has `choices` (list) and `answer` (index, or the right choice's text);
    #           `choice_prefix` (default " ") goes before every choice; metric acc or acc_norm
    # generate: each line has `answers` (list or string); `match`: exact | contains | number;
    #           `stop` (list), `max_tokens`
    # code:     each line has `prompt` and `test` (Python run after the completion)

A line that is not valid JSON or lacks a field is named by its line number.
"""

from __future__ import annotations

import json
from pathlib import Path

from kecil.errors import ConfigError, DataMissingError
from kecil.eval.fertility import LANGUAGES
from kecil.eval.tasks import ChoiceItem, CodeItem, GenerateItem, Task

DEFAULT_METRIC = {"choice": "acc", "generate": "exact_match", "code": "pass@1"}
KNOWN_KEYS = {"name", "kind", "data", "template", "shots", "description", "metric", "choice_prefix",
              "match", "stop", "max_tokens", "version", "language"}


def _spec(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise DataMissingError(f"no task file at {path}: pass --task-file with a YAML spec (see `kecil eval --help`)")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} must be a YAML mapping with at least name, kind and data")
    missing = [k for k in ("name", "kind", "data") if k not in spec]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}: a task spec needs name, kind and data")
    unknown = sorted(set(spec) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}")
    if spec["kind"] not in DEFAULT_METRIC:
        raise ConfigError(f"{path}: kind must be one of {', '.join(DEFAULT_METRIC)}, got {spec['kind']!r}")
    if "language" in spec and spec["language"] not in LANGUAGES:
        raise ConfigError(f"{path}: fertility is measured for languages {', '.join(LANGUAGES)}; got {spec['language']!r} (leave `language` out for others)")
    return spec


def _field(row: dict, key: str, where: str):
    if key not in row:
        raise ConfigError(f"{where}: missing field {key!r}")
    return row[key]


def _text(spec: dict, row: dict, key: str, where: str) -> str:
    template = spec.get("template")
    if template is None:
        return str(_field(row, key, where))
    try:
        return template.format_map(row)
    except KeyError as exc:
        raise ConfigError(f"{where}: the template needs field {exc.args[0]!r}, which this line lacks") from None


def _item(spec: dict, row: dict, index: int, where: str):
    kind = spec["kind"]
    item_id = str(row.get("id", index))
    if kind == "choice":
        prefix = spec.get("choice_prefix", " ")
        choices = _field(row, "choices", where)
        if not isinstance(choices, list) or len(choices) < 2:
            raise ConfigError(f"{where}: 'choices' must be a list of at least two answers")
        answer = _field(row, "answer", where)
        if isinstance(answer, str):
            if answer not in choices:
                raise ConfigError(f"{where}: answer {answer!r} is not one of the choices")
            answer = choices.index(answer)
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ConfigError(f"{where}: 'answer' must be a choice's index (0-{len(choices) - 1}) or its text")
        return ChoiceItem(item_id, _text(spec, row, "query", where), tuple(prefix + str(c) for c in choices), answer)
    if kind == "generate":
        answers = _field(row, "answers", where)
        answers = (answers,) if isinstance(answers, str) else tuple(str(a) for a in answers)
        if not answers:
            raise ConfigError(f"{where}: 'answers' is empty")
        return GenerateItem(item_id, _text(spec, row, "prompt", where), answers)
    return CodeItem(item_id, _text(spec, row, "prompt", where), str(_field(row, "test", where)))


def read_items(spec: dict, data: Path) -> tuple:
    if not data.is_file():
        raise DataMissingError(f"the task's data file {data} does not exist: fix `data:` in the spec")
    items = []
    with data.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{data.name} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{where}: each line must be a JSON object")
            items.append(_item(spec, row, len(items), where))
    if not items:
        raise ConfigError(f"{data} has no items")
    return tuple(items)


def load_task_file(path: Path) -> Task:
    """The Task a YAML spec describes; its items are read and checked at once."""
    path = Path(path)
    spec = _spec(path)
    items = read_items(spec, (path.parent / spec["data"]).resolve())
    kind = spec["kind"]
    metric = spec.get("metric", "contains" if spec.get("match") == "contains" else DEFAULT_METRIC[kind])
    allowed = {"choice": ("acc", "acc_norm"), "generate": ("exact_match", "contains"), "code": ("pass@1",)}[kind]
    if metric not in allowed:
        raise ConfigError(f"{path}: metric for a {kind} task is one of {', '.join(allowed)}, got {metric!r}")
    stop = spec.get("stop", ["\n"] if kind == "generate" else [])
    return Task(
        name=str(spec["name"]),
        kind=kind,
        description=str(spec.get("description", f"custom task from {path.name}")),
        items=lambda: items,
        metric=metric,
        default_shots=int(spec.get("shots", 0)),
        match=str(spec.get("match", "exact")),
        stop=tuple(stop if isinstance(stop, list) else [stop]),
        max_tokens=int(spec.get("max_tokens", 64 if kind == "generate" else 384)),
        version=f"custom-{spec.get('version', 1)}",
        source=str(path),
        language=str(spec.get("language", "")),
    )
