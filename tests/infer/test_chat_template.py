"""The shared chat-template renderer."""

import pytest

from kecil.errors import BackendError, ConfigError
from kecil.infer.chat_template import ChatTemplate

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_renders_chatml_with_generation_prompt():
    text = ChatTemplate(CHATML).render([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_bos_and_raise_exception_are_available_to_templates():
    template = ChatTemplate(
        "{{ bos_token }}{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{{ messages[0]['content'] }}",
        bos_token="<s>",
    )
    assert template.render([{"role": "user", "content": "x"}]) == "<s>x"
    with pytest.raises(BackendError, match="user first"):
        template.render([{"role": "assistant", "content": "x"}])


def test_non_ascii_survives_tojson():
    text = ChatTemplate("{{ messages[0]['content'] | tojson }}").render([{"role": "user", "content": "ภาษาไทย 中文"}])
    assert text == '"ภาษาไทย 中文"'


@pytest.mark.parametrize("messages", [[], [{"role": "robot", "content": "x"}], [{"role": "user"}], [{"role": "user", "content": 3}]])
def test_malformed_messages_are_refused(messages):
    with pytest.raises(ConfigError):
        ChatTemplate(CHATML).render(messages)


def test_broken_template_is_a_clear_error():
    with pytest.raises(BackendError, match="not valid Jinja"):
        ChatTemplate("{% for x in %}").render([{"role": "user", "content": "x"}])
