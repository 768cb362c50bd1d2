"""`kecil serve --route FILE`: the model route:NAME through the official openai client, with
who answered in a field and a header, and one audit line per escalation (never text)."""

from __future__ import annotations

import json

import httpx
import pytest

from kecil.route.confidence import FEATURES
from tests.serve.test_server import Server

QUESTION = "What is the capital of France? My name is Wira Santoso."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("route")
    unsure = {"features": list(FEATURES), "weights": [0.0] * len(FEATURES), "bias": 0.0,
              "mean": [0.0] * len(FEATURES), "scale": [1.0] * len(FEATURES)}  # confidence 0.5 for every answer
    route = {"format": "kecil-route/1", "name": "desk", "max_tokens": 8, "allow_remote": False, "combiner": unsure,
             "confidence": {"samples": 1, "sample_tokens": 4, "self_check": False},
             "tiers": [{"name": "small", "model": "smollm2-135m", "threshold": 0.9},
                       {"name": "large", "model": "smollm2-135m", "threshold": 0.9},
                       {"name": "cloud", "url": "http://127.0.0.1:9/v1", "remote_model": "big"}]}
    path = tmp / "desk.route.json"
    path.write_text(json.dumps(route))
    server = Server(tmp, "--route", str(path), "--no-embeddings")
    yield server
    server.stop()


def test_route_is_offered_and_answers_with_routed_to_in_field_and_header(served):
    client = served.client()
    assert "route:desk" in [m.id for m in client.models.list().data]
    raw = client.chat.completions.with_raw_response.create(model="route:desk", messages=[{"role": "user", "content": QUESTION}])
    completion = raw.parse()
    assert raw.headers["x-kecil-routed-to"] == "large" and completion.model_extra["routed_to"] == "large"
    assert completion.choices[0].message.content
    details = completion.model_extra["route"]
    assert details["escalated"] and details["confidence"] == pytest.approx(0.5) and raw.headers["x-kecil-confidence"] == "0.5000"
    assert "allow_remote" in details["reason"]  # the remote tier is there, and off
    assert raw.headers["x-kecil-redacted"] == "false" and details["redacted"] is False
    lines = [json.loads(line) for line in served.audit.read_text().splitlines()]
    escalations = [e for e in lines if e.get("event") == "escalation"]
    assert len(escalations) == 1 and escalations[0]["route"] == "desk" and escalations[0]["target"] == "large"
    assert "Wira" not in served.audit.read_text() and "France" not in served.audit.read_text()


def test_a_request_can_forbid_escalation(served):
    client = served.client()
    raw = client.chat.completions.with_raw_response.create(model="route:desk", messages=[{"role": "user", "content": QUESTION}],
                                                           extra_body={"escalate": "none"})
    completion = raw.parse()
    assert raw.headers["x-kecil-routed-to"] == "small" and not completion.model_extra["route"]["escalated"]
    assert "forbids" in completion.model_extra["route"]["reason"]


def test_unknown_route_and_bad_escalate_are_clean_errors(served):
    r = httpx.post(served.url + "/v1/chat/completions", json={"model": "route:nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and "route:desk" in r.json()["error"]["message"]
    # A plain model name that is not served: the 404 names every model the client could use instead.
    r = httpx.post(served.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and "route:desk" in r.json()["error"]["message"] and "smollm2-135m" in r.json()["error"]["message"]
    assert httpx.get(served.url + "/v1/models/gpt-4o").json()["error"]["message"] == r.json()["error"]["message"]
    r = httpx.post(served.url + "/v1/chat/completions", json={"model": "route:desk", "escalate": "maybe",
                                                              "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "escalate" in r.json()["error"]["message"]
