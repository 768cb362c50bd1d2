"""Rendering a model's own Jinja chat template into the prompt text, the same for every backend.

Written here rather than borrowed because llama-cpp-python and transformers each render
templates with their own BOS handling and helpers; kecil needs one renderer so that both
backends turn a conversation into the same token ids. It follows what the Hugging Face
template convention provides to templates (sandboxed Jinja, trim_blocks/lstrip_blocks,
`raise_exception`, `strftime_now`, a non-ASCII-safe `tojson`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from kecil.errors import BackendError, ConfigError

# {"role": "user" | "assistant" | "system" | "tool", "content": str}; an assistant message may also
# carry "tool_calls" and a tool message "tool_call_id", as OpenAI's and Hugging Face's formats do.
Message = Mapping[str, Any]
ROLES = ("system", "user", "assistant", "tool")


def _raise(message: str) -> None:
    raise BackendError(f"the model's chat template refused the conversation: {message}")


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise BackendError(f"the model's chat template is not valid Jinja ({exc}); pass a plain prompt to `kecil generate` instead") from None


@lru_cache(maxsize=16)
def _variables(source: str) -> frozenset[str]:
    """The names a template reads from outside (its variables, not what it sets itself)."""
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_compile(source).environment.parse(source)))


def check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise ConfigError("a chat needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ConfigError(f"message {i} must have a 'role' and a 'content'")
        if m["role"] not in ROLES:
            raise ConfigError(f"message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ConfigError(f"message {i} content must be text")


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    bos_token: str | None = None
    eos_token: str | None = None

    @property
    def supports_tools(self) -> bool:
        """Whether the template reads a `tools` variable: a template that never does would drop the
        functions a request offers, and its model was not trained to call them."""
        return "tools" in _variables(self.source)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The prompt text; `tools` (OpenAI's `{"type": "function", "function": {...}}` objects)
        are written the way the model was trained to read them (see `supports_tools`)."""
        check_messages(messages)
        from jinja2.exceptions import TemplateError

        try:
            return _compile(self.source).render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                tools=[dict(t) for t in tools] if tools else None,
            )
        except TemplateError as exc:
            raise BackendError(f"the model's chat template failed to render ({exc})") from None
