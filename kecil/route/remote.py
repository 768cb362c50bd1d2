"""A remote OpenAI-compatible endpoint as an escalation target: one chat completion, bounded in
time whatever the endpoint does (refuses, stalls, drips bytes, errors), with a few retries and a
circuit breaker that stops trying an endpoint that keeps failing.

The standard library's urllib does the HTTP (no client library is a dependency of kecil itself);
each attempt runs on a daemon thread the caller waits on only until the request's deadline, since
a socket timeout bounds each read, not a whole reply trickled in byte by byte.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from dataclasses import dataclass

from kecil.route.confidence import Deadline
from kecil.route.routefile import Tier

RETRYABLE = {429, 500, 502, 503, 504}
BREAKER_FAILURES = 3  # consecutive failed requests that open an endpoint's circuit
BREAKER_COOLDOWN = 30.0  # seconds an open circuit refuses before one request may try again
BACKOFF = 0.25  # seconds before a retry (doubling)


class RemoteFailed(Exception):
    """The endpoint gave no usable answer in time; str() is the reason shown to the user."""


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None


class CircuitBreaker:
    """Per endpoint: after BREAKER_FAILURES failures in a row, refuse at once for
    BREAKER_COOLDOWN seconds (an outage costs each request nothing), then let one request probe."""

    def __init__(self, failures: int = BREAKER_FAILURES, cooldown: float = BREAKER_COOLDOWN):
        self.limit, self.cooldown = failures, cooldown
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def check(self, url: str) -> None:
        with self._lock:
            circuit = self._circuits.setdefault(url, _Circuit())
            if circuit.opened_at is not None:
                waited = time.monotonic() - circuit.opened_at
                if waited < self.cooldown:
                    raise RemoteFailed(f"the endpoint failed {circuit.failures} times in a row; not trying it again "
                                       f"for {self.cooldown - waited:.0f} s (circuit open)")
                circuit.opened_at = time.monotonic()  # half-open: this one request probes; others still wait

    def record(self, url: str, ok: bool) -> None:
        with self._lock:
            circuit = self._circuits.setdefault(url, _Circuit())
            if ok:
                circuit.failures, circuit.opened_at = 0, None
            else:
                circuit.failures += 1
                if circuit.failures >= self.limit:
                    circuit.opened_at = time.monotonic()


BREAKER = CircuitBreaker()  # one per process: every request to an endpoint shares what is known of it


def chat(tier: Tier, messages: list[dict], *, max_tokens: int, temperature: float, deadline: Deadline,
         breaker: CircuitBreaker | None = None) -> str:
    """The endpoint's answer to `messages` (already redacted by the caller), or RemoteFailed."""
    breaker = breaker or BREAKER  # looked up at call time: the process's one breaker
    breaker.check(tier.url)
    body = json.dumps({"model": tier.remote_model, "messages": messages, "max_tokens": max_tokens,
                       "temperature": temperature, "stream": False}).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = tier.api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    reason = "no attempt fitted in the request's time"
    for attempt in range(tier.retries + 1):
        if attempt:
            pause = BACKOFF * 2 ** (attempt - 1)
            if deadline.left() <= pause + 0.05:
                break
            time.sleep(pause)
        budget = min(tier.timeout, deadline.left())
        if budget <= 0.05:
            break
        try:
            text = _attempt(tier.url.rstrip("/") + "/chat/completions", body, headers, budget)
        except _Retryable as exc:
            reason = str(exc)
            continue
        except RemoteFailed:
            breaker.record(tier.url, ok=False)
            raise
        breaker.record(tier.url, ok=True)
        return text
    breaker.record(tier.url, ok=False)
    raise RemoteFailed(reason)


class _Retryable(RemoteFailed):
    """A failure another attempt may not repeat: refused, timed out, 429 or 5xx."""


def _attempt(url: str, body: bytes, headers: dict, budget: float) -> str:
    done: Future = Future()

    def post() -> None:
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=budget) as response:  # noqa: S310 (the user's configured endpoint)
                done.set_result((response.status, response.read(4_000_000)))
        except urllib.error.HTTPError as exc:
            done.set_result((exc.code, exc.read(4_000) if exc.fp else b""))
        except Exception as exc:  # refused, reset, timed out, bad TLS: reported, never raised in a thread
            done.set_exception(exc)

    threading.Thread(target=post, name="kecil-remote", daemon=True).start()
    try:
        status, payload = done.result(timeout=budget)
    except TimeoutError:
        raise _Retryable(f"no answer within {budget:.1f} s") from None
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retryable(f"could not reach it ({reason})") from None
    if status in RETRYABLE:
        raise _Retryable(f"it answered HTTP {status}")
    if status != 200:
        raise RemoteFailed(f"it answered HTTP {status} (not retried: the request itself was refused)")
    try:
        text = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise RemoteFailed("its reply is not an OpenAI chat completion") from None
    if not isinstance(text, str):
        raise RemoteFailed("its reply has no text content")
    return text
