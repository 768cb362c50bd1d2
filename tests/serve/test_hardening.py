"""`kecil serve` against hostile and careless clients: strings that are not text, labels clients
invent, one request asking for the whole queue, work that would hold up the event loop, requests
refused before any route ran — on a real server on loopback, with a key."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from tests.serve.test_server import MODEL, Server

KEY = "hardening-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    # The key is given with spaces around it, as a copied line may carry them: it must still match.
    s = Server(tmp_path_factory.mktemp("hardening"), "--api-key", f" {KEY} ", "--parallel", "2", "--max-queue", "2",
               "--context", "512")
    yield s
    s.stop()


def post(server, body, path="/v1/chat/completions", headers=AUTH, timeout=120):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json", **headers}, timeout=timeout)


def metrics(server) -> str:
    r = httpx.get(server.url + "/metrics", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def running(server) -> float:
    lines = [line for line in metrics(server).splitlines() if line.startswith("kecil_running_sequences{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def audit(server) -> list[dict]:
    return [json.loads(line) for line in server.audit.read_text().splitlines()]


def audited(server, **fields) -> bool:
    deadline = time.monotonic() + 10  # the line is written once the answer has gone out
    while time.monotonic() < deadline:
        if any(all(r.get(k) == v for k, v in fields.items()) for r in audit(server)):
            return True
        time.sleep(0.1)
    return False


# --- 6: strings that are not text --------------------------------------------------------------
HI = '[{"role": "user", "content": "hi"}]'
SURROGATES = {  # JSON escapes of half a UTF-16 pair, in each kind of field
    "messages": ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % MODEL),
    "model": ("/v1/chat/completions", '{"model": "smollm2\\udc00", "messages": %s}' % HI),
    "stop": ("/v1/chat/completions", '{"model": "%s", "messages": %s, "stop": ["\\ud83d"]}' % (MODEL, HI)),
    "user": ("/v1/chat/completions", '{"model": "%s", "messages": %s, "user": "\\udfff"}' % (MODEL, HI)),
    "kb": ("/v1/chat/completions", '{"model": "%s", "messages": %s, "kb": "\\ud800"}' % (MODEL, HI)),
    "prompt": ("/v1/completions", '{"model": "%s", "prompt": ["ok", "\\ud800"]}' % MODEL),
    "input": ("/v1/embeddings", '{"model": "all-minilm-l6-v2", "input": "\\ud800"}'),
}


@pytest.mark.parametrize("field", list(SURROGATES))
def test_a_lone_surrogate_is_a_400_naming_its_field(guarded, field):
    path, body = SURROGATES[field]
    r = post(guarded, body.encode("ascii"), path)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and "surrogate" in error["message"] and error["message"].startswith(field)
    metrics(guarded)  # still answers 200
    assert all(isinstance(r, dict) for r in audit(guarded))  # every audit line is still JSON


def test_metrics_and_the_audit_log_survive_a_surrogate_in_a_model_name(guarded):
    r = post(guarded, b'{"model": "rag:\\ud800", "messages": [{"role": "user", "content": "hi"}]}')
    assert r.status_code == 400
    for _ in range(3):  # not only once: it used to break every later scrape
        metrics(guarded)
    assert chat_ok(guarded)


def chat_ok(server) -> bool:
    r = post(server, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    return r.status_code == 200


# --- 7: metric labels stay few --------------------------------------------------------------------
def label_values(text: str, label: str) -> set[str]:
    return set(re.findall(label + r'="([^"]*)"', text))


def test_metric_labels_stay_bounded_whatever_paths_and_models_clients_send(guarded):
    with httpx.Client(base_url=guarded.url, headers=AUTH, timeout=30) as client:
        for i in range(150):
            assert client.get(f"/no/such/path/{i}").status_code == 404
            assert client.post("/v1/chat/completions", json={"model": f"made-up-{i}", "messages": [{"role": "user", "content": "hi"}]}).status_code == 404
            assert client.post("/v1/embeddings", json={"model": f"emb-{i}", "input": "hi"}).status_code == 404
            assert client.get(f"/v1/models/unknown-{i}").status_code == 404
    text = metrics(guarded)
    endpoints, models = label_values(text, "endpoint"), label_values(text, "model")
    assert not any("made-up" in m or "emb-" in m for m in models) and "other" in models
    assert not any("/no/such" in e for e in endpoints) and "other" in endpoints
    assert len(endpoints) <= 10 and len(models) <= 6, (endpoints, models)
    assert len(text) < 60_000


# --- 8: one request cannot take the whole queue ---------------------------------------------------
def test_every_prompt_of_a_request_counts_against_the_queue(guarded):
    # 2 decode slots + 2 waiting places: 4 sequences at most, and none of a request that does not fit.
    five = post(guarded, {"model": MODEL, "prompt": ["a", "b", "c", "d", "e"], "max_tokens": 1}, "/v1/completions")
    assert five.status_code == 400 and "at most 4" in five.json()["error"]["message"], five.text
    many = post(guarded, {"model": MODEL, "prompt": ["a"] * 65, "max_tokens": 1}, "/v1/completions")
    assert many.status_code == 400 and "at most 64" in many.json()["error"]["message"], many.text
    three_choices = post(guarded, {"model": MODEL, "prompt": ["a", "b"], "n": 3, "max_tokens": 1}, "/v1/completions")
    assert three_choices.status_code == 400 and "6 sequences" in three_choices.json()["error"]["message"]

    long = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 300, "ignore_eos": True, "temperature": 0}
    worker = threading.Thread(target=post, args=(guarded, long, "/v1/completions"))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while running(guarded) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running(guarded) >= 1
        busy = post(guarded, {"model": MODEL, "prompt": ["a", "b", "c", "d"], "max_tokens": 1}, "/v1/completions")
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1", busy.text
        assert running(guarded) == 1  # nothing of the refused request was started
        assert post(guarded, {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 1}, "/v1/completions").status_code == 200
    finally:
        worker.join()


# --- 9: nothing holds up the event loop -----------------------------------------------------------
def test_health_answers_while_a_huge_conversation_is_prepared(guarded):
    text = "All work and no play makes a dull model. " * 10
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i in range(2000)]
    result = {}

    def big():
        started = time.monotonic()
        result["response"] = post(guarded, {"model": MODEL, "messages": turns, "max_tokens": 4})
        result["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=big)
    worker.start()
    slowest = 0.0
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        while worker.is_alive():
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
    worker.join()
    assert result["response"].status_code == 400  # far beyond the 512-token context
    assert result["response"].json()["error"]["code"] == "context_length_exceeded"
    assert slowest < 1.0, f"/health took {slowest:.2f} s while a {result['seconds']:.1f} s request was prepared"


def test_too_many_messages_are_refused_before_any_work(guarded):
    turns = [{"role": "user", "content": "hi"}] * 2001
    r = post(guarded, {"model": MODEL, "messages": turns})
    assert r.status_code == 400 and "at most 2000" in r.json()["error"]["message"]


def test_an_oversized_json_schema_is_refused_and_a_small_one_served(guarded):
    schema = {"type": "object", "properties": {"colour": {"enum": [f"colour number {i}" for i in range(20_000)]}}}
    started = time.monotonic()
    r = post(guarded, {"model": MODEL, "messages": [{"role": "user", "content": "Pick a colour."}], "max_tokens": 4,
                       "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
    assert r.status_code == 400, r.text
    assert "alternatives" in r.json()["error"]["message"] and r.json()["error"]["param"] == "response_format"
    assert time.monotonic() - started < 10
    small = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"]}
    # Room for the grammar's optional whitespace: 12 tokens once ended mid-object on another CPU.
    r = post(guarded, {"model": MODEL, "messages": [{"role": "user", "content": "Pick a colour."}], "max_tokens": 64,
                       "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": small}}})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop", r.text
    assert json.loads(r.json()["choices"][0]["message"]["content"])["colour"] in ("red", "green", "blue")


# --- 10 and 11: refusals are audited and say what is wrong ----------------------------------------
def test_refused_requests_are_audited_without_their_content(guarded):
    secret = "walrus-trombone-5521"
    body = {"model": MODEL, "messages": [{"role": "user", "content": secret}]}
    assert post(guarded, body, headers={}).status_code == 401
    assert audited(guarded, caller="unauthenticated", status=401, endpoint="/v1/chat/completions")
    twice = httpx.post(guarded.url + "/v1/chat/completions", json=body, timeout=30,
                       headers=[("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer someone-elses-key")])
    assert twice.status_code == 400 and "more than one authorization header" in twice.json()["error"]["message"]
    assert audited(guarded, caller="unauthenticated", status=400)
    assert post(guarded, b'{"model": "x", "messages": "' + b"a" * 1_100_000 + b'"}').status_code == 413
    assert audited(guarded, status=413, endpoint="/v1/chat/completions")
    assert httpx.get(guarded.url + "/v1/nothing-here", headers=AUTH).status_code == 404
    assert audited(guarded, status=404, endpoint="other")
    assert httpx.get(guarded.url + "/v1/models", headers=AUTH).status_code == 200
    assert audited(guarded, status=200, endpoint="/v1/models")
    assert secret not in guarded.audit.read_text() and KEY not in guarded.audit.read_text()


def test_a_very_deep_json_body_is_refused_as_too_deep(guarded):
    r = post(guarded, b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["error"]["message"]


def test_a_crash_is_audited_as_a_500(tmp_path):
    """The one way to reach the 500 path is a bug; this app gets a route that has one."""
    from fastapi.testclient import TestClient

    from kecil.serve.app import create_app
    from kecil.serve.config import ServeConfig

    app = create_app(ServeConfig(preload=False, embedding_model=None, audit_log=tmp_path / "audit.jsonl"))

    @app.get("/v1/broken")
    async def broken():
        raise RuntimeError("a bug")

    with TestClient(app) as client:
        r = client.get("/v1/broken")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["endpoint"], r["status"], r["caller"]) for r in records] == [("/v1/broken", 500, "anonymous")]


# --- issue 26: the documented embedding name ------------------------------------------------------
def test_the_embedding_model_answers_to_its_documented_name(guarded):
    r = post(guarded, {"model": "all-MiniLM-L6-v2", "input": "a cat sat on the mat"}, "/v1/embeddings")
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384
    assert "all-minilm-l6-v2" in label_values(metrics(guarded), "model")
    assert httpx.get(guarded.url + "/v1/models/all-MiniLM-L6-v2", headers=AUTH).json()["id"] == "all-minilm-l6-v2"


def test_the_audit_log_folder_kecil_makes_is_private(tmp_path):
    """A newcomer found $KECIL_HOME/serve made 0755 though the README says kecil's folders are 0700."""
    import stat

    from kecil.serve.security import AuditLog

    AuditLog(tmp_path / "serve" / "audit.jsonl")
    assert stat.S_IMODE((tmp_path / "serve").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "serve" / "audit.jsonl").stat().st_mode) == 0o600
