"""`kecil serve` as a client sees it: a real server process on loopback with the bundled model,
driven by the official openai client and by raw HTTP for the inputs no client would send."""

from __future__ import annotations

import json
import os
import signal
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai  # a test dependency (pyproject's [test] extra): when missing, this suite errors, never skips
import pytest

MODEL = "smollm2-135m"
QUESTIONS = [
    "What is the capital of France?", "Name three colours.", "Write a haiku about rain.", "What is 2+2?",
    "Tell me a joke.", "What is Python?", "Who wrote Hamlet?", "Describe the sun.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `kecil serve` subprocess; stopped (and its output kept for failures) at teardown."""

    def __init__(self, tmp: Path, *args: str, ready: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audit = tmp / f"audit-{self.port}.jsonl"
        self.log = tmp / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            # One decode thread: tests check behaviour, not speed, and ggml's spinning thread pool
            # slows down many times over when the test's own clients take a core from it.
            [sys.executable, "-m", "kecil", "serve", "--port", str(self.port), "--audit-log", str(self.audit),
             "--threads", "1", *args],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env={**os.environ, "KECIL_DEBUG": ""},
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                r = httpx.get(self.url + ("/ready" if ready else "/health"), timeout=2, headers=self.auth_headers(args))
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError("server did not become ready: " + self.log.read_text())

    @staticmethod
    def auth_headers(args) -> dict:
        args = list(args)
        return {"Authorization": f"Bearer {args[args.index('--api-key') + 1].strip()}"} if "--api-key" in args else {}

    def client(self, key: str = "unused", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=600, **kw)

    def metric(self, name: str, **labels) -> float:
        text = httpx.get(self.url + "/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"), "--parallel", "8", "--context", "1024")
    yield s
    s.stop()


def chat(client, question: str, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], **kw)


# --- the openai client, unchanged ------------------------------------------------------------
def test_chat_completion_through_the_openai_client(server):
    reply = chat(server.client(), "What is the capital of France?", temperature=0, max_tokens=32)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 32
    assert [m.id for m in server.client().models.list().data][:1] == [MODEL]


def test_streaming_gives_the_same_text_as_one_response(server):
    client = server.client()
    whole = chat(client, "Write a haiku about rain.", seed=11, max_tokens=40).choices[0].message.content
    pieces, finish, usage = [], None, None
    for event in chat(client, "Write a haiku about rain.", seed=11, max_tokens=40, stream=True,
                      stream_options={"include_usage": True}):
        if event.choices:
            pieces.append(event.choices[0].delta.content or "")
            finish = event.choices[0].finish_reason or finish
        if event.usage:
            usage = event.usage
    assert "".join(pieces) == whole and len(pieces) > 3
    assert finish in ("stop", "length") and usage.completion_tokens > 3


def test_text_completion_with_logprobs(server):
    reply = server.client().completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                               temperature=0, logprobs=2)
    choice = reply.choices[0]
    assert choice.text.startswith(" Paris")
    assert choice.logprobs.tokens[0] == " Paris" and -1 < choice.logprobs.token_logprobs[0] < 0
    assert len(choice.logprobs.top_logprobs[0]) == 2 and " Paris" in choice.logprobs.top_logprobs[0]
    assert "".join(choice.logprobs.tokens) == choice.text


def test_n_choices_and_stop_sequences(server):
    reply = chat(server.client(), "Count from 1 to 10, separated by commas.", n=3, seed=5, temperature=0.9,
                 max_tokens=40, stop=["6"])
    assert [c.index for c in reply.choices] == [0, 1, 2]
    for c in reply.choices:
        assert "6" not in c.message.content


def test_embeddings_through_the_openai_client(server):
    import numpy as np

    result = server.client().embeddings.create(model="all-minilm-l6-v2", input=["a cat sat on the mat", "a kitten sat on a rug", "stock market report"])
    vectors = np.array([d.embedding for d in result.data])  # the client asks for base64 and decodes it
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    floats = httpx.post(server.url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "a cat sat on the mat"}).json()
    assert np.allclose(floats["data"][0]["embedding"], vectors[0], atol=1e-6)
    assert result.usage.prompt_tokens > 6


def test_json_mode_is_enforced_by_a_grammar(server):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    reply = chat(server.client(), "Describe a person.", seed=1, max_tokens=60,
                 response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    data = json.loads(reply.choices[0].message.content)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


# --- batching ------------------------------------------------------------------------------
def test_concurrent_streams_are_batched_and_independent(server):
    client = server.client()
    alone = [chat(client, q, seed=100 + i, max_tokens=48).choices[0].message.content for i, q in enumerate(QUESTIONS)]
    together: list[str | None] = [None] * len(QUESTIONS)
    most_running = 0

    def stream(i: int) -> None:
        events = chat(client, QUESTIONS[i], seed=100 + i, max_tokens=48, stream=True)
        together[i] = "".join(e.choices[0].delta.content or "" for e in events if e.choices)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        most_running = max(most_running, server.metric("kecil_running_sequences", model=MODEL))
        time.sleep(0.05)
    assert together == alone  # same seed alone or in a batch: same text
    assert most_running >= 2, "concurrent requests were not decoded together"


# --- bad input gets a clean 4xx and the server keeps serving ---------------------------------
def post(server, body, path="/v1/chat/completions", **kw):
    return httpx.post(server.url + path, content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                      headers={"Content-Type": "application/json", **kw.pop("headers", {})}, timeout=60, **kw)


BAD_REQUESTS = {
    "malformed json": (b'{"model": "smollm2-135m", "messages": [', 400, "not valid JSON"),
    "wrong type": ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400, "max_tokens"),
    "unknown model": ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "not served"),
    "empty messages": ({"model": MODEL, "messages": []}, 400, "messages"),
    "missing messages": ({"model": MODEL}, 400, "messages is required"),
    "bad role": ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    "huge max_tokens": ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, 400, "1000000000"),
    "invalid utf-8": (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "UTF-8"),
    "10 MB body": (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "' + b"a" * 10_000_000 + b'"}]}', 413, "limit"),
    "temperature out of range": ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 7}, 400, "temperature"),
    "tools": ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tool"),
    "image content": ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "image_url"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_an_openai_error_object(server, case):
    body, status, words = BAD_REQUESTS[case]
    r = post(server, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words.lower() in error["message"].lower()
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_prompt_longer_than_the_context_gives_both_numbers(server):
    r = post(server, {"model": MODEL, "messages": [{"role": "user", "content": "word " * 3000}]})
    assert r.status_code == 400
    numbers = [int(n) for n in re.findall(r"\d+", r.json()["error"]["message"])]
    assert 1024 in numbers and any(n > 1024 for n in numbers)
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_token_arrays_and_empty_prompts_are_refused(server):
    assert post(server, {"model": MODEL, "prompt": [[1, 2, 3]]}, "/v1/completions").status_code == 400
    assert post(server, {"model": MODEL, "prompt": ""}, "/v1/completions").status_code == 400
    assert post(server, {"model": "all-minilm-l6-v2", "input": []}, "/v1/embeddings").status_code == 400


def test_unknown_path_is_an_openai_404(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_disconnect_cancels_the_generation_and_the_audit_log_has_no_content(server):
    secret = "zebra-origami-7731"
    body = {"model": MODEL, "stream": True, "max_tokens": 900, "messages": [{"role": "user", "content": f"Tell a very long story about {secret}."}]}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data:") for line in got)
    deadline = time.monotonic() + 20
    while server.metric("kecil_running_sequences", model=MODEL) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("kecil_running_sequences", model=MODEL) == 0
    deadline = time.monotonic() + 10
    while '"status": 499' not in server.audit.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    records = [json.loads(line) for line in server.audit.read_text().splitlines()]
    assert any(r["status"] == 499 and r["stream"] for r in records)
    assert all({"time", "caller", "model", "status", "prompt_tokens", "completion_tokens"} <= set(r) for r in records)
    assert secret not in server.audit.read_text() and secret not in server.log.read_text()


def test_a_non_streaming_client_that_leaves_is_cancelled_too(server):
    body = json.dumps({"model": MODEL, "max_tokens": 900, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Count to a thousand."}]}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 60
        while server.metric("kecil_running_sequences", model=MODEL) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    deadline = time.monotonic() + 20
    while server.metric("kecil_running_sequences", model=MODEL) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("kecil_running_sequences", model=MODEL) == 0

    def left() -> bool:  # the audit line is written just after the cancel
        return any(r["status"] == 499 and not r["stream"] for r in map(json.loads, server.audit.read_text().splitlines()))

    deadline = time.monotonic() + 10
    while not left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left()


def test_metrics_count_requests_and_tokens(server):
    before = server.metric("kecil_completion_tokens_total", model=MODEL)
    chat(server.client(), "Say hello.", max_tokens=8, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    assert server.metric("kecil_completion_tokens_total", model=MODEL) > before
    for name in ("kecil_requests_total", "kecil_time_to_first_token_seconds_bucket", "kecil_queue_depth", "kecil_request_duration_seconds_bucket"):
        assert name in text
    from kecil.infer.measure import energy_unreadable_reason

    # joules where the energy counters are readable; on a machine without them, no series rather than a 0
    assert ("kecil_energy_joules_total" in text) == (energy_unreadable_reason() is None)


# --- security, limits and the model pool: servers of their own -------------------------------
def test_keys_are_required_when_set_and_probes_stay_open(tmp_path):
    key = "k3y-for-tests-0123456789"
    s = Server(tmp_path, "--api-key", key, "--no-embeddings")
    try:
        assert httpx.get(s.url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-key-0000"}, {"Authorization": key}):
            r = httpx.get(s.url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            s.client("not-the-key").models.list()
        assert chat(s.client(key), "Hi", max_tokens=4).choices[0].message.content
        caller = json.loads(s.audit.read_text().splitlines()[-1])["caller"]
        assert caller.startswith("key-") and key not in s.audit.read_text()
    finally:
        s.stop()


def test_binding_beyond_loopback_needs_a_key():
    done = subprocess.run([sys.executable, "-m", "kecil", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--api-key" in done.stderr and "Traceback" not in done.stderr


def test_full_queue_answers_429_and_timeout_answers_504(tmp_path):
    s = Server(tmp_path, "--parallel", "1", "--max-queue", "0", "--timeout", "3", "--no-embeddings")
    try:
        long = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 2000, "temperature": 0}
        results = {}
        first = threading.Thread(target=lambda: results.setdefault("first", post(s, long, "/v1/completions")))
        first.start()
        deadline = time.monotonic() + 30
        while s.metric("kecil_running_sequences", model=MODEL) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = post(s, {"model": MODEL, "prompt": "Hello", "max_tokens": 4}, "/v1/completions")
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["type"] == "rate_limit_error"
        first.join()
        assert results["first"].status_code == 504, results["first"].text
        assert "timeout" in results["first"].json()["error"]["message"]
        # The timed-out generation gave its slot back: the next request is taken, not refused.
        assert post(s, {"model": MODEL, "prompt": "Hello", "max_tokens": 1}, "/v1/completions").status_code != 429
        assert s.metric("kecil_running_sequences", model=MODEL) == 0
    finally:
        s.stop()


def test_models_load_on_demand_and_the_least_recently_used_is_unloaded(tmp_path, server):
    from kecil.models.builtins import builtin_path

    source = builtin_path(MODEL)
    copies = []
    for name in ("alpha", "beta"):
        copies.append(tmp_path / f"{name}.gguf")
        shutil.copy(source, copies[-1])
    # Room for one of these models, not two (kecil estimates ~280 MiB each at a 256-token context, 1 slot).
    s = Server(tmp_path, *map(str, copies), "--parallel", "1", "--context", "256", "--max-memory", "400MB",
               "--no-preload", "--no-embeddings")
    try:
        def loaded():
            return {m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"] if m["loaded"] and m["kind"] == "chat"}

        assert loaded() == set()
        client = s.client()
        assert client.completions.create(model="alpha", prompt="Hi", max_tokens=2).choices
        assert loaded() == {"alpha"}
        assert client.completions.create(model="beta", prompt="Hi", max_tokens=2).choices
        assert loaded() == {"beta"}
    finally:
        s.stop()


def test_a_hugging_face_folder_is_served_through_torch(tmp_path, tiny_hf_model):
    folder = tiny_hf_model("llama")
    s = Server(tmp_path, str(folder), "--no-embeddings", "--context", "256")
    try:
        name = folder.name
        reply = s.client().completions.create(model=name, prompt="hello world", max_tokens=5, temperature=0)
        assert reply.usage.completion_tokens == 5
        r = post(s, {"model": name, "prompt": "hello", "max_tokens": 3, "logprobs": 1}, "/v1/completions")
        assert r.status_code == 400 and "torch" in r.json()["error"]["message"]
    finally:
        s.stop()


# --- knowledge bases through the chat endpoint ------------------------------------------------
HANDBOOK = {
    "history.md": "# History\n\nThe Zorblat Institute was founded in 1987 in Penang by Dr. Amina Rahman.\n\n"
                  "It began as a small library of tide charts.\n",
    "canteen.txt": "The canteen of the Zorblat Institute serves laksa every Thursday.\n\nBreakfast starts at 7 am.\n",
}


@pytest.fixture(scope="module")
def handbook(tmp_path_factory, server):
    from kecil.rag.ingest import IngestConfig, ingest

    folder = tmp_path_factory.mktemp("handbook")
    for name, text in HANDBOOK.items():
        (folder / name).write_text(text)
    ingest(IngestConfig(folder=folder, kb="handbook"))
    return "handbook"


def test_rag_model_answers_with_citations(server, handbook):
    assert f"rag:{handbook}" in [m.id for m in server.client().models.list().data]
    r = post(server, {"model": f"rag:{handbook}", "messages": [{"role": "user", "content": "Who founded the Zorblat Institute?"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answered"] is True and body["citations"] and isinstance(body["withheld"], list)
    assert any("Amina Rahman" in c["text"] and c["file"].endswith("history.md") for c in body["citations"])
    # Named relative to the ingested folder: the server's own paths are not sent to clients.
    assert all(not c["file"].startswith("/") and c["file"].rsplit("/", 1)[-1] in HANDBOOK for c in body["citations"])
    assert body["choices"][0]["message"]["content"]


def test_rag_through_the_kb_field_streams_and_refuses_what_it_does_not_cover(server, handbook):
    client = server.client()
    events = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What does the canteen serve on Thursday?"}],
                                                 stream=True, extra_body={"kb": handbook}))
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    final = [e for e in events if e.choices and e.choices[0].finish_reason == "stop"][-1]
    assert text and any(c["file"].endswith("canteen.txt") for c in final.model_extra["citations"])
    assert all(not c["file"].startswith("/") and c["file"].rsplit("/", 1)[-1] in HANDBOOK
               for c in final.model_extra["citations"])
    refused = post(server, {"model": f"rag:{handbook}", "messages": [{"role": "user", "content": "How do volcanoes form on Mars?"}]}).json()
    assert refused["answered"] is False and "cannot answer" in refused["choices"][0]["message"]["content"]
    missing = post(server, {"model": "rag:no-such-kb", "messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 404 and "kecil rag ingest" in missing.json()["error"]["message"]


def test_prompts_reach_the_log_only_when_asked(tmp_path):
    s = Server(tmp_path, "--log-requests", "--no-embeddings", "--context", "256")
    try:
        secret = "pelican-ledger-4411"
        assert chat(s.client(), f"Repeat this word: {secret}", max_tokens=8, temperature=0).choices
        assert secret in s.log.read_text()  # asked for: the prompt is in the server's log
        assert secret not in s.audit.read_text()  # the audit log never holds content
        # Ctrl-C: the server says it is stopping and that it stopped, and exits cleanly (uvicorn
        # re-raises the signal after shutting down on some runs, which kecil reports as 130).
        s.proc.send_signal(signal.SIGINT)
        assert s.proc.wait(30) in (0, 130)
        log = s.log.read_text()
        assert "kecil serve: stopping: finishing the requests in flight" in log and log.rstrip().endswith("kecil serve: stopped")
    finally:
        s.stop()
