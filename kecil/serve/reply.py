"""The one reply builder of the chat and completion endpoints: chunks from any source become
OpenAI's whole response or its server-sent-event stream.

A plain answer's chunks come from an engine's generations, a knowledge-base answer's from a
retrieval worker (kecil/serve/rag.py); both feed a `Generations` queue as (choice index, Chunk)
and `respond` turns it into the reply, adding a source's extra fields (citations, ...) in one
place for the streamed and the whole reply. Timeouts and clients that leave are handled here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from kecil.infer.generation import Chunk
from kecil.serve.protocol import APIError

log = logging.getLogger("kecil.serve")
DISCONNECT_POLL = 0.5  # seconds between checks that a non-streaming client is still there


@dataclass
class Call:
    """One HTTP request's bookkeeping: for the audit log, metrics and the request log."""

    endpoint: str
    model: str
    caller: str
    client: str
    started: float = field(default_factory=time.perf_counter)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None
    status: int = 200
    stream: bool = False
    finished: bool = False  # accounted for (metrics, audit line): a request is counted once


@dataclass
class Choice:
    index: int
    text: list[str] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    calls: CallReader | None = None  # when the request offers tools: the answer read for calls


class CallReader:
    """One answer read for tool calls (the parser is kecil/infer/tool_call_parser.py's) and turned into
    OpenAI's `tool_calls`: each call's id, name and arguments, whole and as stream deltas."""

    def __init__(self) -> None:
        from kecil.infer.tool_call_parser import CallParser

        self.parser = CallParser()
        self.calls: list[dict] = []

    def read(self, text: str, final: bool) -> list[dict]:
        """The delta pieces (`content` or `tool_calls`) this text releases."""
        from kecil.infer.tool_call_parser import Arguments, CallStart

        events = (self.parser.feed(text) if text else []) + (self.parser.close() if final else [])
        pieces = []
        for event in events:
            if isinstance(event, CallStart):
                call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": event.name, "arguments": ""}}
                self.calls.append(call)
                pieces.append({"tool_calls": [{"index": event.index, **call, "function": dict(call["function"])}]})
            elif isinstance(event, Arguments):
                self.calls[event.index]["function"]["arguments"] += event.text
                pieces.append({"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]})
            else:
                pieces.append({"content": event.text})
        return pieces


class ClientGone(Exception):
    """The client closed the connection; its sequences are cancelled and nothing is sent."""


class Generations:
    """Everything one request produces, from any thread, in one queue: (choice index, Chunk), or
    an APIError that ends the reply. `extra` holds a source's fields for the reply's top level."""

    def __init__(self, server, call: Call):
        self.server, self.call = server, call
        self.deadline = time.monotonic() + server.config.request_timeout
        self.queue: asyncio.Queue[tuple[int, Chunk] | APIError] = asyncio.Queue()
        self.handles: list = []  # anything with cancel(): engine generations, a retrieval worker's stop
        self.extra: dict = {}
        self.loop = asyncio.get_running_loop()
        self.checked = time.monotonic()  # when the client's connection was last checked

    def emitter(self, index: int) -> Callable[[Chunk], None]:
        """A callback for choice `index` that any thread may call."""
        return lambda chunk: self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, chunk))

    def fail(self, error: APIError) -> None:
        """End the reply with `error` (from any thread)."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, error)

    def ready(self) -> bool:
        """Whether a chunk (or an error) is already waiting, so `next` will not wait."""
        return not self.queue.empty()

    async def next(self, request: Request | None = None) -> tuple[int, Chunk]:
        """The next chunk of any choice; raises on timeout or (when `request` is given) disconnect."""
        if self.queue.empty() or request is not None or time.monotonic() >= self.deadline:
            item = await self._wait(request)
        else:  # the engine is ahead of the client: no timer, no task (wait_for makes one per call)
            item = self.queue.get_nowait()
        if isinstance(item, APIError):
            raise item
        if self.call.first_token is None:
            self.call.first_token = time.perf_counter()
        index, chunk = item
        if chunk.finish_reason == "error":
            raise APIError(503, chunk.error or "the model failed", type="server_error", code="model_error")
        return item

    async def _wait(self, request: Request | None) -> tuple[int, Chunk] | APIError:
        while True:
            now = time.monotonic()
            if request is not None and now - self.checked > DISCONNECT_POLL:
                self.checked = now  # chunks may arrive faster than the poll: check by the clock
                if await request.is_disconnected():
                    raise ClientGone()
            remaining = self.deadline - now
            if remaining <= 0:
                raise APIError(504, f"the request took longer than the server's timeout of {self.server.config.request_timeout:g} s",
                               type="server_error", code="timeout")
            try:
                item = await asyncio.wait_for(self.queue.get(), min(remaining, DISCONNECT_POLL) if request else remaining)
            except (asyncio.TimeoutError, TimeoutError):
                if request is not None and await request.is_disconnected():
                    raise ClientGone() from None
                continue
            return item

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()


def absorb(choice: Choice, chunk: Chunk) -> list[dict]:
    """Add a chunk to its choice; returns the delta pieces it releases (`content`, `tool_calls`)."""
    final = chunk.finish_reason is not None
    if choice.calls is None:
        pieces = [{"content": chunk.text}] if chunk.text or chunk.logprobs else []
    else:
        pieces = choice.calls.read(chunk.text, final)
    choice.text.extend(p["content"] for p in pieces if p.get("content"))
    choice.logprobs.extend(chunk.logprobs)
    if final:
        called = chunk.finish_reason == "stop" and choice.calls is not None and choice.calls.calls
        choice.finish_reason = "tool_calls" if called else chunk.finish_reason
        choice.completion_tokens = chunk.usage.completion_tokens if chunk.usage else 0
    return pieces


def usage(call: Call) -> dict[str, int]:
    return {"prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
            "total_tokens": call.prompt_tokens + call.completion_tokens}


def chat_logprobs(entries) -> dict | None:
    def token(t: str, lp: float) -> dict:
        return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}

    return {"content": [{**token(e.token, e.logprob), "top_logprobs": [token(t, lp) for t, lp in e.top]} for e in entries]}


def completion_logprobs(entries, start: int = 0) -> dict:
    offsets, position = [], start
    for e in entries:
        offsets.append(position)
        position += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) for e in entries], "text_offset": offsets}


def message(c: Choice) -> dict:
    """A chat choice's whole message: its text, and its calls when it made any (then the text is
    null when empty, as OpenAI sends it)."""
    content = "".join(c.text)
    if c.calls is None or not c.calls.calls:
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": content or None, "tool_calls": c.calls.calls}


class Shape:
    """How one kind of reply looks: chat (`message` / `delta`) or text completion (`text`)."""

    def __init__(self, kind: str, call: Call, body):
        self.kind, self.call, self.body = kind, call, body
        self.created = int(time.time())
        self.chat = kind == "chat"
        self.logprobs = bool(body.logprobs) if self.chat else getattr(body, "logprobs", None) is not None

    def envelope(self, streamed: bool) -> dict:
        if self.chat:
            return {"id": f"chatcmpl-{self.call.id}", "object": "chat.completion.chunk" if streamed else "chat.completion",
                    "created": self.created, "model": self.body.model}
        return {"id": f"cmpl-{self.call.id}", "object": "text_completion", "created": self.created, "model": self.body.model}

    def whole(self, choices: list[Choice], extra: dict) -> dict:
        def one(c: Choice) -> dict:
            if self.chat:
                return {"index": c.index, "message": message(c),
                        "logprobs": chat_logprobs(c.logprobs) if self.logprobs else None, "finish_reason": c.finish_reason}
            return {"index": c.index, "text": "".join(c.text),
                    "logprobs": completion_logprobs(c.logprobs) if self.logprobs else None, "finish_reason": c.finish_reason}

        return {**self.envelope(False), "choices": [one(c) for c in choices], **extra, "usage": usage(self.call)}

    def event(self, choice_list: list[dict], **extra) -> str:
        return f"data: {json.dumps({**self.envelope(True), 'choices': choice_list, **extra}, ensure_ascii=False)}\n\n"

    def delta(self, index: int, piece: dict | None, finish: str | None, entries=()) -> dict:
        """One choice's part of a stream event: `piece` is {"content": ...} or {"tool_calls": [...]}."""
        if self.chat:
            d = {"index": index, "delta": piece or {}, "finish_reason": finish}
            if self.logprobs:
                d["logprobs"] = chat_logprobs(entries) if entries else None
            return d
        d = {"index": index, "text": (piece or {}).get("content", ""), "finish_reason": finish}
        if self.logprobs:
            d["logprobs"] = completion_logprobs(entries) if entries else None
        return d


async def respond(server, request: Request, body, call: Call, kind: str, generations: Generations,
                  choices: list[Choice], echo: Callable[[int], str] | None = None):
    """Answer with every choice's chunks as JSON or, when the body asks to stream, as events.
    `echo(index)` is text that goes before a choice's answer (a completion's echoed prompt)."""
    shape = Shape(kind, call, body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = stream_events(server, generations, choices, shape, include_usage, echo)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        while any(c.finish_reason is None for c in choices):
            index, chunk = await generations.next(request)
            absorb(choices[index], chunk)
    except ClientGone:
        generations.cancel()
        call.status = 499  # nginx's code for "client closed request": recorded, never sent
        server.finish(call)
        return JSONResponse({}, status_code=499)
    except BaseException:
        generations.cancel()
        raise
    account(server, call, choices)
    if echo is not None:
        for c in choices:
            c.text.insert(0, echo(c.index))
    response = JSONResponse(shape.whole(choices, generations.extra))
    server.finish(call)
    return response


def account(server, call: Call, choices: list[Choice]) -> None:
    """Count the answer's tokens and, only when the server was asked to, log its text."""
    call.completion_tokens = sum(c.completion_tokens for c in choices)
    if server.config.log_requests:
        answers = ["".join(c.text) if c.calls is None else message(c) for c in choices]
        log.info("response %s %s", call.id, json.dumps(answers, ensure_ascii=False))


async def guarded_stream(server, call: Call, events: AsyncIterator[str], cleanup) -> AsyncIterator[str]:
    """An event stream's ending, the same for every streamed answer: an error after the headers
    went out travels as an error event (as OpenAI's does), a client that leaves is recorded as
    499, `cleanup` always runs (cancelling what still generates), the request is accounted for,
    and a finished stream ends with [DONE]."""
    call.stream = True
    try:
        async for event in events:
            yield event
    except APIError as exc:
        call.status = exc.status
        yield f"data: {json.dumps(exc.body())}\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        call.status = 499
        raise
    except Exception:  # a bug after the headers went out: recorded as one (the guard logs it)
        call.status = 500
        raise
    finally:
        cleanup()
        server.finish(call)
    yield "data: [DONE]\n\n"


async def stream_events(server, generations: Generations, choices: list[Choice], shape: Shape,
                        include_usage: bool, echo: Callable[[int], str] | None) -> AsyncIterator[str]:
    call = shape.call

    def cleanup() -> None:
        generations.cancel()
        call.completion_tokens = sum(c.completion_tokens for c in choices)

    async def events() -> AsyncIterator[str]:
        for c in choices:
            if shape.chat:
                yield shape.event([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            elif echo is not None:
                yield shape.event([shape.delta(c.index, {"content": echo(c.index)}, None)])
        while any(c.finish_reason is None for c in choices):
            # Every chunk already waiting goes out in one write, each still its own event: when the
            # engine runs ahead of the client, the event loop does one send, not one per token.
            batch: list[str] = []
            while True:
                try:
                    index, chunk = await generations.next()
                except APIError:
                    if batch:  # what came before the failure still reaches the client
                        yield "".join(batch)
                    raise
                pieces = absorb(choices[index], chunk)
                if chunk.logprobs and not pieces:  # held text (a call may be starting): its logprobs still go out
                    pieces = [{}]
                for k, piece in enumerate(pieces):
                    batch.append(shape.event([shape.delta(index, piece, None, chunk.logprobs if k == 0 else ())]))
                if chunk.finish_reason is not None:
                    last = all(c.finish_reason is not None for c in choices)  # a source's extra fields go on the last
                    batch.append(shape.event([shape.delta(index, None, choices[index].finish_reason)],
                                             **(generations.extra if last else {})))
                if not generations.ready() or all(c.finish_reason is not None for c in choices):
                    break
            if batch:
                yield "".join(batch)
        account(server, call, choices)
        if include_usage:
            yield shape.event([], usage=usage(call))

    async for line in guarded_stream(server, call, events(), cleanup):
        yield line
