"""Tool calling through `kecil serve`, as an agent uses it: the official openai client against a real
server on loopback with Qwen2.5-Coder-0.5B (a template with tools), greedy, so each answer is the
model's own and the same every run."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.serve.test_server import Server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"], "additionalProperties": False},
    },
}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
SYSTEM = ("You are a helpful assistant. Call a function when you need data. "
          "Once you have the function's result, answer the user in one plain sentence.")


@pytest.fixture(scope="module")
def server(tmp_path_factory, qwen05_gguf):
    s = Server(tmp_path_factory.mktemp("tools"), str(qwen05_gguf), "smollm2-135m", "--parallel", "2",
               "--context", "2048", "--no-embeddings")
    s.model = s.client().models.list().data[0].id
    yield s
    s.stop()


def ask(server, question: str, **kw):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return server.client().chat.completions.create(model=server.model, messages=messages, temperature=0,
                                                   max_tokens=kw.pop("max_tokens", 60), **kw)


def check_call(call) -> dict:
    """A call as OpenAI gives it: an id, a function offered, arguments that satisfy its schema."""
    assert call.id.startswith("call_") and call.type == "function"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def test_the_model_calls_a_function_and_answers_from_its_result(server):
    question = "What is the weather in Paris? Answer in one sentence."
    first = ask(server, question, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and check_call(call)["city"] == "Paris"

    result = {"city": "Paris", "forecast": "rain", "temperature_c": 14}
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                choice.message.model_dump(exclude_none=True),  # the assistant's call, sent back as the client got it
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
    second = server.client().chat.completions.create(model=server.model, messages=messages, tools=TOOLS,
                                                     tool_choice="none", temperature=0, max_tokens=40)
    answer = second.choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    assert "14" in answer.message.content and "rain" in answer.message.content.lower()


def test_required_and_named_calls_satisfy_the_schema(server):
    required = ask(server, "What is 17 plus 25?", tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    [call] = required.choices[0].message.tool_calls
    assert required.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "add" and check_call(call) == {"a": 17, "b": 25}

    # Named: that function, whatever the question, and its arguments still fit its schema.
    named = ask(server, "What is the weather in Oslo?", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}})
    [call] = named.choices[0].message.tool_calls
    assert call.function.name == "add" and set(check_call(call)) == {"a", "b"}


def test_a_streamed_call_accumulates_to_the_same_call(server):
    kw = {"tools": TOOLS, "tool_choice": "required"}
    whole = ask(server, "What is the weather like in Rome?", **kw).choices[0].message.tool_calls
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the weather like in Rome?"}]
    deltas = []
    with server.client().chat.completions.stream(model=server.model, messages=messages, temperature=0, max_tokens=60, **kw) as stream:
        for event in stream:
            if event.type == "chunk" and event.chunk.choices and event.chunk.choices[0].delta.tool_calls:
                deltas.extend(event.chunk.choices[0].delta.tool_calls)
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls] == \
           [(c.function.name, c.function.arguments) for c in whole]
    check_call(final.message.tool_calls[0])
    # OpenAI's shape: the first delta names the call, the arguments follow in pieces.
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].function.arguments == ""
    assert len(deltas) > 3 and all(d.index == 0 and d.function.name is None for d in deltas[1:])


def test_auto_answers_in_text_when_no_function_fits_and_none_never_calls(server):
    text = ask(server, "Hello! How are you?", tools=TOOLS, max_tokens=30).choices[0]
    assert text.message.content and not text.message.tool_calls and text.finish_reason in ("stop", "length")
    none = ask(server, "What is the weather in Paris?", tools=TOOLS, tool_choice="none", max_tokens=30).choices[0]
    assert none.message.content and not none.message.tool_calls and none.finish_reason in ("stop", "length")


def post(server, **body) -> httpx.Response:
    body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **body}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


BAD_TOOLS = {
    "not a list": ({"tools": {"type": "function", "function": {"name": "f"}}}, "tools", "list"),
    "no name": ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools", "tools.0.function.name"),
    "bad name": ({"tools": [{"type": "function", "function": {"name": "get weather!"}}]}, "tools", "tools.0.function.name"),
    "bad schema": ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"city": {"type": "strnig"}}}}}]}, "tools", "schema"),
    "not an object": ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
                      "tools", "tools[0].function.parameters"),
    "twice": ({"tools": [WEATHER, WEATHER]}, "tools", "twice"),
    "huge maxItems": ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"}, "maxItems": 10**8}}}}}]},
                      "tools", "tools[1].function.parameters.properties.xs.maxItems is 100,000,000"),
    "unknown choice": ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}}, "tool_choice", "fly"),
    "required, no tools": ({"tool_choice": "required"}, "tool_choice", "no tools"),
    "with a json schema": ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format", "tools"),
    "arguments not json": ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "a=1"}}]}]}, "messages", "arguments"),
}


@pytest.mark.parametrize("case", list(BAD_TOOLS))
def test_malformed_tools_are_400s_naming_the_field(server, case):
    body, param, words = BAD_TOOLS[case]
    r = post(server, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words.lower() in error["message"].lower(), error


def test_a_model_without_tools_in_its_template_is_a_400(server):
    r = post(server, model="smollm2-135m", tools=TOOLS)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "tools" and "does not support tools" in error["message"]
    assert post(server, model="smollm2-135m").status_code == 200  # the same request without tools is served
