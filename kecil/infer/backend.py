"""The one interface every inference engine implements, and the shared logic on top of it.

A backend only has to tokenize, detokenize and stream tokens for a list of prompt ids. The chat
template, prompt building, context checks and chat formatting live here once, taken from the
model file, so the llama.cpp and torch engines turn a conversation into the same token ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from kecil.errors import BackendError, PromptTooLongError
from kecil.infer.chat_template import ChatTemplate, Message
from kecil.infer.generation import Chunk, Completion, GenerationConfig, collect
from kecil.models.info import ModelInfo
from kecil.models.reference import ModelRef


class Backend(ABC):
    """A loaded model that can generate. Use `kecil.infer.load.load_model` to get one."""

    name: ClassVar[str]
    # Where it can run: "cuda" here means load_model passes --device on (kecil/infer/load.py: device_options).
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, ref: ModelRef, info: ModelInfo, context_length: int):
        self.ref = ref
        self.info = info
        self.context_length = context_length
        # Template and special tokens come from the model file, not the engine, so both engines
        # build the same prompt for the same conversation.
        self.chat_template = (
            ChatTemplate(info.chat_template, info.bos_token, info.eos_token) if info.chat_template else None
        )
        self.adds_bos = info.add_bos  # whether the tokenizer expects a BOS before every prompt
        # A built-in's preset system prompt, used when a conversation has none (see builtins.py).
        self.default_system = ref.system_prompt

    # --- what each engine provides -------------------------------------------------------
    @abstractmethod
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """Token ids for `text`; special-token markup (e.g. <|im_start|>) is parsed as special."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text for `ids`."""

    @abstractmethod
    def stream_ids(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[Chunk]:
        """Generate after `prompt_ids`, yielding text pieces; the last chunk is final.
        Implementations start with `config = self.fit_to_context(prompt_ids, config)`."""

    def logits(self, ids: Sequence[int], *, start: int = 0):
        """Next-token logits: a float32 numpy array of shape (len(ids) - start, n_vocab) whose row
        i is the logits for the token after ids[:start + i + 1].

        Engines that can give them override this; they may keep the cache of the previous call
        and evaluate only what follows the longest prefix it shares with `ids`, which is what
        makes scoring several continuations of one question cheap. `start` skips rows the caller
        does not need. Scoring tasks are refused (not skipped) on an engine without logits.
        """
        raise BackendError(
            f"the {self.name} backend cannot give token logits, so log-likelihood tasks (perplexity, "
            "multiple choice) cannot run on it: use --backend llamacpp or --backend torch"
        )

    def check_logits_request(self, ids: Sequence[int], start: int) -> None:
        if not ids:
            raise BackendError("logits need at least one token id")
        if not 0 <= start < len(ids):
            raise BackendError(f"start must be in [0, {len(ids)}), got {start}")
        if len(ids) > self.context_length:
            raise PromptTooLongError(len(ids), self.context_length)

    def close(self) -> None:
        """Free the model's memory. The backend must not be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- shared on top -------------------------------------------------------------------
    def fit_to_context(self, ids: Sequence[int], config: GenerationConfig) -> GenerationConfig:
        """Refuse (never truncate) a prompt that leaves no room for even one new token, and cap
        max_tokens at the room left, so generation ends with "length" at the window's edge."""
        if len(ids) + 1 > self.context_length:
            raise PromptTooLongError(len(ids), self.context_length)
        room = self.context_length - len(ids)
        return config if config.max_tokens <= room else replace(config, max_tokens=room)

    def stream(self, prompt: str, config: GenerationConfig | None = None) -> Iterator[Chunk]:
        config = config or GenerationConfig()
        return self.stream_ids(self.tokenize(prompt, add_bos=self.adds_bos), config)

    def generate(self, prompt: str, config: GenerationConfig | None = None) -> Completion:
        return collect(self.stream(prompt, config))

    def require_chat_template(self) -> ChatTemplate:
        template = self.chat_template
        if template is None:
            raise BackendError(
                f"{self.ref.name} has no chat template (it is a base model, not a chat model): "
                "use `kecil generate` with a plain prompt, or pick an instruct model"
            )
        return template

    def format_chat(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The prompt text for a conversation, ending where the assistant's answer starts; `tools`
        are the functions the model may call (see kecil/infer/tool_calls.py)."""
        template = self.require_chat_template()
        if self.default_system and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        return template.render(messages, add_generation_prompt=True, tools=tools)

    def chat_prompt_ids(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        text = self.format_chat(messages, tools)
        template = self.chat_template
        # Templates that write the BOS text themselves must not get a second one from the tokenizer.
        add_bos = self.adds_bos and not (template.bos_token and text.startswith(template.bos_token))
        return self.tokenize(text, add_bos=add_bos)

    def stream_chat(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> Iterator[Chunk]:
        return self.stream_ids(self.chat_prompt_ids(messages), config or GenerationConfig())

    def chat(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> Completion:
        return collect(self.stream_chat(messages, config))

    def stream_instruction(
        self, prompt: str, config: GenerationConfig | None = None, *, system: str | None = None
    ) -> Iterator[Chunk]:
        """Answer `prompt` the way the model was trained to: as a one-turn chat when it has a chat
        template (an instruct model would otherwise just end the text), as raw text when not."""
        if self.chat_template is None:
            return self.stream(prompt, config)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.stream_chat(messages, config)


def shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids `a` and `b` have in common (how much of a cache can be kept)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
