"""Answers from a knowledge base through the chat endpoint: model "rag:NAME" (answered by the
server's first model) or any model with the extension field "kb": "NAME".

The last user message is the question; kecil.rag retrieves, the model answers from the numbered
chunks, and the response carries the citations (an extension field, `citations`, that OpenAI
clients pass through). Retrieval and generation run in a worker thread (SQLite and the embedder
are blocking); the generation itself joins the model's continuous batch like any request.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from fastapi import Request

from kecil.errors import ConfigError, KecilError, KnowledgeBaseError
from kecil.infer.generation import Chunk
from kecil.serve.completions import admit, check_size
from kecil.serve.protocol import APIError, ChatCompletionRequest
from kecil.serve.reply import Call, Choice, Generations, respond

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


def grounding(answer: Answer, root: str | None = None) -> dict:
    """What a knowledge-base reply adds to an OpenAI chat completion, streamed or not. Cited
    files are named relative to `root` (the folder the knowledge base was ingested from): the
    server's own paths are no business of its clients."""
    fields = answer.as_dict()
    for citation in fields["citations"]:
        citation["file"] = relative_to(citation["file"], root)
    return {key: fields[key] for key in ("citations", "answered", "withheld")}


def ingested_root(paths) -> str | None:
    """The folder holding every stored file: what was ingested (or the deepest folder in it that
    holds them all)."""
    folders = [os.path.dirname(p) for p in paths]
    try:
        return os.path.commonpath(folders) if folders else None
    except ValueError:  # relative and absolute paths mixed: nothing in common
        return None


def relative_to(path: str, root: str | None) -> str:
    if root and os.path.isabs(path):
        relative = os.path.relpath(path, root)
        if not relative.startswith(".."):
            return relative
    return os.path.basename(path) if os.path.isabs(path) else path


class _Stop:
    """The retrieval worker's cancel handle: it stops at the next piece of the answer."""

    def __init__(self):
        self.event = threading.Event()

    def cancel(self) -> None:
        self.event.set()


async def run_rag(server, request: Request, body: ChatCompletionRequest, call: Call):
    from kecil.rag.ask import AskConfig

    kb = body.kb if body.kb is not None else body.model[len(PREFIX):]
    model = body.model if body.kb is not None else server.pool.default
    if body.n != 1 or body.logprobs or body.response_format is not None or body.tools:
        raise APIError(400, "knowledge-base answers support n=1 and plain text only (no logprobs, response_format or tools)")
    check_size(server, body, "chat")
    questions = [m.text() for m in body.messages if m.role == "user"]
    if not questions or not questions[-1].strip():
        raise APIError(400, "a knowledge-base request needs a user message with the question", param="messages")
    engine = await server.pool.get(model)
    admit(server, engine, call, 1)
    try:
        config = AskConfig(max_tokens=body.answer_limit() or 256, temperature=body.temperature or 0.0)
    except ConfigError as exc:
        raise APIError(400, str(exc)) from None
    generations = Generations(server, call)
    stop = _Stop()
    generations.handles.append(stop)
    emit = generations.emitter(0)

    def work() -> None:  # on a worker thread: SQLite and the embedder block
        from kecil.rag.ask import Answer, stream_ask
        from kecil.rag.retrieve import Retriever

        try:
            retriever = Retriever(kb, embedder=server.pool.any_embedder(_kb_embedder(kb)))
            try:
                root = ingested_root(retriever.kb.files())
                stream = stream_ask(questions[-1], retriever, model=engine, config=config)
                for piece in stream:
                    if stop.event.is_set():
                        stream.close()
                        break
                    if isinstance(piece, Answer):
                        generations.extra = grounding(piece, root)
                        if piece.usage is not None:
                            call.prompt_tokens = piece.usage.prompt_tokens
                        emit(Chunk("", finish_reason="stop", usage=piece.usage))
                    else:
                        emit(Chunk(piece))
            finally:
                retriever.close()
        except KnowledgeBaseError as exc:
            generations.fail(APIError(404, str(exc), code="kb_not_found", param="kb"))
        except KecilError as exc:
            generations.fail(APIError(400, str(exc)))
        except Exception as exc:  # reported, never a silent hang
            generations.fail(APIError(500, f"knowledge-base answer failed ({type(exc).__name__})", type="server_error"))

    threading.Thread(target=work, name="kecil-rag", daemon=True).start()
    return await respond(server, request, body, call, "chat", generations, [Choice(0)])


def _kb_embedder(kb: str) -> str:
    from kecil.rag.store import KnowledgeBase

    with KnowledgeBase.open(kb) as opened:
        return opened.embedder_name
