"""Grammars from JSON schemas stay quick to build, and what would not is refused at once, by name:
huge repetition counts, deep nesting, many alternatives; and a grammar llama.cpp will not parse is
the caller's error when it is submitted, not a failed generation."""

from __future__ import annotations

import time

import pytest

from kecil.errors import ConfigError, UnsupportedError
from kecil.infer.engine import SamplingExtras, drain, open_engine
from kecil.infer.generation import GenerationConfig, collect
from kecil.infer.grammar import MAX_GRAMMAR_ALTERNATIVES, MAX_REPETITIONS, MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES, json_grammar
from kecil.models.info import inspect_model
from kecil.models.reference import resolve


def nested(depth: int) -> dict:
    schema = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def ints(**bounds) -> dict:
    return {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"}, **bounds}}, "required": ["xs"]}


TOO_BIG = {  # each took seconds or gigabytes in llama.cpp's converter, or was refused only by the engine
    "minItems": (ints(minItems=10**8), "schema.properties.xs.minItems is 100,000,000"),
    "maxItems": (ints(maxItems=10**7), "schema.properties.xs.maxItems is 10,000,000"),
    "maxLength": ({"type": "string", "maxLength": 3900}, "schema.maxLength is 3,900"),
    "depth": (nested(5000), f"more than {MAX_SCHEMA_DEPTH} levels"),
    "optional properties": ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(900)}}, "900 alternatives"),
    "enum": ({"enum": list(range(10**5))}, "100000 alternatives"),
    "subschemas": ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)},
                    "required": [f"p{i}" for i in range(5000)]}, f"more than {MAX_SCHEMA_NODES} subschemas"),
    "negative": ({"type": "string", "minLength": -1}, "whole number"),
}


@pytest.mark.parametrize("case", list(TOO_BIG))
def test_what_would_take_long_to_build_is_refused_at_once(case):
    schema, words = TOO_BIG[case]
    json_grammar({"type": "string"})  # llama-cpp-python imported: the timing is the check's alone
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="at most|whole number") as refused:
        json_grammar(schema)
    assert time.perf_counter() - started < 0.5
    assert words in str(refused.value)


AT_THE_BOUNDS = {
    "maxItems": ints(maxItems=MAX_REPETITIONS),
    "minItems": ints(minItems=MAX_REPETITIONS),
    "maxLength": {"type": "string", "maxLength": MAX_REPETITIONS},
    "depth": nested(MAX_SCHEMA_DEPTH),
    "optional properties": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(MAX_GRAMMAR_ALTERNATIVES - 8)}},
    "a property called maxItems": {"type": "object", "properties": {"maxItems": {"type": "string"}, "enum": {"type": "integer"}}},
}


@pytest.mark.slow
def test_schemas_at_the_bounds_build_quickly_and_llama_cpp_takes_them():
    ref = resolve(None)
    engine = open_engine(ref, inspect_model(ref), context_length=256, threads=1, parallel=1)
    try:
        ids = engine.chat_prompt_ids([{"role": "user", "content": "Some JSON, please."}])
        for name, schema in AT_THE_BOUNDS.items():
            started = time.perf_counter()
            gbnf = json_grammar(schema)
            assert time.perf_counter() - started < 0.5, name
            collect(drain(engine, ids, GenerationConfig(max_tokens=2, temperature=0), SamplingExtras(grammar=gbnf)))
        # What llama.cpp's parser refuses (a repetition past its threshold) fails the submit, not the generation.
        with pytest.raises(UnsupportedError, match="cannot follow the grammar"):
            engine.submit(ids, GenerationConfig(max_tokens=2), lambda chunk: None, SamplingExtras(grammar='root ::= "a"{3000}'))
        assert engine.load == (0, 0)
    finally:
        engine.close()
