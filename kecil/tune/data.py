"""Training data for `kecil tune`: JSONL in chat, instruction or plain-text form, checked line by
line and turned into token ids with a mask of the tokens the loss is taken on.

The format is detected from the keys of each line: `messages` (chat), `instruction`/`output`
(with optional `input`), or `text`. Every line must have the same form. A broken file is
refused before training starts, with the numbers of the bad lines, so an hour of training is
never lost to line 9,000. Chat and instruction examples are rendered with the model's own chat
template through kecil's renderer, the one inference uses, so a tuned model sees at inference
exactly the prompt layout it was trained on; the loss covers only what the assistant says.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kecil.errors import ConfigError
from kecil.infer.chat_template import ROLES, ChatTemplate

DataFormat = Literal["chat", "instruction", "text"]
MAX_REPORTED_ERRORS = 5

# A base model has no chat template; instruction data then gets this plain layout (Alpaca's).
# `kecil generate --raw` with the same layout reaches what was trained.
PLAIN_INSTRUCTION = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_INSTRUCTION_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


class DataError(ConfigError):
    """The training data file is missing, empty or has malformed lines (listed by number)."""


@dataclass(frozen=True)
class Dataset:
    """The checked records of one JSONL file, all of one format."""

    path: Path
    format: DataFormat
    records: list[dict]
    sha256: str  # of the file's bytes: a resumed run must train on the same data
    lines: tuple[int, ...] = ()  # the file's line number of each record (for saying which were held out)


@dataclass(frozen=True)
class Example:
    """One tokenized training example; `trained[i]` says whether token i is predicted with loss."""

    ids: list[int]
    trained: list[bool]
    line: int = 0  # where it came from in its data file (0: not known)


def detect_format(record: Mapping) -> DataFormat | None:
    if "messages" in record:
        return "chat"
    if "instruction" in record or "output" in record:
        return "instruction"
    if "text" in record:
        return "text"
    return None


def _check_record(record: object) -> tuple[DataFormat | None, str | None]:
    """(format, None) for a good record, (format or None, what is wrong) for a bad one."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    kind = detect_format(record)
    if kind is None:
        return None, "has none of the keys 'messages' (chat), 'instruction'+'output' (instruction) or 'text'"
    if kind == "text":
        if not isinstance(record["text"], str) or not record["text"].strip():
            return kind, "'text' must be a non-empty string"
        return kind, None
    if kind == "instruction":
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                return kind, f"'{key}' must be a non-empty string"
        if not isinstance(record.get("input", ""), str):
            return kind, "'input' must be a string"
        return kind, None
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return kind, "'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return kind, f"message {i} must be an object with string 'role' and 'content'"
        if m["role"] not in ROLES:
            return kind, f"message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return kind, "has no non-empty assistant message to learn from"
    return kind, None


def read_dataset(path: str | Path) -> Dataset:
    """Read and check a JSONL file; raise DataError naming the bad lines if any line is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"no such data file: {path}; pass a .jsonl file with one JSON object per line")
    raw = path.read_bytes()
    records: list[dict] = []
    lines: list[int] = []
    errors: list[str] = []
    kind: DataFormat | None = None
    first_line = 0
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        line_kind, problem = _check_record(record)
        if problem is None and kind is not None and line_kind != kind:
            problem = f"is {line_kind} data but line {first_line} is {kind} data; use one format per file"
        if problem:
            errors.append(f"line {number}: {problem}")
            continue
        if kind is None:
            kind, first_line = line_kind, number
        records.append(record)
        lines.append(number)
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise DataError(
            f"{path} has {len(errors)} bad line(s), so training did not start: "
            + "; ".join(errors[:MAX_REPORTED_ERRORS]) + more + ". Fix them and run again"
        )
    if not records:
        raise DataError(f"{path} has no examples: write one JSON object per line")
    return Dataset(path, kind, records, hashlib.sha256(raw).hexdigest(), tuple(lines))


@dataclass(frozen=True)
class PromptStyle:
    """How examples become text for one model: its chat template, BOS/EOS and default system prompt."""

    template: ChatTemplate | None
    adds_bos: bool
    bos_token: str | None
    eos_token: str | None
    default_system: str | None = None


def render_spans(record: dict, kind: DataFormat, style: PromptStyle) -> tuple[str, list[tuple[int, int]]]:
    """The example's full text and the character spans the loss is taken on."""
    if kind == "text":
        text = record["text"] + (style.eos_token or "")
        return text, [(0, len(text))]
    if kind == "instruction":
        if style.template is None:
            layout = PLAIN_INSTRUCTION_WITH_INPUT if record.get("input") else PLAIN_INSTRUCTION
            prompt = layout.format(instruction=record["instruction"], input=record.get("input", ""))
            text = prompt + record["output"] + (style.eos_token or "")
            return text, [(len(prompt), len(text))]
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if style.template is None:
        raise DataError(
            "chat data needs a model with a chat template, and this one has none (a base model): "
            "use instruction or text data, or an instruct model"
        )
    if style.default_system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": style.default_system}, *messages]  # as inference adds it
    spans = []
    text = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # The assistant's text is what the full render adds after the render that ends with the
        # generation prompt: its words and the end-of-turn marker, which teaches it to stop.
        before = style.template.render(messages[:i], add_generation_prompt=True)
        after = style.template.render(messages[: i + 1], add_generation_prompt=False)
        if not after.startswith(before):
            raise DataError("the model's chat template renders a conversation differently as it grows; train with text data instead")
        spans.append((len(before), len(after)))
        text = after
    full = style.template.render(messages, add_generation_prompt=False)
    if not full.startswith(text):
        raise DataError("the model's chat template renders a conversation differently as it grows; train with text data instead")
    return full, spans


Tokenizer = Callable[[str], tuple[list[int], list[tuple[int, int]]]]  # text -> (ids, character offsets)


def tokenize_example(record: dict, kind: DataFormat, style: PromptStyle, tokenize: Tokenizer, bos_id: int | None) -> Example:
    text, spans = render_spans(record, kind, style)
    ids, offsets = tokenize(text)
    trained = [any(start < end_char and end > start_char for start, end in spans) for start_char, end_char in offsets]
    # Templates that write the BOS text themselves must not get a second one (as in Backend).
    if style.adds_bos and bos_id is not None and not (style.bos_token and text.startswith(style.bos_token)):
        ids, trained = [bos_id, *ids], [False, *trained]
    return Example(ids, trained)


def tokenize_dataset(
    dataset: Dataset, style: PromptStyle, tokenize: Tokenizer, bos_id: int | None, max_length: int
) -> tuple[list[Example], int, int]:
    """(examples, how many were cut to max_length, how many were dropped for having nothing left
    to learn after the cut). Dropped and cut counts are reported, never silent."""
    examples, cut, dropped = [], 0, 0
    for number, record in enumerate(dataset.records):
        example = tokenize_example(record, dataset.format, style, tokenize, bos_id)
        line = dataset.lines[number] if number < len(dataset.lines) else 0
        if len(example.ids) > max_length:
            cut += 1
        example = Example(example.ids[:max_length], example.trained[:max_length], line)
        # A token is "trained" when it is a target: at least one must be predicted from an earlier one.
        if not any(example.trained[1:]):
            dropped += 1
            continue
        examples.append(example)
    if not examples:
        raise DataError(
            f"every example in {dataset.path} is longer than --max-length {max_length} before its answer starts: raise --max-length"
        )
    return examples, cut, dropped


def split_validation(items: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded random `fraction` held out, at least one of each when asked."""
    import random

    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * fraction)))
    held = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
