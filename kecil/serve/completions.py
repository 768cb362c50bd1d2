"""/v1/chat/completions and /v1/completions: turn a request into sequences on a model's engine.

Every choice of every request is one sequence on the engine; the engine's thread hands each Chunk
to the request's queue, and kecil/serve/reply.py turns that into OpenAI's response or its event
stream. A client that disconnects, or a request that outlives its timeout, cancels its sequences
at once, which frees their decode slots.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any

from fastapi import Request

from kecil.errors import KecilError, UnsupportedError
from kecil.infer.engine import SamplingExtras
from kecil.infer.generation import GenerationConfig
from kecil.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest
from kecil.serve.reply import Call, CallReader, Choice, Generations, respond

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


def admit(server, engine, call: Call, count: int) -> None:
    """Refuse, before any starts, a request whose `count` sequences would not all fit in the
    model's decode slots and queue: all of a request is taken, or none of it (429, or 400 when it
    could never fit). A request is counted as many times as it has sequences."""
    capacity = engine.parallel + server.config.max_queue
    if count > capacity:
        raise APIError(400, f"this request asks for {count} sequences (prompts × n) but {call.model} takes at most "
                       f"{capacity} at once ({engine.parallel} running and {server.config.max_queue} waiting): "
                       "send fewer prompts or a smaller n", param="prompt" if call.endpoint == "/v1/completions" else "n")
    running, waiting = engine.load
    if running + waiting + count > capacity:
        raise APIError(429, f"{call.model} is busy: {running} requests running and {waiting} waiting; retry shortly",
                       type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})


def start(generations: Generations, engine, prompt_ids: list[int], config: GenerationConfig, extras, index: int) -> None:
    """Submit choice `index` to the engine (after `admit` took the whole request)."""
    try:
        generations.handles.append(engine.submit(prompt_ids, config, generations.emitter(index), extras))
    except UnsupportedError as exc:  # a grammar or logprobs on an engine without them
        generations.cancel()
        raise APIError(400, str(exc)) from None
    except KecilError as exc:  # a prompt too long for the context: both numbers, never truncated
        generations.cancel()
        raise APIError(400, str(exc), code="context_length_exceeded", param="messages") from None


def check_size(server, body, kind: str) -> None:
    """Bound what one request may ask the server to prepare (before any of it is)."""
    config = server.config
    if kind == "chat" and len(body.messages) > config.max_messages:
        raise APIError(400, f"the conversation has {len(body.messages)} messages; this server takes at most "
                       f"{config.max_messages} per request: send the recent part of it", param="messages")
    if kind == "completion" and len(body.prompt) > config.max_prompts:
        raise APIError(400, f"the request has {len(body.prompt)} prompts; this server takes at most "
                       f"{config.max_prompts} per request: split them over several requests", param="prompt")


def prepare_chat(engine, body: ChatCompletionRequest) -> tuple[list[int], Any, Any]:
    """The prompt's token ids, the sampling extras, and how the answer deals with tools (None:
    the request offers none)."""
    from kecil.serve.tools import template_message, tool_use

    tools = tool_use(engine, body)
    messages = [template_message(i, m) for i, m in enumerate(body.messages)]
    try:
        prompt_ids = engine.chat_prompt_ids(messages, tools.offered if tools else None)
    except KecilError as exc:  # no chat template, or one that refuses the conversation
        raise APIError(400, str(exc), param="messages") from None
    grammar, triggers = None, ()
    if tools is not None and tools.calls:
        grammar, triggers = tools.grammar.gbnf, tools.grammar.triggers
    elif body.response_format is not None and body.response_format.type != "text":
        from kecil.infer.grammar import json_grammar

        schema = body.response_format.json_schema.schema_ if body.response_format.json_schema else None
        if body.response_format.type == "json_schema" and schema is None:
            raise APIError(400, "response_format json_schema needs a json_schema.schema object", param="response_format")
        try:
            grammar = json_grammar(schema, "response_format.json_schema.schema")
        except KecilError as exc:
            raise APIError(400, str(exc), param="response_format") from None
    top = body.top_logprobs or 0
    if top and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    extras = SamplingExtras(body.frequency_penalty, body.presence_penalty, grammar, body.logprobs, top, grammar_triggers=triggers)
    return prompt_ids, extras, tools


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
    check_size(server, body, kind)
    if body.model not in server.pool.refs:
        raise server.unknown_model(body.model)
    engine = await server.pool.get(body.model)
    count = (1 if kind == "chat" else len(body.prompt)) * body.n
    admit(server, engine, call, count)  # refused before the work of preparing it
    limit = server.config.max_tokens_limit or engine.context_length
    config = generation_config(body, engine, limit)
    # Rendering the template, tokenizing and building a grammar take seconds for a large request:
    # on a worker thread, so the event loop (every other client, /health) is never held up by it.
    tools = None
    if kind == "chat":
        prompt_ids, extras, tools = await asyncio.to_thread(prepare_chat, engine, body)
        prompts = [prompt_ids]
    else:
        prompts, extras = await asyncio.to_thread(prepare_completion, engine, body)
    admit(server, engine, call, count)  # again: others may have been admitted while this was prepared
    generations = Generations(server, call)
    choices = []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            index = p * body.n + j
            seeded = config if config.seed is None else replace(config, seed=config.seed + j)
            start(generations, engine, ids, seeded, extras, index)
            choices.append(Choice(index, calls=CallReader() if tools is not None and tools.calls else None))
    call.prompt_tokens = sum(len(ids) for ids in prompts)
    if server.config.log_requests:
        log.info("request %s %s prompt=%s", call.id, call.endpoint, json.dumps(body.model_dump(mode="json"), ensure_ascii=False))
    echo = (lambda index: body.prompt[index // body.n]) if kind == "completion" and body.echo else None
    return await respond(server, request, body, call, kind, generations, choices, echo)
