"""The FastAPI application of `kecil serve`: routes, the OpenAI error format for every failure,
health and readiness probes, metrics, and the audit trail of each request."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kecil.errors import ConfigError, KecilError, PromptTooLongError
from kecil.serve.completions import run_generation
from kecil.serve.config import ServeConfig
from kecil.serve.metrics import Metrics
from kecil.serve.pool import ModelPool
from kecil.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from kecil.serve.rag import PREFIX, knowledge_bases, run_rag, wants_rag
from kecil.serve.reply import Call
from kecil.serve.route import PREFIX as ROUTE_PREFIX
from kecil.serve.route import load_routes, run_route, wants_route
from kecil.serve.security import AuditLog, GuardMiddleware, is_open

log = logging.getLogger("kecil.serve")
STATUS_TYPES = {401: "authentication_error", 404: "invalid_request_error", 405: "invalid_request_error",
                413: "invalid_request_error", 429: "rate_limit_error"}
OTHER = "other"  # the one metrics label of every path and model the server does not serve
MAX_AUDITED_NAME = 200  # characters of a requested model name kept in the audit log


@dataclass
class Server:
    """What the routes share: settings, models, metrics and the audit log."""

    config: ServeConfig
    pool: ModelPool
    metrics: Metrics
    audit: AuditLog
    ready: bool = False
    load_error: str | None = None

    routes: list = field(default_factory=list)  # the app's routes, for the endpoint label of a request
    routes_served: dict = field(default_factory=dict)  # route name -> (route file, its models' pool names): route:NAME

    def served_models(self) -> list[dict]:
        """/v1/models' entries: chat models, the embedding model, the knowledge bases and the routes."""
        pool, config = self.pool, self.config

        def entry(name: str, kind: str, loaded: bool) -> dict:
            return {"id": name, "object": "model", "created": 0, "owned_by": "kecil", "kind": kind, "loaded": loaded}

        entries = [entry(name, "chat", pool.is_loaded(name)) for name in pool.refs]
        if config.embedding_model:
            entries.append(entry(config.embedding_model, "embedding", config.embedding_model in pool._embedders))
        entries += [entry(PREFIX + kb, "knowledge-base", pool.is_loaded(pool.default)) for kb in knowledge_bases()]
        entries += [entry(ROUTE_PREFIX + name, "route", pool.is_loaded(names[plan.tiers[0].model]))
                    for name, (plan, names) in self.routes_served.items()]
        return entries

    def unknown_model(self, name: str) -> APIError:
        """The 404 for a model this server does not have, naming every one it does (of every kind)."""
        served = ", ".join(e["id"] for e in self.served_models() if e["kind"] != "embedding")
        return APIError(404, f"the model {name!r} is not served here; models: {served}", code="model_not_found", param="model")

    def finish(self, call: Call) -> None:
        """Account for a finished request, once: metrics and one audit line (no content)."""
        if call.finished:
            return
        call.finished = True
        elapsed = time.perf_counter() - call.started
        m, model = self.metrics, self.model_label(call.model)
        m.requests.labels(call.endpoint, model, str(call.status)).inc()
        m.latency.labels(call.endpoint, model).observe(elapsed)
        m.prompt_tokens.labels(model).inc(call.prompt_tokens)
        m.completion_tokens.labels(model).inc(call.completion_tokens)
        if call.first_token is not None:
            m.ttft.labels(model).observe(call.first_token - call.started)
        try:
            self.audit.record(request=call.id, caller=call.caller, client=call.client, endpoint=call.endpoint,
                              model=call.model[:MAX_AUDITED_NAME], status=call.status, stream=call.stream,
                              prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens,
                              duration_ms=round(elapsed * 1000, 1))
        except OSError as exc:  # a full disk must not turn answered requests into errors
            log.error("could not write the audit log %s: %s", self.audit.path, exc)

    def model_label(self, name: str) -> str:
        """A metrics label for `name`: a model this server serves, else "other" — so labels stay
        few, whatever clients send (each label value is a time series kept for the process's life)."""
        if not name:
            return ""
        if self.pool.serves_embedding(name):
            name = self.config.embedding_model  # one label whatever the case it was asked in
        elif name not in self.pool.refs and not (name.startswith(PREFIX) and name[len(PREFIX):] in knowledge_bases()) \
                and not (name.startswith(ROUTE_PREFIX) and name[len(ROUTE_PREFIX):] in self.routes_served):
            return OTHER
        return name.encode("utf-8", errors="backslashreplace").decode("utf-8")  # file names may hold undecodable bytes

    def done(self, scope, status: int) -> None:
        """Account for a request no route finished (refused, failed, or a listing): every request
        gets its audit line. Probes are not audited (an orchestrator polls them all day), nor are the
        web page's static files."""
        if is_open(scope["path"]):
            return
        state = scope.get("state", {})
        call = state.get("call")
        if call is None:
            client = scope.get("client")
            call = Call(endpoint=route_template(self.routes, scope), model="", caller=state.get("caller", "anonymous"),
                        client=client[0] if client else "", started=state.get("started", time.perf_counter()))
        call.status = status
        self.finish(call)


def route_template(routes, scope) -> str:
    """The route a request went to, as its template ("/v1/models/{model_id:path}"), or "other"."""
    from starlette.routing import Match

    for route in routes:
        if route.matches(scope)[0] != Match.NONE:
            return route.path
    return OTHER


def create_app(config: ServeConfig) -> FastAPI:
    """A ready-to-run app; model names are resolved now, so a bad one fails before serving."""
    from kecil.paths import kecil_home

    pool = ModelPool(config)
    routes_served = load_routes(config.routes, pool)  # a bad route file fails before serving, as a bad model name does
    server = Server(config, pool, Metrics(pool), AuditLog(config.audit_log or kecil_home() / "serve" / "audit.jsonl"),
                    routes_served=routes_served)

    async def preload() -> None:
        try:
            await pool.get(pool.default)
            server.ready = True
        except (APIError, KecilError) as exc:
            server.load_error = str(exc)
            log.error("could not load %s: %s", pool.default, exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(preload()) if config.preload else None
        if task is None:
            server.ready = True
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            await asyncio.to_thread(pool.close)
            server.audit.close()

    app = FastAPI(title="kecil", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(GuardMiddleware, keys=config.api_keys, max_body=config.max_body_bytes, send_error=_send_error,
                       on_done=server.done)
    _errors(app, server)
    _routes(app, server)
    server.routes = app.routes  # the live list: a route added later is labelled too
    return app


def _version() -> str:
    from kecil import __version__

    return __version__


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _send_error(scope, send, error: APIError) -> None:
    async def no_body():
        return {"type": "http.request", "body": b"", "more_body": False}

    await _error_response(error)(scope, no_body, send)


def _errors(app: FastAPI, server: Server) -> None:
    """Every failure leaves as OpenAI's error object, and the server keeps serving (the guard
    middleware accounts for it once the answer is sent)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error_response(APIError(400, _describe(exc.errors()), param=_param(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "bad request"
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = _unparsable(exc.__cause__)
        code = "request_too_large" if exc.status_code == 413 else None
        return _error_response(APIError(exc.status_code, message, type=STATUS_TYPES.get(exc.status_code, "invalid_request_error"),
                                        code=code, headers=getattr(exc, "headers", None)))

    @app.exception_handler(KecilError)
    async def kecil_error(request: Request, exc: KecilError):
        status = 400 if isinstance(exc, (ConfigError, PromptTooLongError)) else 503
        return _error_response(APIError(status, str(exc), type="invalid_request_error" if status == 400 else "server_error"))


def _unparsable(cause: BaseException | None) -> str:
    """What is wrong with a body FastAPI could not parse (it raises from the original error)."""
    if isinstance(cause, RecursionError):
        return "the request body's JSON is nested too deeply to read: send a flatter JSON object"
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not valid UTF-8 (byte {cause.start}): send a JSON object encoded as UTF-8"
    return "the request body is not valid UTF-8 JSON: send a JSON object encoded as UTF-8"


def _describe(errors) -> str:
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON: send a JSON object"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "missing":
        return f"{where} is required"
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return f"{where or 'body'}: {message}"


def _param(errors) -> str | None:
    if errors and errors[0].get("type") != "json_invalid":
        parts = [str(p) for p in errors[0].get("loc", ()) if p != "body"]
        return parts[0] if parts else None
    return None


def _call(request: Request, endpoint: str, model: str) -> Call:
    state = request.scope.get("state", {})
    call = Call(endpoint=endpoint, model=model, caller=state.get("caller", "anonymous"),
                client=request.client.host if request.client else "", started=state.get("started", time.perf_counter()))
    request.state.call = call
    return call


def _routes(app: FastAPI, server: Server) -> None:
    _probe_routes(app, server)
    _model_routes(app, server)
    _answer_routes(app, server)
    from kecil.serve.page import add_page_routes

    add_page_routes(app, server)


def _probe_routes(app: FastAPI, server: Server) -> None:
    """What an orchestrator polls: liveness, readiness and Prometheus metrics."""

    @app.get("/health")
    async def health():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        """Readiness: the first model is loaded and requests will be served."""
        if server.ready:
            return {"status": "ready", "loaded": [m.name for m in server.pool.loaded()]}
        status = {"status": "error", "error": server.load_error} if server.load_error else {"status": "loading"}
        return JSONResponse(status, status_code=503)

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _model_routes(app: FastAPI, server: Server) -> None:
    """/v1/models: chat models, the embedding model and the knowledge bases, loaded or not."""
    pool, config = server.pool, server.config
    model_list = server.served_models

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": model_list()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if pool.serves_embedding(model_id):
            model_id = config.embedding_model  # its documented spelling, "all-MiniLM-L6-v2", names it too
        for entry in model_list():
            if entry["id"] == model_id:
                return entry
        raise server.unknown_model(model_id)


def _answer_routes(app: FastAPI, server: Server) -> None:
    """The OpenAI endpoints that run a model."""

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        call = _call(request, "/v1/chat/completions", body.model)
        if wants_route(body):
            return await run_route(server, request, body, call)
        if wants_rag(body):
            return await run_rag(server, request, body, call)
        return await run_generation(server, request, body, call, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        call = _call(request, "/v1/completions", body.model)
        return await run_generation(server, request, body, call, "completion")

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request):
        return await _embed(server, body, _call(request, "/v1/embeddings", body.model))


async def _embed(server: Server, body: EmbeddingRequest, call: Call) -> dict:
    embedder = await asyncio.to_thread(server.pool.embedder, body.model)
    if body.dimensions is not None and body.dimensions != embedder.dimension:
        raise APIError(400, f"{body.model} makes {embedder.dimension}-dimensional embeddings; "
                       f"dimensions={body.dimensions} is not available", param="dimensions")
    counts = await asyncio.to_thread(embedder.count_tokens, body.input)
    for i, n in enumerate(counts):
        if n > embedder.max_tokens:
            raise APIError(400, f"input {i} is {n} tokens but {body.model} reads at most {embedder.max_tokens}: "
                           "split the text into smaller pieces", code="context_length_exceeded", param="input")
    vectors = await asyncio.to_thread(embedder.embed, body.input)
    call.prompt_tokens = sum(counts)
    data = []
    for i, vector in enumerate(vectors):
        if body.encoding_format == "base64":
            encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            encoded = vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    server.finish(call)
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}}
