"""/v1/chat/completions and /v1/completions: turn a request into sequences on a model's engine.

Every choice of every request is one sequence on the engine; the engine's thread hands each Chunk
to the request's queue, and kecil/serve/reply.py turns that into OpenAI's response or its event
stream. A client that disconnects, or a request that outlives its timeout, cancels its sequences
at once, which frees their decode slots.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from fastapi import Request

from kecil.errors import KecilError, UnsupportedError
from kecil.infer.engine import SamplingExtras
from kecil.infer.generation import GenerationConfig
from kecil.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest
from kecil.serve.reply import Call, Choice, Generations, respond

log = logging.getLogger("kecil.serve")


def generation_config(body, engine, limit: int) -> GenerationConfig:
    """The request's sampling settings; where it is silent, GenerationConfig's defaults (kecil's,
    tuned for small models) hold."""
    requested = body.answer_limit() if isinstance(body, ChatCompletionRequest) else body.max_tokens
    if requested is not None and requested > limit:
        raise APIError(400, f"max_tokens is {requested} but this server answers with at most {limit} tokens "
                       f"({engine.ref.name}'s context is {engine.context_length} tokens, prompt included)", param="max_tokens")
    sampling = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
                "repetition_penalty": body.repetition_penalty}
    try:
        return GenerationConfig(
            max_tokens=requested or engine.context_length,
            stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
            seed=body.seed,
            ignore_eos=body.ignore_eos,
            **{name: value for name, value in sampling.items() if value is not None},
        )
    except KecilError as exc:
        raise APIError(400, str(exc)) from None


def start(generations: Generations, engine, prompt_ids: list[int], config: GenerationConfig, extras, index: int) -> None:
    """Submit choice `index` to the engine, unless its queue is full (429)."""
    server, call = generations.server, generations.call
    running, waiting = engine.load
    if running >= engine.parallel and waiting >= server.config.max_queue:
        raise APIError(429, f"{call.model} is busy: {running} requests running and {waiting} waiting; retry shortly",
                       type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
    try:
        generations.handles.append(engine.submit(prompt_ids, config, generations.emitter(index), extras))
    except UnsupportedError as exc:  # a grammar or logprobs on an engine without them
        generations.cancel()
        raise APIError(400, str(exc)) from None
    except KecilError as exc:  # a prompt too long for the context: both numbers, never truncated
        generations.cancel()
        raise APIError(400, str(exc), code="context_length_exceeded", param="messages") from None


def prepare_chat(engine, body: ChatCompletionRequest) -> tuple[list[int], Any]:
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
    generations = Generations(server, call)
    choices = []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            index = p * body.n + j
            seeded = config if config.seed is None else replace(config, seed=config.seed + j)
            start(generations, engine, ids, seeded, extras, index)
            choices.append(Choice(index))
    call.prompt_tokens = sum(len(ids) for ids in prompts)
    if server.config.log_requests:
        log.info("request %s %s prompt=%s", call.id, call.endpoint, json.dumps(body.model_dump(mode="json"), ensure_ascii=False))
    echo = (lambda index: body.prompt[index // body.n]) if kind == "completion" and body.echo else None
    return await respond(server, request, body, call, kind, generations, choices, echo)
