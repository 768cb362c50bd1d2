"""Routing one request: the small model answers first; when its confidence is below its tier's
threshold the request goes to the next tier (a larger local model, then a remote endpoint) where
the route file and the request allow it. Anything sent to a remote endpoint is redacted first,
and the placeholders are put back into the reply; if redaction fails nothing is sent.

A target that is down, slow or failing never costs the answer: the best answer so far (the small
model's, at least) is returned, marked not escalated, with the reason — within the request's time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from kecil.errors import ConfigError, KecilError
from kecil.infer.engine import Engine
from kecil.infer.generation import GenerationConfig
from kecil.route.confidence import Deadline, Judged, answer, generate
from kecil.route.remote import RemoteFailed, chat
from kecil.route.routefile import RouteFile, Tier

ESCALATE = ("all", "local", "none")  # what a request allows: any tier, local models only, or none


@dataclass(frozen=True)
class RouteRequest:
    """One request's own limits on routing."""

    escalate: str = field(default="all", metadata={"help": "Where the question may go past the small model: all, local (no remote endpoint) or none."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds the whole answer may take, escalations included."})
    max_tokens: int | None = field(default=None, metadata={"help": "Most tokens of the answer (default: the route file's)."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the answer that is returned (0 = greedy)."})

    def __post_init__(self) -> None:
        if self.escalate not in ESCALATE:
            raise ConfigError(f"escalate must be one of {', '.join(ESCALATE)}, got {self.escalate!r}")
        if self.timeout <= 0:
            raise ConfigError(f"the timeout must be positive, got {self.timeout}")


@dataclass
class Routed:
    """The answer and how it was reached."""

    text: str
    routed_to: str  # the tier that answered
    model: str  # its model (a local MODEL, or the remote's model name)
    confidence: float | None  # the answering tier's, when it is a local model
    escalated: bool
    reason: str  # why it stopped where it did
    redacted: bool = False  # whether redaction changed what was sent
    redacted_counts: dict[str, int] = field(default_factory=dict)
    sent_to: str | None = None  # the remote tier the (redacted) messages went to; None: nothing left this machine
    tiers: list[dict] = field(default_factory=list)  # each tier tried: name, confidence, seconds, outcome
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def fields(self) -> dict:
        """What a reply carries about its routing (the serve extension field `route`)."""
        return {"routed_to": self.routed_to, "model": self.model, "confidence": self.confidence, "escalated": self.escalated,
                "reason": self.reason, "redacted": self.redacted, "redacted_counts": self.redacted_counts, "sent_to": self.sent_to,
                "tiers": self.tiers}


def route(plan: RouteFile, messages: list[dict], *, open_model: Callable[[str], Engine],
          request: RouteRequest | None = None, audit: Callable[[dict], None] | None = None) -> Routed:
    """Answer `messages` ([{role, content}]) through `plan`'s tiers. `open_model(MODEL)` gives the
    engine of a local tier; `audit(entry)` receives one entry per escalation (kinds and counts of
    what was redacted, never text)."""
    request = request or RouteRequest()
    deadline = Deadline(request.timeout)
    max_tokens = request.max_tokens or plan.max_tokens
    generation = GenerationConfig(max_tokens=max_tokens, temperature=0)
    first = plan.tiers[0]
    best = _local(plan, first, open_model, messages, generation, deadline, judge=len(plan.tiers) > 1)
    routed = Routed(best.text, first.name, first.model, best.confidence, False, "", tiers=[_entry(first, best, "answered")])
    routed.prompt_tokens, routed.completion_tokens = best.prompt_tokens, best.tokens
    for i, tier in enumerate(plan.tiers[1:], start=1):
        below = plan.tiers[i - 1]
        if routed.confidence is not None and routed.confidence >= below.threshold:
            routed.reason = f"confident enough at {below.name} ({routed.confidence:.2f} ≥ {below.threshold:.2f})"
            return routed
        refusal = _refusal(plan, tier, request)
        if refusal:
            routed.reason = refusal
            return routed
        started = time.monotonic()
        try:
            if tier.remote:
                text = _remote(plan, tier, messages, routed, request, max_tokens, deadline, audit)
                judged = Judged(text, {}, 0, time.monotonic() - started)
            else:
                _audit(audit, plan, tier, {}, "local")
                last = i == len(plan.tiers) - 1
                judged = _local(plan, tier, open_model, messages, generation, deadline, judge=not last)
        except (RemoteFailed, KecilError) as exc:
            reason = f"{tier.name} failed: {exc}"
            routed.tiers.append({"name": tier.name, "outcome": "failed", "reason": str(exc),
                                 "seconds": round(time.monotonic() - started, 3)})
            routed.reason = reason + f"; the answer is {routed.routed_to}'s"
            return routed
        routed.text, routed.routed_to, routed.confidence, routed.escalated = judged.text, tier.name, judged.confidence, True
        routed.model = tier.remote_model if tier.remote else tier.model
        routed.completion_tokens = judged.tokens
        routed.tiers.append(_entry(tier, judged, "answered"))
        routed.reason = f"escalated to {tier.name}: {below.name}'s confidence was below {below.threshold:.2f}"
    if not routed.reason:
        routed.reason = "the only tier" if len(plan.tiers) == 1 else routed.reason
    return routed


def _entry(tier: Tier, judged: Judged, outcome: str) -> dict:
    return {"name": tier.name, "outcome": outcome, "confidence": judged.confidence, "seconds": round(judged.seconds, 3)}


def _refusal(plan: RouteFile, tier: Tier, request: RouteRequest) -> str:
    """Why the request may not go to `tier` ('' when it may)."""
    if request.escalate == "none":
        return "not escalated: the request forbids escalation"
    if tier.remote and request.escalate == "local":
        return f"not escalated to {tier.name}: the request allows local models only"
    if tier.remote and not plan.allow_remote:
        return f"not escalated to {tier.name}: remote escalation is off in route {plan.name} (set \"allow_remote\": true)"
    return ""


def _local(plan: RouteFile, tier: Tier, open_model, messages, generation: GenerationConfig, deadline: Deadline,
           *, judge: bool) -> Judged:
    """A local tier's answer; with `judge`, its confidence too (it decides whether to go on)."""
    engine = open_model(tier.model)
    if judge:
        judged = answer(engine, messages, generation, plan.confidence, deadline)
        judged.confidence = plan.combiner.confidence(judged.signals)
        return judged
    started = time.monotonic()
    prompt_ids = engine.chat_prompt_ids(messages)
    text, _, finish, tokens = generate(engine, prompt_ids, generation, deadline)
    return Judged(text, {}, tokens, time.monotonic() - started, finish_reason=finish, prompt_tokens=len(prompt_ids))


def _remote(plan: RouteFile, tier: Tier, messages, routed: Routed, request: RouteRequest, max_tokens: int,
            deadline: Deadline, audit) -> str:
    """The remote tier's answer to the redacted messages, with the placeholders put back."""
    try:
        redacted, mapping, counts = redact_messages(messages, plan.redaction)
    except Exception as exc:  # fail closed: whatever went wrong, nothing leaves the machine
        _audit(audit, plan, tier, {}, "not sent: redaction failed")
        raise RemoteFailed(f"redaction failed ({type(exc).__name__}: {exc}), so nothing was sent") from None
    routed.redacted, routed.redacted_counts, routed.sent_to = bool(counts), counts, tier.name
    _audit(audit, plan, tier, counts, "remote")
    reply = chat(tier, redacted, max_tokens=max_tokens, temperature=request.temperature, deadline=deadline)
    from kecil.route.redact import restore

    return restore(reply, mapping)


def redact_messages(messages: list[dict], config: dict | None = None) -> tuple[list[dict], object, dict[str, int]]:
    """Every message's text redacted with one shared mapping (the same name gets the same
    placeholder in the system prompt, the documents and the question); the counts by kind."""
    from kecil.route.redact import RedactConfig, redact

    mapping = None
    counts: Counter[str] = Counter()
    out = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str):
            raise ConfigError(f"a {message.get('role')} message has no plain text content; only text can be redacted")
        result = redact(content, RedactConfig(**config) if config else None, mapping)
        mapping = result.mapping
        counts.update(_kind(span) for span in result.spans)
        out.append({"role": message["role"], "content": result.text})
    return out, mapping, dict(counts)


def _kind(span) -> str:
    for name in ("kind", "label", "entity_type", "type"):
        value = getattr(span, name, None) if not isinstance(span, dict) else span.get(name)
        if value:
            return str(value)
    return "unknown"


def _audit(audit, plan: RouteFile, tier: Tier, counts: dict[str, int], where: str) -> None:
    if audit is not None:
        audit({"event": "escalation", "route": plan.name, "target": tier.name, "where": where, "redacted": dict(counts)})
