"""The Modelfile's TEMPLATE: a chat template measured into per-role pieces, and checked, or left out."""

from __future__ import annotations

from kecil.build.modelfile import measure_turns, stop_tokens
from kecil.infer.chat_template import ChatTemplate
from tests.tiny_models import CHATML_TEMPLATE

# Gemma's shape: no system role, its text folded into the first user turn; not one prefix per role.
FOLDED_SYSTEM = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set first = '' %}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ (first if loop.first else '') + m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_chatml_is_measured_into_its_pieces():
    turns = measure_turns(ChatTemplate(CHATML_TEMPLATE, "<|im_start|>", "<|im_end|>"))
    assert turns.prefix == {"system": "<|im_start|>system\n", "user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"}
    assert set(turns.suffix.values()) == {"<|im_end|>\n"} and turns.generation == "<|im_start|>assistant\n"
    go = turns.go_template()
    assert go.startswith("{{ range .Messages }}{{ if eq .Role \"system\" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n")
    assert go.endswith("{{ end }}{{ end }}<|im_start|>assistant\n")
    assert stop_tokens(turns, "<|im_end|>") == ["<|im_end|>"]


def test_a_leading_bos_is_left_to_the_runtime_that_adds_it():
    template = ChatTemplate(LLAMA3, "<|begin_of_text|>", "<|eot_id|>")
    turns = measure_turns(template, adds_bos=True)
    assert turns.prefix["user"] == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert not turns.prefix["system"].startswith("<|begin_of_text|>")
    messages = [{"role": "user", "content": "Hi"}]
    assert "<|begin_of_text|>" + turns.render(messages) == template.render(messages)
    assert stop_tokens(turns, "<|eot_id|>") == ["<|eot_id|>"]


def test_a_template_that_is_not_one_prefix_per_turn_is_not_translated():
    assert measure_turns(ChatTemplate(FOLDED_SYSTEM, "<bos>", "<eos>"), adds_bos=True) is None
    assert stop_tokens(None, "<eos>") == ["<eos>"]
