"""Small training sets for the tune tests, written as real JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

# Words the tiny test tokenizer knows (tests/tiny_models.py), so examples stay short.
COLOURS = ("red", "green", "warm", "small", "tall", "old", "full", "bright")
THINGS = ("cat", "dog", "apple", "book", "river", "house", "train", "moon")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def memorisable_chat(n: int = 8) -> list[dict]:
    """n short question/answer pairs a tiny model can learn by heart."""
    return [
        {"messages": [
            {"role": "user", "content": f"What is the {THINGS[i % len(THINGS)]}?"},
            {"role": "assistant", "content": f"The {THINGS[i % len(THINGS)]} is {COLOURS[(i * 3) % len(COLOURS)]}."},
        ]}
        for i in range(n)
    ]
