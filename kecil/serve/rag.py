"""Answers from a knowledge base through the chat endpoint: model "rag:NAME" (answered by the
server's first model) or any model with the extension field "kb": "NAME".

The last user message is the question; kecil.rag retrieves, the model answers from the numbered
chunks, and the response carries the citations (an extension field, `citations`, that OpenAI
clients pass through). Retrieval and generation run in a worker thread (SQLite and the embedder
are blocking); the generation itself joins the model's continuous batch like any request.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from kecil.errors import ConfigError, KecilError, KnowledgeBaseError
from kecil.serve.completions import Call, guarded_stream, usage
from kecil.serve.pool import SerialEngine
from kecil.serve.protocol import APIError, ChatCompletionRequest

if TYPE_CHECKING:
    from kecil.rag.ask import Answer

PREFIX = "rag:"


def wants_rag(body: ChatCompletionRequest) -> bool:
    return body.model.startswith(PREFIX) or body.kb is not None


def knowledge_bases() -> list[str]:
    try:
        from kecil.rag.store import list_kbs
    except ImportError:
        return []
    return list_kbs()


def grounding(answer: Answer) -> dict:
    """What a knowledge-base reply adds to an OpenAI chat completion, streamed or not."""
    fields = answer.as_dict()
    return {key: fields[key] for key in ("citations", "answered", "withheld")}


async def run_rag(server, request: Request, body: ChatCompletionRequest, call: Call):
    from kecil.rag.ask import AskConfig, Answer

    kb = body.kb if body.kb is not None else body.model[len(PREFIX):]
    model = body.model if body.kb is not None else server.pool.default
    if body.n != 1 or body.logprobs or body.response_format is not None or body.tools:
        raise APIError(400, "knowledge-base answers support n=1 and plain text only (no logprobs, response_format or tools)")
    questions = [m.text() for m in body.messages if m.role == "user"]
    if not questions or not questions[-1].strip():
        raise APIError(400, "a knowledge-base request needs a user message with the question", param="messages")
    engine = await server.pool.get(model)
    if isinstance(engine, SerialEngine):
        raise APIError(400, f"knowledge-base answers need a GGUF model; {model} runs on the torch backend")
    try:
        config = AskConfig(max_tokens=body.answer_limit() or 256, temperature=body.temperature or 0.0)
    except ConfigError as exc:
        raise APIError(400, str(exc)) from None
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def work() -> None:  # on a worker thread
        from kecil.rag.ask import stream_ask
        from kecil.rag.retrieve import Retriever

        try:
            retriever = Retriever(kb, embedder=server.pool.any_embedder(_kb_embedder(kb)))
            try:
                stream = stream_ask(questions[-1], retriever, model=engine, config=config)
                for piece in stream:
                    if stop.is_set():
                        stream.close()
                        break
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
            finally:
                retriever.close()
        except KnowledgeBaseError as exc:
            loop.call_soon_threadsafe(pieces.put_nowait, APIError(404, str(exc), code="kb_not_found", param="kb"))
        except KecilError as exc:
            loop.call_soon_threadsafe(pieces.put_nowait, APIError(400, str(exc)))
        except Exception as exc:  # reported, never a silent hang
            loop.call_soon_threadsafe(pieces.put_nowait, APIError(500, f"knowledge-base answer failed ({type(exc).__name__})", type="server_error"))

    threading.Thread(target=work, name="kecil-rag", daemon=True).start()
    deadline = time.monotonic() + server.config.request_timeout

    async def next_piece():
        remaining = deadline - time.monotonic()
        try:
            piece = await asyncio.wait_for(pieces.get(), max(remaining, 0.001))
        except (asyncio.TimeoutError, TimeoutError):
            stop.set()
            raise APIError(504, f"the request took longer than the server's timeout of {server.config.request_timeout:g} s",
                           type="server_error", code="timeout") from None
        if isinstance(piece, APIError):
            raise piece
        if call.first_token is None:
            call.first_token = time.perf_counter()
        return piece

    def record(answer: Answer) -> None:
        if answer.usage is not None:
            call.prompt_tokens, call.completion_tokens = answer.usage.prompt_tokens, answer.usage.completion_tokens

    created = int(time.time())
    if not body.stream:
        try:
            while not isinstance(piece := await next_piece(), Answer):
                pass
        except BaseException:
            stop.set()
            raise
        record(piece)
        server.finish(call)
        return JSONResponse({
            "id": f"chatcmpl-{call.id}", "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": piece.text}, "logprobs": None,
                         "finish_reason": "stop"}],
            **grounding(piece), "usage": usage(call),
        })

    def event(payload: dict) -> str:
        base = {"id": f"chatcmpl-{call.id}", "object": "chat.completion.chunk", "created": created, "model": body.model}
        return f"data: {json.dumps({**base, **payload}, ensure_ascii=False)}\n\n"

    async def events():
        yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        while not isinstance(piece := await next_piece(), Answer):
            yield event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        record(piece)
        yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **grounding(piece)})
        if body.stream_options and body.stream_options.include_usage:
            yield event({"choices": [], "usage": usage(call)})

    return StreamingResponse(guarded_stream(server, call, events(), stop.set), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _kb_embedder(kb: str) -> str:
    from kecil.rag.store import KnowledgeBase

    with KnowledgeBase.open(kb) as opened:
        return opened.embedder_name

