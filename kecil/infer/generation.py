"""What a generation asks for (GenerationConfig) and what it gives back (chunks, usage, timings).

Shared by every backend so that `kecil generate`, `kecil chat` and later the server speak the
same types whichever engine runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kecil.errors import ConfigError

FINISH_REASONS = ("stop", "length", "error")


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings. `temperature=0` means greedy decoding (and then `seed` does not matter)."""

    max_tokens: int = field(default=256, metadata={"help": "Most tokens to generate.", "flag": ("--max-tokens", "-n")})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling: keep the smallest set of tokens with this much probability."})
    top_k: int = field(default=40, metadata={"help": "Sample among the K most likely tokens; 0 = off."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty for repeating tokens; 1 = off."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Stop when this text appears (repeatable)."})
    seed: int | None = field(default=None, metadata={"help": "Random seed: the same seed gives the same output."})
    # Keep generating past the end-of-sequence token: benchmarks need a fixed number of tokens.
    ignore_eos: bool = field(default=False, metadata={"hidden": True})
    # Reuse the KV cache of the prompt prefix the previous call shared (multi-turn chat: only the
    # new turn is processed). Off by default: re-evaluating the boundary token in a smaller batch
    # changes logits in the last bits, so the same seed only repeats exactly without reuse.
    reuse_prefix: bool = field(default=False, metadata={"hidden": True})

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be 0 (off) or more, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be above 0 (1 = off), got {self.repetition_penalty}")
        if isinstance(self.stop, str):  # a lone string would be split into characters
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise ConfigError("stop sequences must not be empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Wall-clock split of one generation: prompt processing (until the first new token is
    sampled) and decoding (every later token)."""

    prompt_tokens: int
    prompt_seconds: float
    decode_tokens: int
    decode_seconds: float

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability, with the most likely alternatives when asked for."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of text. The last chunk of a stream carries finish_reason, usage and
    timings (its text may be empty). finish_reason "error" (with `error` set) only comes from an
    engine that failed mid-stream, e.g. a model unloaded while serving."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage
    timings: Timings
    chunks: list[str] = field(default_factory=list, repr=False)


def collect(chunks) -> Completion:
    """Drain a stream of Chunks into one Completion."""
    pieces: list[str] = []
    last: Chunk | None = None
    for chunk in chunks:
        if chunk.text:
            pieces.append(chunk.text)
        last = chunk
    assert last is not None and last.finish_reason is not None, "a stream must end with a final chunk"
    return Completion("".join(pieces), last.finish_reason, last.usage, last.timings, pieces)
