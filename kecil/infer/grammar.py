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


def json_grammar(schema: dict[str, Any] | None = None) -> str:
    """GBNF for any JSON object (schema None) or for values matching a JSON schema."""
    from kecil.infer.llamacpp_runtime import import_llama_cpp

    import_llama_cpp()
    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    if not isinstance(schema, dict):
        raise ConfigError("the JSON schema must be an object")
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
