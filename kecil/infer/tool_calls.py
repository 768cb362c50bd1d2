"""Tool calling: the functions a chat request offers, how a chat template must look to offer them,
and the grammar that makes every call's arguments satisfy its function's JSON schema (reading the
calls back out of the answer is kecil/infer/tool_call_parser.py's).

The format is the one Qwen2.5, Hermes and their kin were trained on (vLLM's and llama.cpp's
"hermes" format): each call is a JSON object `{"name": ..., "arguments": {...}}` between
`<tool_call>` and `</tool_call>`. Small models often drop the tags and answer with the bare object
(Qwen2.5-Coder-0.5B always does), so both are read, as llama.cpp's server reads both.

When the model may call or answer (tool_choice "auto"), the grammar is lazy (llama.cpp's "lazy
grammar"): the model writes freely until its answer starts a call, and from there on the grammar
holds. A grammar over the whole answer ("text or a call") would have to spell out all text that is
not a call, and parsing a free answer afterwards could not make its arguments satisfy the schema.
The triggers end exactly where the call's text is a valid start of the grammar (see TRIGGERS): when
llama.cpp triggers it replays the answer from the trigger into the grammar, and a replay the
grammar refuses aborts the process from inside llama.cpp.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kecil.errors import ConfigError, UnsupportedError
from kecil.infer.grammar import check_schema, check_size

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# A bare call starts like this; written with the single optional space the grammar allows around
# JSON punctuation (llama.cpp's converter's `space` rule), so the text a trigger hands over is
# always a valid start of the grammar. The cost: with tools offered and tool_choice "auto", an
# answer that begins `{"name": "` is taken for a call.
BARE_START = r'\{ ?"name" ?: ?"'
# llama.cpp's lazy-grammar triggers (std::regex): the grammar starts at the capture, and each
# pattern matches only when the answer so far ends exactly where the capture ends.
TRIGGERS = (f"({re.escape(OPEN)})$", rf"^\s*({BARE_START})$")
MAX_TOOLS = 128  # functions one request may offer: each is a branch of every call's grammar
_SEPARATOR = r"[ \t\n]{0,4}"  # between tags, braces and calls: a little whitespace, never a run of it


@dataclass(frozen=True)
class Function:
    """A function the model may call; `parameters` is the JSON schema of its arguments object."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None

    def for_template(self) -> dict[str, Any]:
        """The OpenAI tool object chat templates are written for."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = dict(self.parameters) if self.parameters is not None else {"type": "object", "properties": {}}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolGrammar:
    """How one answer may call functions: the GBNF of the calls and, for an answer that may also be
    text, the triggers that switch the grammar on (empty: it holds from the first token)."""

    gbnf: str
    triggers: tuple[str, ...] = ()


def check_template(template, model: str) -> None:
    """Refuse a model whose chat template cannot offer tools, or writes calls in a format kecil
    does not read (raises UnsupportedError)."""
    if template is None or not template.supports_tools:
        raise UnsupportedError(f"{model}'s chat template does not support tools, so it was not trained to call functions: "
                               "send the request without tools, or serve a model whose template has them (qwen2.5-coder-0.5b)")
    if OPEN not in template.source:
        raise UnsupportedError(f"{model}'s chat template writes tool calls in a format kecil does not read (it reads "
                               f"{OPEN} ... {CLOSE}, the Qwen and Hermes format): send the request without tools")


def tool_grammar(functions: Sequence[Function], *, parallel: bool, lazy: bool) -> ToolGrammar:
    """The grammar of one call (or, with `parallel`, one or more) of `functions`, each call's
    arguments matching its function's schema; `lazy`: the answer may be text instead."""
    if not functions:
        raise ConfigError("a tool grammar needs at least one function")
    if len(functions) > MAX_TOOLS:
        raise ConfigError(f"the request offers {len(functions)} functions; at most {MAX_TOOLS} are served: offer fewer")
    from kecil.infer.llamacpp_runtime import import_llama_cpp

    import_llama_cpp()
    from llama_cpp.llama_grammar import SchemaConverter

    wheres = [f"tools[{i}].function.parameters" for i in range(len(functions))]
    schemas = [_arguments_schema(function, where) for function, where in zip(functions, wheres)]
    check_schema(list(zip(schemas, wheres)))
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    branches = []
    for i, (function, parameters, where) in enumerate(zip(functions, schemas, wheres)):
        try:
            parameters = converter.resolve_refs(parameters, f"tool{i}")
        except Exception as exc:  # the converter raises bare exceptions for what it cannot express
            raise ConfigError(f"{where} cannot be turned into a grammar ({type(exc).__name__}: {exc}); simplify the schema") from None
        branches.append({"type": "object", "properties": {"name": {"const": function.name}, "arguments": parameters},
                         "required": ["name", "arguments"]})
    try:
        converter.visit(branches[0] if len(branches) == 1 else {"anyOf": branches}, "call")
    except RecursionError:
        raise ConfigError("the tools' parameter schemas are nested too deeply to turn into a grammar: flatten them") from None
    except Exception as exc:
        raise ConfigError(f"the tools' parameter schemas cannot be turned into a grammar ({type(exc).__name__}: {exc}); "
                          "simplify them") from None
    more = " )*" if parallel else ""
    rules = [
        f"root ::= kecil-tagged{' ( kecil-sep kecil-tagged' + more if parallel else ''} | "
        f"call{' ( kecil-sep call' + more if parallel else ''}",
        f'kecil-tagged ::= "{OPEN}" kecil-sep call kecil-sep "{CLOSE}"',
        f"kecil-sep ::= {_SEPARATOR}",
        converter.format_grammar(),
    ]
    gbnf = "\n".join(rules)
    check_size(gbnf)
    return ToolGrammar(gbnf, TRIGGERS if lazy else ())


def _arguments_schema(function: Function, where: str) -> dict[str, Any]:
    """The schema of the function's arguments object, its own `$defs` renamed after the function:
    llama.cpp's converter names a grammar rule after the last part of a `$ref`, so two functions'
    `#/$defs/Item` would otherwise share one rule."""
    if function.parameters is None:
        return {"type": "object", "properties": {}}
    if not isinstance(function.parameters, Mapping):
        raise ConfigError(f"{where} must be a JSON schema object")
    schema = copy.deepcopy(dict(function.parameters))
    if schema.get("type", "object") != "object":
        raise ConfigError(f"{where} must describe an object (type: object), since arguments are passed by name; "
                          f"got type {schema.get('type')!r}")
    prefix = f"{function.name}-"
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            schema[key] = {prefix + name: value for name, value in schema[key].items()}
    stack: list[Any] = [schema]
    while stack:  # iterative: a deeply nested schema cannot exhaust the stack here
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                for key in ("$defs", "definitions"):
                    if ref.startswith(f"#/{key}/"):
                        node["$ref"] = f"#/{key}/{prefix}{ref[len(key) + 3:]}"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema
