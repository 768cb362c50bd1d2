"""/v1/chat/completions and /v1/completions: turn a request into sequences on an engine, then
into OpenAI's response or its server-sent-event stream.

Every choice of every request is one sequence on the model's engine; the engine's thread hands
each Chunk to this event loop through a queue. A client that disconnects, or a request that
outlives its timeout, cancels its sequences at once, which frees their decode slots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from kecil.errors import KecilError
from kecil.infer.generation import Chunk, GenerationConfig
from kecil.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest

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


@dataclass
class Choice:
    index: int
    text: list[str] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


def generation_config(body, engine, limit: int) -> GenerationConfig:
    """kecil's sampling defaults (tuned for small models) where the request is silent."""
    requested = body.answer_limit() if isinstance(body, ChatCompletionRequest) else body.max_tokens
    if requested is not None and requested > limit:
        raise APIError(400, f"max_tokens is {requested} but this server answers with at most {limit} tokens "
                       f"({engine.ref.name}'s context is {engine.context_length} tokens, prompt included)", param="max_tokens")
    try:
        return GenerationConfig(
            max_tokens=requested or engine.context_length,
            temperature=0.7 if body.temperature is None else body.temperature,
            top_p=0.95 if body.top_p is None else body.top_p,
            top_k=40 if body.top_k is None else body.top_k,
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
            seed=body.seed,
            ignore_eos=body.ignore_eos,
        )
    except KecilError as exc:
        raise APIError(400, str(exc)) from None


class Generations:
    """The sequences of one request, all feeding one queue as (choice index, Chunk)."""

    def __init__(self, server, engine, call: Call, deadline: float):
        self.server, self.engine, self.call, self.deadline = server, engine, call, deadline
        self.queue: asyncio.Queue[tuple[int, Chunk]] = asyncio.Queue()
        self.handles: list = []
        self.loop = asyncio.get_running_loop()
        self.checked = time.monotonic()  # when the client's connection was last checked

    def start(self, prompt_ids: list[int], config: GenerationConfig, extras, index: int) -> None:
        running, waiting = self.engine.load
        if running >= self.engine.parallel and waiting >= self.server.config.max_queue:
            raise APIError(429, f"{self.call.model} is busy: {running} requests running and {waiting} waiting; retry shortly",
                           type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})

        def emit(chunk: Chunk, index=index) -> None:  # called on the engine's thread
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, chunk))

        try:
            self.handles.append(self.engine.submit(prompt_ids, config, emit, extras))
        except KecilError as exc:  # a prompt too long for the context: both numbers, never truncated
            self.cancel()
            raise APIError(400, str(exc), code="context_length_exceeded", param="messages") from None

    async def next(self, request: Request | None = None) -> tuple[int, Chunk]:
        """The next chunk of any choice; raises on timeout or (when `request` is given) disconnect."""
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
            if self.call.first_token is None:
                self.call.first_token = time.perf_counter()
            index, chunk = item
            if chunk.finish_reason == "error":
                raise APIError(503, chunk.error or "the model failed", type="server_error", code="model_error")
            return item

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()


class ClientGone(Exception):
    """The client closed the connection; its sequences are cancelled and nothing is sent."""


def prepare_chat(engine, body: ChatCompletionRequest) -> tuple[list[int], Any]:
    from kecil.infer.llamacpp_batched import SamplingExtras

    if body.tools:
        raise APIError(400, "tool calling is not supported by kecil serve yet; send plain messages", param="tools")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        prompt_ids = engine.chat_prompt_ids(messages)
    except KecilError as exc:  # no chat template, or one that refuses the conversation
        raise APIError(400, str(exc), param="messages") from None
    grammar = None
    if body.response_format is not None and body.response_format.type != "text":
        from kecil.infer.grammar import json_grammar

        schema = body.response_format.json_schema.schema_ if body.response_format.json_schema else None
        if body.response_format.type == "json_schema" and schema is None:
            raise APIError(400, "response_format json_schema needs a json_schema.schema object", param="response_format")
        try:
            grammar = json_grammar(schema)
        except KecilError as exc:
            raise APIError(400, str(exc), param="response_format") from None
    top = body.top_logprobs or 0
    if top and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    extras = SamplingExtras(body.frequency_penalty, body.presence_penalty, grammar, body.logprobs, top)
    return prompt_ids, extras


def prepare_completion(engine, body: CompletionRequest) -> tuple[list[list[int]], Any]:
    from kecil.infer.llamacpp_batched import SamplingExtras

    if body.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported; put the whole text in prompt", param="suffix")
    prompts = [engine.tokenize(p, add_bos=engine.adds_bos) for p in body.prompt]
    if any(not ids for ids in prompts):
        raise APIError(400, "a prompt is empty: there is nothing to continue", param="prompt")
    logprobs = body.logprobs is not None
    extras = SamplingExtras(body.frequency_penalty, body.presence_penalty, None, logprobs, body.logprobs or 0)
    return prompts, extras


async def run_generation(server, request: Request, body, call: Call, kind: str):
    """Start every choice of the request and answer as JSON or as an event stream."""
    engine = await server.pool.get(body.model)
    limit = server.config.max_tokens_limit or engine.context_length
    config = generation_config(body, engine, limit)
    if kind == "chat":
        prompt_ids, extras = prepare_chat(engine, body)
        prompts = [prompt_ids]
    else:
        prompts, extras = prepare_completion(engine, body)
    generations = Generations(server, engine, call, time.monotonic() + server.config.request_timeout)
    choices = []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            index = p * body.n + j
            seeded = config if config.seed is None else replace(config, seed=config.seed + j)
            generations.start(ids, seeded, extras, index)
            choices.append(Choice(index))
    call.prompt_tokens = sum(len(ids) for ids in prompts)
    if server.config.log_requests:
        log.info("request %s %s prompt=%s", call.id, call.endpoint, json.dumps(body.model_dump(mode="json"), ensure_ascii=False))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = stream_events(server, generations, choices, call, kind, include_usage, body)
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
    call.completion_tokens = sum(c.completion_tokens for c in choices)
    if kind == "completion" and body.echo:
        for c in choices:
            c.text.insert(0, body.prompt[c.index // body.n])
    if server.config.log_requests:
        log.info("response %s %s", call.id, json.dumps(["".join(c.text) for c in choices], ensure_ascii=False))
    response = JSONResponse(full_response(choices, call, kind, body))
    server.finish(call)
    return response


def absorb(choice: Choice, chunk: Chunk) -> None:
    if chunk.text:
        choice.text.append(chunk.text)
    choice.logprobs.extend(chunk.logprobs)
    if chunk.finish_reason is not None:
        choice.finish_reason = chunk.finish_reason
        choice.completion_tokens = chunk.usage.completion_tokens if chunk.usage else 0


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


def full_response(choices: list[Choice], call: Call, kind: str, body) -> dict:
    created = int(time.time())
    if kind == "chat":
        return {
            "id": f"chatcmpl-{call.id}", "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": c.index, "message": {"role": "assistant", "content": "".join(c.text)},
                         "logprobs": chat_logprobs(c.logprobs) if body.logprobs else None,
                         "finish_reason": c.finish_reason} for c in choices],
            "usage": usage(call),
        }
    return {
        "id": f"cmpl-{call.id}", "object": "text_completion", "created": created, "model": body.model,
        "choices": [{"index": c.index, "text": "".join(c.text),
                     "logprobs": completion_logprobs(c.logprobs) if body.logprobs is not None else None,
                     "finish_reason": c.finish_reason} for c in choices],
        "usage": usage(call),
    }


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
    finally:
        cleanup()
        server.finish(call)
    yield "data: [DONE]\n\n"


async def stream_events(server, generations: Generations, choices: list[Choice], call: Call, kind: str,
                        include_usage: bool, body) -> AsyncIterator[str]:
    created = int(time.time())
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def event(choice_list: list[dict], **extra) -> str:
        payload = {"id": prefix + call.id, "object": obj, "created": created, "model": body.model,
                   "choices": choice_list, **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def delta(index: int, text: str | None, finish: str | None, entries=()) -> dict:
        if kind == "chat":
            d = {"index": index, "delta": {} if text is None else {"content": text}, "finish_reason": finish}
            if body.logprobs:
                d["logprobs"] = chat_logprobs(entries) if entries else None
            return d
        d = {"index": index, "text": text or "", "finish_reason": finish}
        if body.logprobs is not None:
            d["logprobs"] = completion_logprobs(entries) if entries else None
        return d

    def cleanup() -> None:
        generations.cancel()
        call.completion_tokens = sum(c.completion_tokens for c in choices)

    async def events() -> AsyncIterator[str]:
        for c in choices:
            if kind == "chat":
                yield event([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            elif body.echo:
                yield event([delta(c.index, body.prompt[c.index // body.n], None)])
        while any(c.finish_reason is None for c in choices):
            index, chunk = await generations.next()
            absorb(choices[index], chunk)
            if chunk.text or chunk.logprobs:
                yield event([delta(index, chunk.text, None, chunk.logprobs)])
            if chunk.finish_reason is not None:
                yield event([delta(index, None, chunk.finish_reason)])
        call.completion_tokens = sum(c.completion_tokens for c in choices)
        if include_usage:
            yield event([], usage=usage(call))
        if server.config.log_requests:
            log.info("response %s %s", call.id, json.dumps(["".join(c.text) for c in choices], ensure_ascii=False))

    async for line in guarded_stream(server, call, events(), cleanup):
        yield line
