"""A `kecil build` recipe: one YAML file naming the base model, the user's data, and what the result must pass.

Read with PyYAML's node marks so that every error names the field and the line it is on
(`recipe.yaml line 12: tune.lr: ...`): a recipe is written by hand, and "invalid value" without
a place sends the user hunting. The tuning settings are TuneConfig's own fields (kecil/tune/lora.py),
checked by TuneConfig itself; a relative path is relative to the recipe's folder. `kecil build init`
writes EXAMPLE (data/example_recipe.yaml), which documents every field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kecil.errors import ConfigError, KecilError

SECTIONS = {"name", "base", "system", "tune", "documents", "prune", "quantize", "evaluate", "gate", "export", "build_dir"}
QUANTIZE_KEYS = {"type", "memory", "context", "types", "calibrate"}
EVALUATE_KEYS = {"tasks", "general", "limit", "seed", "system"}
GATE_KEYS = {"min_gain", "max_general_loss", "max_size"}
EXPORT_KEYS = {"lora_gguf", "modelfile", "knowledge_base", "kubernetes", "serve_port"}
# TuneConfig fields a recipe does not set: the build chooses the base, the output and when to resume.
TUNE_FIXED = {"model", "output", "resume"}
QUANT_TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")


class Located(dict):
    """A YAML mapping that remembers the line of each key (1-based) and of itself."""

    line: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, int] = {}


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        loader.flatten_mapping(node)
        result = Located()
        result.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in result:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: {key} is given twice")
            result[key] = loader.construct_object(value_node, deep=True)
            result.lines[key] = key_node.start_mark.line + 1
        return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


@dataclass(frozen=True)
class PruneSettings:
    """Prune-and-heal between merge and quantize: kecil.compress.prune, then kecil.compress.distill
    from the tuned model on the tuning data (PruneConfig and DistillConfig check the values)."""

    ratio: float | None = None  # share of the parameters to remove
    params: int | None = None  # or: parameters to keep at most
    method: str = "minitron"  # width, depth or minitron
    calib_chunks: int = 8  # 512-token chunks of kecil's general text that measure importance
    heal: bool = True  # distill the pruned model from the tuned one afterwards
    heal_tokens: int | None = None  # healing budget in tokens (default: one pass over the tuning data)
    heal_minutes: float | None = None  # or in minutes
    heal_seq_len: int = 256  # tokens per healing row
    seed: int = 0


@dataclass(frozen=True)
class QuantizeSettings:
    type: str | None = None  # a GGUF type, or None with `memory`: kecil fit's choice
    memory: int | None = None  # bytes the model may use at `context`
    context: int = 2048
    types: tuple[str, ...] = ("q8_0", "q6_k", "q4_k_m")  # what kecil fit tries under a budget
    calibrate: bool = True  # calibrate on the tuning data (not kecil's general set)


@dataclass(frozen=True)
class EvaluateSettings:
    tasks: tuple[Path, ...] = ()  # the user's task files (kecil eval's YAML format)
    general: tuple[str, ...] = ("arc_easy",)
    limit: int | None = 50
    seed: int = 1234
    system: bool = True  # measure size, speed and peak RAM of both models


@dataclass(frozen=True)
class GateSettings:
    min_gain: float = 0.0  # the tuned model beats the base on each of the user's tasks by at least this (0-1)
    max_general_loss: float = 0.05  # and loses at most this on each general task (0-1)
    max_size: int | None = None  # bytes the final GGUF may take; default: quantize.memory, if given


@dataclass(frozen=True)
class ExportSettings:
    lora_gguf: bool = True
    modelfile: bool = True
    knowledge_base: bool = True
    kubernetes: bool = True
    serve_port: int = 8080


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    base: str
    data: Path
    tune: dict[str, Any]  # TuneConfig keyword arguments, but model, data and output
    system: str | None = None
    documents: Path | None = None
    prune: PruneSettings | None = None  # no `prune:` section: the stage is skipped
    quantize: QuantizeSettings = field(default_factory=QuantizeSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    build_dir: Path | None = None

    @property
    def folder(self) -> Path:
        return self.build_dir or self.path.parent / f"{self.name}.build"

    @property
    def size_budget(self) -> int | None:
        return self.gate.max_size if self.gate.max_size is not None else self.quantize.memory


def example_text() -> str:
    return resources.files("kecil.build").joinpath("data/example_recipe.yaml").read_text(encoding="utf-8")


class _Reader:
    """Reads one recipe, naming the file, line and dotted field of the first thing wrong."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: Located, key: str | None, section: str, message: str) -> KecilError:
        line = where.lines.get(key, where.line) if key is not None else where.line
        name = f"{section}.{key}" if section and key else (key or section or "recipe")
        return ConfigError(f"{self.path.name} line {line}: {name}: {message}")

    def section(self, top: Located, name: str, known: set[str]) -> Located:
        value = top.get(name)
        if value is None:
            empty = Located()
            empty.line = top.lines.get(name, 1)
            return empty
        if not isinstance(value, Located):
            raise self.fail(top, name, "", "must be a mapping of settings (key: value lines indented under it)")
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise self.fail(value, unknown[0], name, f"unknown setting; known: {', '.join(sorted(known))}")
        return value

    def value(self, where: Located, key: str, section: str, kind: Any, default: Any = None) -> Any:
        if key not in where or where[key] is None:
            return default
        try:
            return convert(where[key], kind, self.path.parent)
        except (ValueError, TypeError, KecilError) as exc:
            raise self.fail(where, key, section, str(exc)) from None


def convert(raw: Any, kind: Any, base: Path) -> Any:
    """`raw` from YAML as a value of type `kind` (an annotation), or ValueError saying what was expected."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(kind) if a is not type(None)]
        return convert(raw, parts[0], base)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        values = raw if isinstance(raw, list) else [part.strip() for part in str(raw).split(",") if part.strip()]
        return tuple(convert(v, item, base) for v in values)
    if kind is bool:
        if not isinstance(raw, bool):
            raise ValueError(f"must be true or false, got {raw!r}")
        return raw
    if kind is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"must be a whole number, got {raw!r}")
        return raw
    if kind is float:
        try:  # YAML 1.1 reads 1e-3 (no dot) as text
            return float(raw) if not isinstance(raw, bool) else _bad(raw, "a number")
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {raw!r}") from None
    if kind is Path:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"must be a path, got {raw!r}")
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    if kind is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ValueError(f"must be text, got {raw!r}")
        return str(raw)
    if kind == "bytes":
        from kecil.models.info import parse_bytes

        return parse_bytes(str(raw))
    raise TypeError(f"cannot be set in a recipe ({kind})")


def _bad(raw: Any, what: str):
    raise ValueError(f"must be {what}, got {raw!r}")


def _tune_settings(reader: _Reader, top: Located) -> tuple[Path, dict[str, Any]]:
    from kecil.tune.lora import TuneConfig

    hints = typing.get_type_hints(TuneConfig)
    fields = {f.name for f in dataclasses.fields(TuneConfig)} - TUNE_FIXED
    section = reader.section(top, "tune", fields)
    if "tune" not in top:
        raise reader.fail(top, None, "tune", "missing: a recipe needs a tune section with at least `data: train.jsonl`")
    data = reader.value(section, "data", "tune", Path)
    if data is None:
        raise reader.fail(section, None, "tune", "needs `data:`, the JSONL file of training examples")
    if not data.is_file():
        raise reader.fail(section, "data", "tune", f"no such file {data}")
    settings = {k: reader.value(section, k, "tune", hints[k]) for k in section if k != "data" and section[k] is not None}
    try:
        TuneConfig(model="-", data=data, output=Path("-"), **settings)
    except ConfigError as exc:  # name the field the message is about, else the section
        key = next((k for k in settings if k in str(exc) or k.replace("_", "-") in str(exc)), None)
        raise reader.fail(section, key, "tune", str(exc)) from None
    return data, settings


def load_recipe(path: Path) -> Recipe:
    """The recipe at `path`, checked: a ConfigError names the first bad field and its line."""
    import yaml

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"no recipe at {path}: write one with `kecil build init {path.name}`")
    try:
        top = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else "?"
        raise ConfigError(f"{path.name} line {line}: not valid YAML ({exc.problem or exc.context})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path.name} {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    reader = _Reader(path)
    if not isinstance(top, Located):
        raise ConfigError(f"{path.name} line 1: a recipe is a YAML mapping (base:, tune:, evaluate:, ...): see `kecil build init`")
    unknown = sorted(str(k) for k in top if k not in SECTIONS)
    if unknown:
        raise reader.fail(top, unknown[0], "", f"unknown section; known: {', '.join(sorted(SECTIONS))}")
    base = reader.value(top, "base", "", str)
    if base is None:
        raise reader.fail(top, None, "base", "missing: name the base model (a built-in such as smollm2-135m, a .gguf or a folder)")
    name = reader.value(top, "name", "", str, path.stem)
    from kecil.rag.kb_names import check_name  # the same rule as a knowledge base's name: it names one

    try:
        check_name(name)
    except ConfigError:
        raise reader.fail(top, "name", "", f"{name!r}: use letters, digits, '.', '_' or '-' (at most 64)") from None
    data, tune = _tune_settings(reader, top)
    documents = reader.value(top, "documents", "", Path)
    if documents is not None and not documents.exists():
        raise reader.fail(top, "documents", "", f"no such folder {documents}")
    return Recipe(
        path=path, name=name, base=base, data=data, tune=tune, system=reader.value(top, "system", "", str),
        documents=documents, prune=_prune(reader, top), quantize=_quantize(reader, top), evaluate=_evaluate(reader, top), gate=_gate(reader, top),
        export=_export(reader, top), build_dir=reader.value(top, "build_dir", "", Path),
    )


def _prune(reader: _Reader, top: Located) -> PruneSettings | None:
    from kecil.compress.prune import PruneConfig

    if "prune" not in top:
        return None
    hints = typing.get_type_hints(PruneSettings)
    s = reader.section(top, "prune", set(hints))
    values = {k: reader.value(s, k, "prune", hints[k]) for k in hints if s.get(k) is not None}
    settings = PruneSettings(**values)
    try:  # the library's own checks, so the recipe and `kecil prune` refuse the same things
        PruneConfig(model="-", output=Path("-"), ratio=settings.ratio, params=settings.params, method=settings.method,
                    calib_chunks=settings.calib_chunks, heal=settings.heal, heal_tokens=settings.heal_tokens,
                    heal_minutes=settings.heal_minutes, seed=settings.seed)
    except ConfigError as exc:  # name the field the message is about, else the section
        key = next((k for k in values if k in str(exc) or k.replace("_", "-") in str(exc)), None)
        raise reader.fail(s, key, "prune", str(exc)) from None
    for key in ("heal_tokens", "heal_minutes"):
        if values.get(key) is not None and values[key] <= 0:
            raise reader.fail(s, key, "prune", f"must be positive, got {values[key]}")
    if settings.heal_tokens is not None and settings.heal_minutes is not None:
        raise reader.fail(s, "heal_minutes", "prune", "give heal_tokens or heal_minutes, not both")
    if settings.heal_seq_len < 16:
        raise reader.fail(s, "heal_seq_len", "prune", f"must be at least 16 tokens, got {settings.heal_seq_len}")
    return settings


def _quantize(reader: _Reader, top: Located) -> QuantizeSettings:
    s = reader.section(top, "quantize", QUANTIZE_KEYS)
    kind = reader.value(s, "type", "quantize", str)
    memory = reader.value(s, "memory", "quantize", "bytes")
    if kind is not None and kind.lower() not in QUANT_TYPES:
        raise reader.fail(s, "type", "quantize", f"unknown type {kind!r}; choose one of {', '.join(QUANT_TYPES)}")
    if kind is not None and memory is not None:
        raise reader.fail(s, "memory", "quantize", "give a type or a memory budget, not both")
    if kind is None and memory is None:
        kind = "q8_0"
    types_ = reader.value(s, "types", "quantize", tuple[str, ...], QuantizeSettings.types)
    bad = [t for t in types_ if t not in QUANT_TYPES]
    if bad or not types_:
        raise reader.fail(s, "types", "quantize", f"unknown type {', '.join(bad) or '(none)'}; choose from {', '.join(QUANT_TYPES)}")
    context = reader.value(s, "context", "quantize", int, 2048)
    if context < 16:
        raise reader.fail(s, "context", "quantize", f"must be at least 16 tokens, got {context}")
    return QuantizeSettings(kind.lower() if kind else None, memory, context, types_, reader.value(s, "calibrate", "quantize", bool, True))


def _evaluate(reader: _Reader, top: Located) -> EvaluateSettings:
    from kecil.eval.custom import load_task_file
    from kecil.eval.tasks import get_task

    s = reader.section(top, "evaluate", EVALUATE_KEYS)
    tasks = reader.value(s, "tasks", "evaluate", tuple[Path, ...], ())
    if not tasks:
        raise reader.fail(s, "tasks" if "tasks" in s else None, "evaluate",
                          "name at least one task file of your own (kecil eval's YAML task format): the gate compares base and result on it")
    for task in tasks:
        try:
            load_task_file(task)
        except KecilError as exc:
            raise reader.fail(s, "tasks", "evaluate", str(exc)) from None
    general = reader.value(s, "general", "evaluate", tuple[str, ...], EvaluateSettings.general)
    for name in general:
        try:
            kind = get_task(name).kind
        except KecilError as exc:
            raise reader.fail(s, "general", "evaluate", str(exc)) from None
        if kind == "perplexity":  # lower is better: the gate's "may lose at most" reads scores
            raise reader.fail(s, "general", "evaluate", f"{name} is a perplexity; the gate compares scores: name a task such as arc_easy")
    limit = reader.value(s, "limit", "evaluate", int, EvaluateSettings.limit)
    if limit is not None and limit < 1:
        raise reader.fail(s, "limit", "evaluate", f"must be at least 1, got {limit}")
    return EvaluateSettings(tasks, general, limit, reader.value(s, "seed", "evaluate", int, 1234),
                            reader.value(s, "system", "evaluate", bool, True))


def _gate(reader: _Reader, top: Located) -> GateSettings:
    s = reader.section(top, "gate", GATE_KEYS)
    values = {}
    for key in ("min_gain", "max_general_loss"):
        value = reader.value(s, key, "gate", float, getattr(GateSettings, key))
        if not -1 <= value <= 1:
            raise reader.fail(s, key, "gate", f"is a share of the score, between -1 and 1 (0.05 = 5 points), got {value}")
        values[key] = value
    return GateSettings(**values, max_size=reader.value(s, "max_size", "gate", "bytes"))


def _export(reader: _Reader, top: Located) -> ExportSettings:
    s = reader.section(top, "export", EXPORT_KEYS)
    port = reader.value(s, "serve_port", "export", int, 8080)
    if not 1 <= port <= 65535:
        raise reader.fail(s, "serve_port", "export", f"must be a port number (1-65535), got {port}")
    return ExportSettings(*(reader.value(s, k, "export", bool, True) for k in ("lora_gguf", "modelfile", "knowledge_base", "kubernetes")), port)
