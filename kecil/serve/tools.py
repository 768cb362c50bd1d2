"""Tool calling over HTTP: what a chat request's `tools`, `tool_choice` and `parallel_tool_calls`
ask of the model, checked before any of it runs, and the conversation's earlier calls and results
turned into the messages the model's chat template reads. The calls' format, grammar and parsing
are kecil/infer/tool_calls.py's; the reply's shape is kecil/serve/reply.py's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kecil.errors import KecilError
from kecil.serve.protocol import APIError, ChatCompletionRequest, ChatMessage, NamedToolChoice


@dataclass(frozen=True)
class ToolUse:
    """How one request's answer deals with its tools."""

    offered: list[dict[str, Any]] | None  # the tools the chat template shows the model (None: none)
    grammar: Any = None  # a ToolGrammar: how calls are held to their schemas (None: no calls)

    @property
    def calls(self) -> bool:
        """Whether the answer is read for calls."""
        return self.grammar is not None


def tool_use(engine, body: ChatCompletionRequest) -> ToolUse | None:
    """What the request's tools ask for (None: it offers none); refuses what cannot be served."""
    choice = body.tool_choice
    if not body.tools:
        if choice == "required" or isinstance(choice, NamedToolChoice):
            raise APIError(400, "tool_choice asks for a call but the request offers no tools: send tools too", param="tool_choice")
        return None
    from kecil.infer.tool_calls import Function, check_template, tool_grammar

    try:
        check_template(engine.chat_template, engine.ref.name)
    except KecilError as exc:
        raise APIError(400, str(exc), param="tools") from None
    functions = [Function(t.function.name, t.function.description, t.function.parameters) for t in body.tools]
    names = [f.name for f in functions]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise APIError(400, f"tools offers the function {repeated[0]!r} twice: give each function one definition", param="tools")
    if choice == "none":
        # The model is not shown the tools: told of them, small models write a call anyway (as
        # text), which "none" forbids. Earlier calls and results in the conversation still show.
        return ToolUse(None)
    if body.response_format is not None and body.response_format.type != "text":
        raise APIError(400, "response_format and tools would both constrain the answer: send one of them "
                       "(or tool_choice \"none\" to answer in the response_format)", param="response_format")
    offered = [f.for_template() for f in functions]  # all of them, even when one is named: the model sees its tools
    parallel, lazy = body.parallel_tool_calls, choice in (None, "auto")
    if isinstance(choice, NamedToolChoice):
        functions = [f for f in functions if f.name == choice.function.name]
        if not functions:
            raise APIError(400, f"tool_choice names the function {choice.function.name!r}, which tools does not offer; "
                           f"offered: {', '.join(names)}", param="tool_choice")
        parallel = False  # a named function is called once, as OpenAI does
    try:
        grammar = tool_grammar(functions, parallel=parallel, lazy=lazy)
    except KecilError as exc:
        raise APIError(400, str(exc), param="tools") from None
    return ToolUse(offered, grammar)


def template_message(index: int, message: ChatMessage) -> dict[str, Any]:
    """A conversation message as chat templates read it: an assistant's calls with their
    arguments as objects (templates write them with `tojson`), a tool result with its call's id."""
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": message.text()}
    if message.tool_calls:
        out["tool_calls"] = [_call(index, i, call) for i, call in enumerate(message.tool_calls)]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None and message.role == "tool":
        out["name"] = message.name
    return out


def _call(index: int, i: int, call) -> dict[str, Any]:
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError:
        raise APIError(400, f"messages[{index}].tool_calls[{i}].function.arguments is not JSON: send the arguments "
                       "as the JSON text the model's call gave", param="messages") from None
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}
