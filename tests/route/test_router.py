"""Routing with a real small model and a real loopback endpoint that records every byte it gets:
what leaves the machine is only what the route file and the request allow, redacted; an endpoint
that is down, slow or failing costs the answer nothing and never the request's time."""

from __future__ import annotations

import json
import time

import pytest

from kecil.route.confidence import FEATURES, Combiner, ConfidenceConfig
from kecil.route.remote import CircuitBreaker
from kecil.route.routefile import RouteFile, Tier, load_route, save_route
from kecil.route.router import RouteRequest, route
from tests.route.endpoint import Endpoint, closed_port_url

EMAIL = "siti.rahman@example.com.my"
QUESTION = f"My e-mail is {EMAIL}. What is the capital of France?"
# Confidence 0.5 whatever the signals, below every threshold here: every answer wants escalating.
UNSURE = Combiner(FEATURES, (0.0,) * len(FEATURES), 0.0, (0.0,) * len(FEATURES), (1.0,) * len(FEATURES), "test")
QUICK = ConfidenceConfig(samples=1, sample_tokens=4, self_check=False)


@pytest.fixture(scope="module")
def small():
    from kecil.infer.engine import open_engine
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve

    ref = resolve("smollm2-135m")
    engine = open_engine(ref, inspect_model(ref), context_length=512, threads=2, parallel=2)
    yield engine
    engine.close()


@pytest.fixture
def redaction():
    """kecil.route.redact, which every remote escalation goes through (without it nothing is sent)."""
    return pytest.importorskip("kecil.route.redact")


@pytest.fixture
def endpoint():
    made = []

    def make(*args, **kw) -> Endpoint:
        made.append(Endpoint(*args, **kw))
        return made[-1]

    yield make
    for e in made:
        e.close()


def plan(url: str, *, allow_remote: bool = True, timeout: float = 5.0, retries: int = 1, redaction: dict | None = None) -> RouteFile:
    return RouteFile("test", (Tier("small", model="smollm2-135m", threshold=0.9),
                              Tier("cloud", url=url, remote_model="big", timeout=timeout, retries=retries)),
                     allow_remote=allow_remote, combiner=UNSURE, confidence=QUICK, max_tokens=8, redaction=redaction or {})


def ask(route_plan: RouteFile, engine, **request) -> tuple:
    audit: list[dict] = []
    started = time.monotonic()
    routed = route(route_plan, [{"role": "user", "content": QUESTION}], open_model=lambda model: engine,
                   request=RouteRequest(**{"timeout": 30.0, **request}), audit=audit.append)
    return routed, audit, time.monotonic() - started


def test_an_unsure_answer_goes_to_the_remote_endpoint_redacted_and_comes_back_restored(small, endpoint, redaction):
    remote = endpoint("ok")  # echoes what it got: the reply holds the placeholder, the user sees the address
    routed, audit, _ = ask(plan(remote.url), small)
    assert routed.routed_to == "cloud" and routed.escalated
    assert len(remote.received) == 1
    assert EMAIL not in remote.everything() and "siti.rahman" not in remote.everything()
    assert routed.redacted and sum(routed.redacted_counts.values()) >= 1 and routed.fields()["sent_to"] == "cloud"
    assert EMAIL in routed.text  # restored in the reply the user sees
    assert len(audit) == 1 and audit[0]["target"] == "cloud" and EMAIL not in json.dumps(audit)


def test_when_redaction_fails_nothing_is_sent(small, endpoint):
    remote = endpoint("ok")
    routed, audit, _ = ask(plan(remote.url, redaction={"no_such_setting": True}), small)
    assert remote.received == [] and routed.sent_to is None
    assert not routed.escalated and routed.routed_to == "small" and "nothing was sent" in routed.reason
    assert routed.text  # the small model's answer stands


def test_a_request_that_forbids_escalation_stays_local(small, endpoint):
    remote = endpoint("ok")
    for escalate in ("none", "local"):
        routed, audit, _ = ask(plan(remote.url), small, escalate=escalate)
        assert not routed.escalated and routed.routed_to == "small" and routed.text
        assert "request" in routed.reason
    assert remote.received == [] and audit == []


def test_remote_escalation_is_off_unless_the_route_file_allows_it(small, endpoint):
    remote = endpoint("ok")
    routed, _, _ = ask(plan(remote.url, allow_remote=False), small)
    assert remote.received == [] and not routed.escalated and "allow_remote" in routed.reason and routed.sent_to is None


def test_a_down_endpoint_gives_the_small_answer_with_the_reason(small, redaction):
    routed, _, seconds = ask(plan(closed_port_url(), retries=1), small)
    assert not routed.escalated and routed.routed_to == "small" and routed.text
    assert "could not reach" in routed.reason and seconds < 30


def test_a_slow_endpoint_is_given_up_on_within_the_request_time(small, endpoint, redaction):
    remote = endpoint("slow", delay=20.0)
    routed, _, seconds = ask(plan(remote.url, timeout=1.0, retries=1), small, timeout=15.0)
    assert not routed.escalated and "no answer within" in routed.reason
    assert len(remote.received) == 2  # one retry, bounded
    assert seconds < 15.0


def test_a_failing_endpoint_is_retried_a_bounded_number_of_times_then_its_circuit_opens(small, endpoint, redaction, monkeypatch):
    import kecil.route.remote as remote_module

    monkeypatch.setattr(remote_module, "BREAKER", CircuitBreaker(failures=2, cooldown=60))
    remote = endpoint("error")
    route_plan = plan(remote.url, retries=2)
    first, _, _ = ask(route_plan, small)
    assert "HTTP 500" in first.reason and len(remote.received) == 3
    ask(route_plan, small)
    sent = len(remote.received)
    third, _, seconds = ask(route_plan, small)
    assert len(remote.received) == sent  # the open circuit sent nothing
    assert "circuit open" in third.reason and not third.escalated and third.text


def test_a_route_file_round_trips_and_bad_ones_are_named(tmp_path):
    from kecil.errors import ConfigError

    path = save_route(plan("http://127.0.0.1:9/v1"), tmp_path / "r.json")
    loaded = load_route(path)
    assert loaded.tiers[1].url == "http://127.0.0.1:9/v1" and loaded.allow_remote and loaded.combiner == UNSURE
    data = json.loads(path.read_text())
    data["tiers"][0] = {"name": "small", "url": "http://x/v1"}
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="first tier must be a local model"):
        load_route(path)
    data["tiers"][0] = {"name": "small", "model": "smollm2-135m", "api_key": "sk-secret"}
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown keys"):
        load_route(path)
