"""Reading a model's answer for tool calls as it is generated: text, the start of each call (its
function's name) and its arguments in pieces, so a streamed answer and a whole one are read by the
same code and give the same calls. The format is kecil/infer/tool_calls.py's: calls between
`<tool_call>` tags, or bare JSON objects opening the answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from kecil.infer.tool_calls import BARE_START, CLOSE, OPEN


@dataclass(frozen=True)
class Text:
    """Answer text that is not a call."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """Call `index` (0, 1, ...) of function `name` begins; its arguments follow in pieces."""

    index: int
    name: str


@dataclass(frozen=True)
class Arguments:
    """The next piece of call `index`'s arguments (JSON text: all pieces together parse)."""

    index: int
    text: str


# The start of a call up to its arguments value (name first, as the grammar writes it); the value
# must have begun, so the arguments never start with the whitespace before it.
_HEAD = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\S)')


@lru_cache(maxsize=1)
def _bare():
    """BARE_START in the `regex` module, whose partial matches say "could still become one"."""
    import regex

    return regex.compile(BARE_START)


class CallParser:
    """Reads one answer, fed in pieces as it is generated, into Text, CallStart and Arguments
    events; `close()` at the end gives what was held back. Text that could still become a call
    (the start of `<tool_call>`, or of a bare `{"name": "`) is held until it is known."""

    def __init__(self) -> None:
        self._buffer = ""  # text read but not yet given out
        self._mode = "between"  # between calls (or before any) | text | call | closing
        self._tagged = False  # the current call is inside <tool_call> tags
        self._calls = 0  # calls started
        self._scan: _ObjectScan | None = None
        self._text_seen = False

    def feed(self, text: str) -> list:
        self._buffer += text
        events: list = []
        while self._step(events):
            pass
        return events

    def close(self) -> list:
        """The end of the answer: held text is given out; a call cut short keeps what it got."""
        events: list = []
        if self._mode == "call" and self._scan is not None and self._scan.started:
            rest = self._scan.arguments_rest(self._buffer)
            if rest:
                events.append(Arguments(self._calls - 1, rest))
        elif self._mode == "call":  # not yet a call: the text was the answer
            self._text((OPEN if self._tagged else "") + self._buffer, events)
        elif self._mode == "text" or (self._mode == "between" and (not self._calls or self._buffer.strip())):
            self._text(self._buffer, events)
        self._buffer = ""
        return events

    @property
    def calls(self) -> int:
        return self._calls

    def _text(self, text: str, events: list) -> None:
        if text:
            events.append(Text(text))
            self._text_seen = True

    def _step(self, events: list) -> bool:
        """Read as far as the buffer allows; True when the mode changed and there may be more."""
        if self._mode == "between":
            return self._between(events)
        if self._mode == "text":
            return self._in_text(events)
        if self._mode == "call":
            return self._in_call(events)
        return self._closing()

    def _between(self, events: list) -> bool:
        stripped = self._buffer.lstrip()
        if not stripped:
            return False
        if stripped.startswith(OPEN):
            self._start_call(stripped[len(OPEN):], tagged=True)
            return True
        if OPEN.startswith(stripped):
            return False
        if not self._text_seen:  # a bare call can only open the answer or follow a call
            match = _bare().match(stripped, partial=True)
            if match is not None and match.partial:
                return False
            if match is not None:
                self._start_call(stripped, tagged=False)
                return True
        self._mode = "text"
        return True

    def _in_text(self, events: list) -> bool:
        at = self._buffer.find(OPEN)
        if at >= 0:
            self._text(self._buffer[:at].rstrip(), events)
            self._start_call(self._buffer[at + len(OPEN):], tagged=True)
            return True
        # Hold back what may be the start of a tag, and the whitespace before it (dropped if it is one).
        hold = next((k for k in range(min(len(OPEN) - 1, len(self._buffer)), 0, -1) if self._buffer.endswith(OPEN[:k])), 0)
        cut = len(self._buffer[: len(self._buffer) - hold].rstrip())
        self._text(self._buffer[:cut], events)
        self._buffer = self._buffer[cut:]
        return False

    def _start_call(self, rest: str, *, tagged: bool) -> None:
        self._mode, self._tagged, self._buffer = "call", tagged, rest
        self._scan = None

    def _in_call(self, events: list) -> bool:
        if self._scan is None:
            stripped = self._buffer.lstrip()
            if not stripped:
                return False
            if not stripped.startswith("{"):  # not a call after all (only without a grammar)
                self._text((OPEN if self._tagged else "") + self._buffer, events)
                self._buffer, self._mode = "", "text"
                return False
            self._buffer, self._scan = stripped, _ObjectScan()
        scan = self._scan
        if not scan.started:  # before scanning on: the head ends where the new text may begin
            head = _HEAD.match(self._buffer)
            if head is not None:
                scan.start_arguments(head.end(), json.loads(head.group(1)))
                events.append(CallStart(self._calls, scan.name))
                self._calls += 1
        scan.advance(self._buffer)
        if scan.started:
            piece = scan.arguments_piece(self._buffer)
            if piece:
                events.append(Arguments(self._calls - 1, piece))
        if scan.end is None:
            return False
        if not scan.started:  # the object closed without the usual head: read it whole
            self._whole_object(self._buffer[: scan.end], events)
        self._buffer = self._buffer[scan.end:]
        self._scan = None
        self._mode = "closing" if self._tagged else "between"
        return True

    def _whole_object(self, text: str, events: list) -> None:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("name"), str) and "arguments" in value:
            events.append(CallStart(self._calls, value["name"]))
            events.append(Arguments(self._calls, json.dumps(value["arguments"], ensure_ascii=False)))
            self._calls += 1
        else:
            self._text((OPEN if self._tagged else "") + text, events)

    def _closing(self) -> bool:
        stripped = self._buffer.lstrip()
        if stripped.startswith(CLOSE):
            self._buffer, self._mode = stripped[len(CLOSE):], "between"
            return True
        if CLOSE.startswith(stripped):
            return False
        self._mode = "between"  # a missing closing tag: read on (only without a grammar)
        return True


class _ObjectScan:
    """Where a JSON object being written ends, and which of its text is the "arguments" value:
    depth and string state only, as the grammar (or json.loads, at the end) vouches for the rest."""

    def __init__(self) -> None:
        self.position = 0  # characters scanned
        self.depth = 0
        self.in_string = self.escaped = False
        self.end: int | None = None  # just past the object's closing brace
        self.name: str | None = None
        self.arguments_from = -1  # where the arguments value starts; -1: not known yet
        self.arguments_end: int | None = None
        self.given = 0  # arguments text up to here has been given out

    @property
    def started(self) -> bool:
        return self.arguments_from >= 0

    def start_arguments(self, offset: int, name: str) -> None:
        self.arguments_from, self.given, self.name = offset, offset, name

    def advance(self, text: str) -> None:
        while self.position < len(text) and self.end is None:
            c = text[self.position]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.end = self.position + 1
            if self.started and self.arguments_end is None and self.position >= self.arguments_from:
                if self.depth == 0:  # the call's own closing brace, after a scalar value
                    self.arguments_end = self.position
                elif self.depth == 1 and not self.in_string:
                    if c in "}]":  # the value's own closing bracket
                        self.arguments_end = self.position + 1
                    elif c == "," or c.isspace():  # after a scalar value
                        self.arguments_end = self.position
            self.position += 1

    def arguments_piece(self, text: str) -> str:
        """The arguments text scanned since the last piece."""
        limit = self.arguments_end if self.arguments_end is not None else self.position
        piece, self.given = text[self.given:limit], max(self.given, limit)
        return piece

    def arguments_rest(self, text: str) -> str:
        """What is left of a call cut short (the answer ended inside it)."""
        return self.arguments_piece(text).rstrip()
