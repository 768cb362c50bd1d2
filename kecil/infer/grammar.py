"""Grammars that constrain llama.cpp's sampling, so "answer in JSON" is enforced token by token
instead of hoped for. The GBNF text and the JSON-schema converter are llama.cpp's own, as
shipped in llama-cpp-python (remote `$ref`s are never fetched)."""

from __future__ import annotations

import json
from typing import Any

from kecil.errors import ConfigError

# llama.cpp checks a grammar against the whole vocabulary whenever the token sampled freely is not
# allowed, on the thread that decodes every sequence of the model, and the cost grows with the
# alternatives alive at that point. Measured on smollm2-135m (49k tokens, 2 cores): one such step
# takes 25-45 ms for plain JSON or a small schema, 70-130 ms at 50 enum values, 250 ms at 100 and
# 22 s at 10,000 (a 20,000-value enum stalled every request for seconds a token). Compiling is
# cheap by comparison (0.2 ms at 25k characters of GBNF, 18 ms at 260k), but llama.cpp refuses some
# grammars only then. So a schema is bounded by both measures before it reaches the engine.
MAX_GRAMMAR_ALTERNATIVES = 128
MAX_GRAMMAR_CHARS = 32_000
# The converter writes what it is asked before anything is measured: minItems 10^8 took 14 s and
# 3.5 GB before failing, maxItems 10^7 1.1 s and 650 MB for 210 MB of grammar, 900 optional
# properties 1 s (its cost grows with their square), and an object nested 400 deep 663 kB (rule
# names grow with depth). And llama.cpp's parser refuses a bounded repetition of more than about
# 1,000 items (its MAX_REPETITION_THRESHOLD of 2,000 rules; the converter nests a rule or two per
# item), which until now surfaced only once the request reached the model. So the schema itself is
# bounded before it is converted; within these bounds every schema converts in milliseconds (see
# docs/benchmarks.md, "Grammars") and the measures above then judge its grammar.
MAX_REPETITIONS = 1000  # minItems, maxItems, minLength, maxLength
MAX_SCHEMA_DEPTH = 48  # nested objects and arrays
MAX_SCHEMA_NODES = 2000  # subschemas in all, every function's together
_REPETITION_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")


def json_grammar(schema: dict[str, Any] | None = None, where: str = "schema") -> str:
    """GBNF for any JSON object (schema None) or for values matching a JSON schema; `where` names
    the schema in errors (the request field it came from)."""
    from kecil.infer.llamacpp_runtime import import_llama_cpp

    import_llama_cpp()
    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    if not isinstance(schema, dict):
        raise ConfigError("the JSON schema must be an object")
    check_schema([(schema, where)])
    try:
        gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare exceptions for schemas it cannot express
        raise ConfigError(f"cannot turn this JSON schema into a grammar ({type(exc).__name__}: {exc}); simplify the schema") from None
    check_size(gbnf)
    return gbnf


def check_size(gbnf: str) -> None:
    """Refuse a grammar too large to follow quickly (see MAX_GRAMMAR_ALTERNATIVES)."""
    alternatives = gbnf.count(" | ")  # how the converter joins enum values, anyOf branches and optional properties
    if alternatives > MAX_GRAMMAR_ALTERNATIVES:
        raise ConfigError(f"this JSON schema has {alternatives} alternatives (enum values, anyOf branches, optional "
                          f"properties); at most {MAX_GRAMMAR_ALTERNATIVES} are served, since each one slows every "
                          "token of every request on the model: use fewer enum values or a plain string")
    if len(gbnf) > MAX_GRAMMAR_CHARS:
        raise ConfigError(f"this JSON schema makes a grammar of {len(gbnf):,} characters; at most {MAX_GRAMMAR_CHARS:,} are "
                          "served: simplify the schema (smaller maxLength, minItems or maxItems, fewer properties)")


# Where a schema holds subschemas: name -> subschema maps, single subschemas, and lists of them;
# those that describe a nested value count one level deeper.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = ("items", "additionalProperties", "contains", "not", "if", "then", "else", "propertyNames")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_NESTING = {"properties", "patternProperties", "items", "prefixItems", "additionalProperties", "contains"}


def check_schema(schemas: list[tuple[Any, str]]) -> None:
    """Refuse, before converting them, schemas whose grammar would take long to build or that
    llama.cpp would not parse (see MAX_REPETITIONS); `schemas` are (schema, where it came from),
    bounded together. Iterative, so no nesting exhausts the stack here."""
    nodes = 0
    stack = [(schema, where, where, 0) for schema, where in reversed(schemas)]
    while stack:
        node, where, path, depth = stack.pop()
        if not isinstance(node, dict):
            continue  # `true`/`false` schemas, or what the converter will refuse itself
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise ConfigError(f"the schema has more than {MAX_SCHEMA_NODES} subschemas (at {_short(path)}); at most that many are "
                              "turned into a grammar per request: simplify it, or offer fewer or smaller tools")
        if depth > MAX_SCHEMA_DEPTH:
            raise ConfigError(f"{where} nests objects and arrays more than {MAX_SCHEMA_DEPTH} levels deep "
                              f"(at {_short(path)}); at most {MAX_SCHEMA_DEPTH} are served: flatten the schema")
        _check_node(node, path)
        children = []
        for key, value in node.items():
            deeper = depth + (key in _NESTING)
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                children += [(sub, where, f"{path}.{key}.{name}", deeper) for name, sub in value.items()]
            elif key in _SCHEMA_ONE and isinstance(value, dict):
                children.append((value, where, f"{path}.{key}", deeper))
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                children += [(sub, where, f"{path}.{key}[{i}]", deeper) for i, sub in enumerate(value)]
        stack.extend(reversed(children))


def _short(path: str, keep: int = 100) -> str:
    return path if len(path) <= keep else "…" + path[-keep:]


def _check_node(node: dict, path: str) -> None:
    path = _short(path)
    for key in _REPETITION_KEYWORDS:
        value = node.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{path}.{key} must be a whole number of 0 or more, got {value!r}")
        if value > MAX_REPETITIONS:
            raise ConfigError(f"{path}.{key} is {value:,}; at most {MAX_REPETITIONS:,} are served, since the grammar spells "
                              f"out every repetition: use a smaller {key}, or leave it out")
    choices = [len(node[k]) for k in ("enum", "anyOf", "oneOf") if isinstance(node.get(k), list)]
    properties = node.get("properties")
    if isinstance(properties, dict):
        required = node.get("required") if isinstance(node.get("required"), list) else []
        choices.append(sum(name not in required for name in properties))
    if choices and max(choices) > MAX_GRAMMAR_ALTERNATIVES:
        raise ConfigError(f"{path} has {max(choices)} alternatives (enum values, anyOf branches or optional properties); "
                          f"at most {MAX_GRAMMAR_ALTERNATIVES} are served, since each one slows every token of every request "
                          "on the model: use fewer, or a plain string")
