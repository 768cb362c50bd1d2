"""Who may call the server and how much they may send: API keys compared in constant time, a cap
on request bodies enforced while they stream in, and an append-only audit log that records who
called which model when — token counts, never content."""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from starlette.exceptions import HTTPException

from kecil.serve.config import APIKey
from kecil.serve.protocol import APIError

log = logging.getLogger("kecil.serve")
OPEN_PATHS = frozenset({"/health", "/ready"})  # probes carry no key (Kubernetes does not send one)


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


class GuardMiddleware:
    """ASGI middleware: authenticate, and refuse bodies over `max_body` bytes (by Content-Length
    up front, and by counting as the body streams in, for chunked uploads)."""

    def __init__(self, app, *, keys: tuple[APIKey, ...], max_body: int, send_error):
        self.app, self.keys, self.max_body, self.send_error = app, keys, max_body, send_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        scope.setdefault("state", {})["caller"] = "anonymous"
        if self.keys and scope["path"] not in OPEN_PATHS:
            key = find_key(presented_key(headers), self.keys)
            if key is None:
                error = APIError(401, "missing or wrong API key: send it as `Authorization: Bearer KEY`",
                                 type="authentication_error", code="invalid_api_key",
                                 headers={"WWW-Authenticate": "Bearer"})
                return await self.send_error(scope, send, error)
            scope["state"]["caller"] = key.name
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await self.send_error(scope, send, APIError(400, "the Content-Length header is not a number"))
            if too_big:
                return await self.send_error(scope, send, _too_large(self.max_body))
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(_too_large(self.max_body).message)
            return message

        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self.send_error(scope, send, _too_large(self.max_body))
        except Exception as exc:  # a bug: one log line with the traceback, a 500 for the client, and serve on
            log.exception("internal error on %s", scope.get("path"))
            if not started:
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: every line lands at the end even with several writers; 0600: only the owner reads it.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def record(self, **fields) -> None:
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields}
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
