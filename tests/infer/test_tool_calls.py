"""Tool calls below the server: which templates offer tools, the grammar built from the functions'
schemas (run on the bundled model's llama.cpp engine), and the parser that reads calls out of an
answer however it is cut into pieces."""

from __future__ import annotations

import json

import pytest

from kecil.errors import ConfigError, UnsupportedError
from kecil.infer.chat_template import ChatTemplate
from kecil.infer.engine import SamplingExtras, drain, open_engine
from kecil.infer.generation import GenerationConfig, collect
from kecil.infer.tool_call_parser import Arguments, CallParser, CallStart, Text
from kecil.infer.tool_calls import Function, check_template, tool_grammar
from kecil.models.info import inspect_model
from kecil.models.reference import resolve

HERMES = ("{% if tools %}{% for tool in tools %}{{ tool | tojson }}{% endfor %}Call as <tool_call>{...}</tool_call>{% endif %}"
          "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
WEATHER = Function("get_weather", "Weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]})


def read(text: str, step: int | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(text, [(name, arguments)]) of an answer fed `step` characters at a time."""
    parser, events = CallParser(), []
    pieces = [text] if step is None else [text[i:i + step] for i in range(0, len(text), step)]
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.close()
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, CallStart):
            calls[event.index] = [event.name, ""]
        elif isinstance(event, Arguments):
            calls[event.index][1] += event.text
    return "".join(e.text for e in events if isinstance(e, Text)), [tuple(c) for c in calls.values()]


ANSWERS = {
    '{"name": "get_weather", "arguments": {"city": "Paris"}}': ("", [("get_weather", '{"city": "Paris"}')]),
    '<tool_call>\n{"name": "f", "arguments": {"s": "a}\\"b", "n": [1, {"x": []}]}}\n</tool_call>':
        ("", [("f", '{"s": "a}\\"b", "n": [1, {"x": []}]}')]),
    'Let me look.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>{"name":"g","arguments":{"x":1}}</tool_call>':
        ("Let me look.", [("f", "{}"), ("g", '{"x":1}')]),
    '{"name":"f","arguments":{"a":1}}\n{"name":"g","arguments":{"b":2}}': ("", [("f", '{"a":1}'), ("g", '{"b":2}')]),
    '<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>': ("", [("f", '{"a": 1}')]),
    '{"name": "f", "arguments": {"city": "Par': ("", [("f", '{"city": "Par')]),  # cut short by max_tokens
    "Plain text, with < and <tool in it.\n": ("Plain text, with < and <tool in it.\n", []),
    '{"name": "Alice", "age": 3}': ('{"name": "Alice", "age": 3}', []),
    "  {\"answer\": 4}": ("  {\"answer\": 4}", []),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_calls_are_read_the_same_however_the_answer_is_cut(answer):
    assert read(answer) == ANSWERS[answer]
    for step in (1, 2, 3, 7):
        assert read(answer, step) == ANSWERS[answer]


def test_only_templates_that_read_tools_offer_them():
    check_template(ChatTemplate(HERMES), "m")
    plain = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not plain.supports_tools
    with pytest.raises(UnsupportedError, match="does not support tools"):
        check_template(plain, "m")
    with pytest.raises(UnsupportedError, match="format"):  # tools, but calls written some other way
        check_template(ChatTemplate("{{ tools | tojson }}{% for m in messages %}{{ m.content }}{% endfor %}"), "m")
    text = ChatTemplate(HERMES).render([{"role": "user", "content": "hi"}], tools=[WEATHER.for_template()])
    assert '"name": "get_weather"' in text and text.endswith("user: hi\n")


def test_each_functions_definitions_keep_their_own_rules():
    def item(kind):  # two functions whose $defs share a name but not a meaning
        return {"type": "object", "properties": {"x": {"$ref": "#/$defs/Item"}}, "required": ["x"],
                "$defs": {"Item": {"type": "object", "properties": {"v": {"type": kind}}, "required": ["v"]}}}

    rules = dict(line.split(" ::= ", 1) for line in tool_grammar(
        [Function("f", None, item("integer")), Function("g", None, item("boolean"))], parallel=False, lazy=False).gbnf.splitlines())
    assert rules["f-Item-v-kv"].endswith(" integer") and rules["g-Item-v-kv"].endswith(" boolean")
    with pytest.raises(ConfigError, match=r"tools\[0\].function.parameters"):
        tool_grammar([Function("f", None, {"type": "array"})], parallel=False, lazy=False)
    with pytest.raises(ConfigError, match="alternatives"):
        tool_grammar([Function("f", None, {"type": "object", "properties": {"k": {"enum": list(range(500))}}})],
                     parallel=False, lazy=False)


@pytest.mark.slow
def test_the_grammar_holds_calls_to_the_schema_and_a_lazy_one_leaves_text_alone():
    ref = resolve(None)  # the bundled 135M model: it was never taught tools, so only the grammar makes a call
    engine = open_engine(ref, inspect_model(ref), context_length=512, threads=1, parallel=1)
    try:
        ids = engine.chat_prompt_ids([{"role": "user", "content": "What is the weather in Paris?"}])
        config = GenerationConfig(max_tokens=64, temperature=0)
        forced = tool_grammar([WEATHER], parallel=False, lazy=False)
        text = collect(drain(engine, ids, config, SamplingExtras(grammar=forced.gbnf))).text
        [(name, arguments)] = read(text)[1]
        assert name == "get_weather" and set(json.loads(arguments)) == {"city", "unit"}
        assert json.loads(arguments)["unit"] in ("celsius", "fahrenheit")

        lazy = tool_grammar([WEATHER], parallel=True, lazy=True)
        free = collect(drain(engine, ids, config)).text
        assert collect(drain(engine, ids, config, SamplingExtras(grammar=lazy.gbnf, grammar_triggers=lazy.triggers))).text == free
    finally:
        engine.close()
