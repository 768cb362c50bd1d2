"""The OpenAI wire format kecil serve speaks: request bodies (validated by pydantic) and the
error object every failure is reported in.

Only the fields kecil implements are accepted with meaning; fields it cannot honour (images,
token-id prompts, tools on a model not trained for them) are refused with a 400 that says so
rather than silently ignored.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 8
# JSON may spell half of a UTF-16 pair ("\ud800") that Python then holds as a lone surrogate: not
# text, and it cannot be encoded (tokenizers, metrics and logs all fail on it), so it stops here.
_SURROGATE = re.compile("[\ud800-\udfff]")


class APIError(Exception):
    """An error answered as OpenAI's `{"error": {...}}` object with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in `value` (nested lists and dicts, keys included) holds a lone
    surrogate. Iterative, so a deeply nested value cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


class _Model(BaseModel):
    """Every part of a request body: each field's strings are checked to be text."""

    @field_validator("*")
    @classmethod
    def _text_only(cls, value):
        if has_lone_surrogate(value):
            raise ValueError("holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text: send valid Unicode")
        return value


class _Request(_Model):
    # Unknown fields are ignored, as OpenAI-compatible servers do: clients send vendor extras.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Model):
    type: Literal["text"]
    text: str


class FunctionCall(_Model):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Model):
    """A call an earlier assistant message made (sent back with the conversation)."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant message's calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    @model_validator(mode="after")
    def _calls_from_the_assistant(self):
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role} messages")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"message content of type {part.get('type')!r} is not supported: kecil serves text models; send text parts only", param="messages")
            pieces.append(part["text"])
        return "".join(pieces)


class JSONSchemaFormat(_Model):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class FunctionDefinition(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule: it is written into the grammar
    description: str | None = None
    parameters: dict[str, Any] | None = None  # the JSON schema of the arguments object
    strict: bool | None = None  # arguments always follow the schema here (the grammar holds them to it)


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: FunctionName


class StreamOptions(_Model):
    include_usage: bool = False


class _Sampling(_Request):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # extension, as in llama.cpp's server
    repetition_penalty: float | None = Field(default=None, gt=0)  # extension
    ignore_eos: bool = False  # extension, as llama.cpp's server: fixed-length answers for benchmarks
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("seed")
    @classmethod
    def _seed(cls, value):
        if value is not None and not 0 <= value < 2**63:
            raise ValueError("seed must be between 0 and 2**63 - 1")
        return value


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    kb: str | None = None  # extension: answer from a kecil knowledge base
    # extension, for route:NAME models: where the question may go past the small model
    escalate: Literal["all", "local", "none"] | None = None

    def answer_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("prompt must not be an empty list")
        return prompts


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    @field_validator("input")
    @classmethod
    def _input(cls, value):
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must not be an empty list")
        if any(not t for t in texts):
            raise ValueError("input texts must not be empty strings")
        return texts
