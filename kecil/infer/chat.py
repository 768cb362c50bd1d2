"""A multi-turn conversation that keeps its history inside the model's context window.

When the conversation outgrows the window, the oldest turns are dropped (the system prompt is
kept) and the caller is told how many, so nobody is surprised that the model "forgot".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from kecil.errors import PromptTooLongError
from kecil.infer.backend import Backend
from kecil.infer.generation import Chunk, GenerationConfig


@dataclass
class ChatTurn:
    """One reply in progress: `dropped` old messages were removed to make room; iterate `chunks`."""

    dropped: int
    chunks: Iterator[Chunk]


class ChatSession:
    def __init__(self, backend: Backend, config: GenerationConfig | None = None, system: str | None = None):
        backend.require_chat_template()
        self.backend = backend
        # Each turn extends the last one, so only the new turn needs processing. A session
        # replayed from the start passes through the same cache states, so seeds still repeat.
        self.config = replace(config or GenerationConfig(), reuse_prefix=True)
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    @property
    def reserve(self) -> int:
        """Tokens kept free for the answer: max_tokens, but never more than half the window."""
        return min(self.config.max_tokens, self.backend.context_length // 2)

    def _fit(self) -> int:
        """Drop the oldest turns until prompt + answer fit; returns how many messages went."""
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        dropped = 0
        while True:
            n = len(self.backend.chat_prompt_ids(self.messages))
            if n + self.reserve <= self.backend.context_length:
                return dropped
            if len(self.messages) - first <= 1:  # only the new message is left and it is too long
                self.messages.pop()
                raise PromptTooLongError(n, self.backend.context_length, self.reserve)
            # drop a whole exchange (user + assistant) so roles keep alternating
            del self.messages[first : first + 2]
            dropped += 2

    def send(self, text: str) -> ChatTurn:
        self.messages.append({"role": "user", "content": text})
        dropped = self._fit()
        return ChatTurn(dropped, self._reply())

    def _reply(self) -> Iterator[Chunk]:
        pieces: list[str] = []
        try:
            for chunk in self.backend.stream_chat(self.messages, self.config):
                pieces.append(chunk.text)
                yield chunk
        finally:  # an interrupted answer is kept as far as it got
            self.messages.append({"role": "assistant", "content": "".join(pieces)})
