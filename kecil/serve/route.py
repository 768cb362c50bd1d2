"""Routed answers through the chat endpoint: `kecil serve --route FILE` offers the model
"route:NAME", answered by kecil.route (small model first, escalated when unsure and allowed).

The reply says who answered and why, in the extension field `route` (with `routed_to` also at the
top level) and in headers (X-Kecil-Routed-To, X-Kecil-Confidence, X-Kecil-Redacted), so a client
that only reads headers, or only the body, sees it. Every escalation gets an audit line: the
route, the target and the counts of redacted entities by kind, never text.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import Request

from kecil.errors import BackendError, ConfigError
from kecil.infer.generation import Chunk, Usage
from kecil.serve.protocol import APIError, ChatCompletionRequest
from kecil.serve.reply import Call, Choice, Generations, respond

log = logging.getLogger("kecil.serve")
PREFIX = "route:"


def load_routes(paths: tuple[Path, ...], pool) -> dict[str, tuple]:
    """Route name -> (the route file, {tier MODEL: the pool's name for it}); each local tier's
    model joins the pool (loaded on first use, within the memory budget like any model)."""
    from kecil.models.reference import resolve
    from kecil.route.routefile import load_route
    from kecil.serve.pool import served_name

    routes: dict[str, tuple] = {}
    for path in paths:
        plan = load_route(path)
        if plan.name in routes:
            raise ConfigError(f"two route files are both named {plan.name!r}: rename one (its \"name\")")
        names = {}
        for tier in plan.tiers:
            if tier.model is not None:
                ref = resolve(tier.model)
                name = served_name(ref)
                pool.refs.setdefault(name, ref)
                names[tier.model] = name
        routes[plan.name] = (plan, names)
    return routes


def wants_route(body: ChatCompletionRequest) -> bool:
    return body.model.startswith(PREFIX)


async def run_route(server, request: Request, body: ChatCompletionRequest, call: Call):
    from kecil.route.router import RouteRequest, route

    name = body.model[len(PREFIX):]
    if name not in server.routes_served:
        served = ", ".join(PREFIX + n for n in server.routes_served) or "none (start with --route FILE)"
        raise APIError(404, f"the route {name!r} is not served here; routes: {served}", code="model_not_found", param="model")
    if body.n != 1 or body.logprobs or body.response_format is not None or body.tools:
        raise APIError(400, "routed answers support n=1 and plain text only (no logprobs, response_format or tools)")
    plan, names = server.routes_served[name]
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        options = RouteRequest(escalate=body.escalate or "all", timeout=server.config.request_timeout,
                               max_tokens=body.answer_limit(), temperature=body.temperature or 0.0)
    except ConfigError as exc:
        raise APIError(400, str(exc)) from None
    loop = asyncio.get_running_loop()

    def open_model(model: str):
        """A tier's engine from the pool, from the router's worker thread."""
        try:
            return asyncio.run_coroutine_threadsafe(server.pool.get(names[model]), loop).result(options.timeout)
        except APIError as exc:  # e.g. no memory for the larger model: the router keeps the answer it has
            raise BackendError(exc.message) from None

    def audit(entry: dict) -> None:
        try:
            server.audit.record(request=call.id, caller=call.caller, **entry)
        except OSError as exc:
            log.error("could not write the audit log %s: %s", server.audit.path, exc)

    routed = await asyncio.to_thread(route, plan, messages, open_model=open_model, request=options, audit=audit)
    call.prompt_tokens = routed.prompt_tokens
    generations = Generations(server, call)
    generations.extra = {"routed_to": routed.routed_to, "route": routed.fields()}
    generations.emitter(0)(Chunk(routed.text, finish_reason="stop", usage=Usage(routed.prompt_tokens, routed.completion_tokens)))
    response = await respond(server, request, body, call, "chat", generations, [Choice(0)])
    response.headers["X-Kecil-Routed-To"] = routed.routed_to
    response.headers["X-Kecil-Confidence"] = "" if routed.confidence is None else f"{routed.confidence:.4f}"
    response.headers["X-Kecil-Redacted"] = "true" if routed.redacted else "false"
    return response
