"""Grammars that constrain llama.cpp's sampling, so "answer in JSON" is enforced token by token
instead of hoped for. The GBNF text and the JSON-schema converter are llama.cpp's own, as
shipped in llama-cpp-python (remote `$ref`s are never fetched)."""

from __future__ import annotations

import json
from typing import Any

from kecil.errors import ConfigError


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
        return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare exceptions for schemas it cannot express
        raise ConfigError(f"cannot turn this JSON schema into a grammar ({type(exc).__name__}: {exc}); simplify the schema") from None
