"""Who may call the server and how much they may send: API keys compared in constant time, a cap
on request bodies enforced while they stream in, and an append-only audit log that records who
called which model when — token counts, never content."""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from starlette.exceptions import HTTPException

from kecil.serve.config import APIKey
from kecil.serve.page import is_page_path
from kecil.serve.protocol import APIError

log = logging.getLogger("kecil.serve")
OPEN_PATHS = frozenset({"/health", "/ready"})  # probes carry no key (Kubernetes does not send one)


def is_open(path: str) -> bool:
    """Paths served without a key: the probes, and the web page's own files (public, in the
    package: the page asks for the key and sends it with every call it makes)."""
    return path in OPEN_PATHS or is_page_path(path)


def find_key(presented: str | None, keys: tuple[APIKey, ...]) -> APIKey | None:
    """The key matching `presented`. Every configured key is compared, each in constant time,
    so the time taken says nothing about which key or how much of it matched."""
    if presented is None:
        return None
    found = None
    candidate = presented.encode("utf-8", errors="surrogateescape")
    for key in keys:
        if hmac.compare_digest(candidate, key.secret.encode("utf-8")):
            found = key
    return found


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.decode("latin-1").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    api_key = headers.get(b"x-api-key")
    return api_key.decode("latin-1").strip() if api_key is not None else None


def repeated_credentials(raw_headers) -> str | None:
    """The name of a credential header sent more than once: which one counts would be a guess."""
    for name in (b"authorization", b"x-api-key"):
        if sum(1 for key, _ in raw_headers if key == name) > 1:
            return name.decode()
    return None


class GuardMiddleware:
    """ASGI middleware: authenticate, refuse bodies over `max_body` bytes (by Content-Length up
    front, and by counting as the body streams in, for chunked uploads), and hand every request's
    final status to `on_done(scope, status)` — refusals and crashes included — for the audit log."""

    def __init__(self, app, *, keys: tuple[APIKey, ...], max_body: int, send_error, on_done):
        self.app, self.keys, self.max_body, self.send_error, self.on_done = app, keys, max_body, send_error, on_done

    def refusal(self, scope, state: dict) -> APIError | None:
        """Why the request is refused before it is read, or None."""
        headers = dict(scope["headers"])
        if self.keys and not is_open(scope["path"]):
            repeated = repeated_credentials(scope["headers"])
            if repeated is not None:
                state["caller"] = "unauthenticated"
                return APIError(400, f"the request has more than one {repeated} header: send the key once",
                                code="invalid_api_key")
            key = find_key(presented_key(headers), self.keys)
            if key is None:
                state["caller"] = "unauthenticated"
                return APIError(401, "missing or wrong API key: send it as `Authorization: Bearer KEY`",
                                type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            state["caller"] = key.name
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return APIError(400, "the Content-Length header is not a number")
            if too_big:
                return _too_large(self.max_body)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        state["caller"], state["started"] = "anonymous", time.perf_counter()
        status = 499  # what is recorded when the client leaves before any answer
        started = False

        async def tracked_send(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        try:
            error = self.refusal(scope, state)
            if error is not None:
                return await self.send_error(scope, tracked_send, error)
            await self._run(scope, receive, tracked_send, lambda: started)
        finally:
            self.on_done(scope, status)

    async def _run(self, scope, receive, send, started):
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(_too_large(self.max_body).message)
            return message

        try:
            await self.app(scope, counted_receive, send)
        except BodyTooLarge:
            if not started():
                await self.send_error(scope, send, _too_large(self.max_body))
        except Exception as exc:  # a bug: one log line with the traceback, a 500 for the client, and serve on
            log.exception("internal error on %s", scope.get("path"))
            if not started():
                await self.send_error(scope, send, APIError(
                    500, f"internal server error ({type(exc).__name__}); the server logged the details", type="server_error"))


class BodyTooLarge(HTTPException):
    """Raised from inside body reading; FastAPI passes HTTPExceptions through to the error handler."""

    def __init__(self, message: str):
        super().__init__(413, message)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than the server's limit of {limit} bytes; "
                    "send less text, or restart the server with a larger --max-body", code="request_too_large")


class AuditLog:
    """Append-only JSON lines: one per request, with who, which model, when, status and token counts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a folder made here is private (README)
        # O_APPEND: every line lands at the end even with several writers; 0600: only the owner reads it.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def record(self, **fields) -> None:
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields}
        # backslashreplace: a string that is not text (a lone surrogate) is written as its JSON
        # escape, so the line stays valid JSON and the write never fails on it.
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", errors="backslashreplace")
        with self._lock:
            if self._fd < 0:
                return  # closed at shutdown: a request finishing after it is not recorded twice
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
