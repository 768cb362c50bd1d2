"""Two `kecil serve` processes, each with its own data folder (as two replicas on two machines),
answering from one knowledge base in PostgreSQL (KECIL_RAG_STORE): a document uploaded and
ingested through one is found through the other at once."""

from __future__ import annotations

import time

import httpx

from tests.serve.test_server import HANDBOOK, Server, post


def _upload_and_ingest(server: Server, kb: str, name: str) -> dict:
    assert httpx.put(f"{server.url}/kecil/kb/{kb}/files/{name}", content=HANDBOOK[name].encode(), timeout=30).status_code == 200
    job = httpx.post(f"{server.url}/kecil/kb/{kb}/ingest", timeout=30).json()
    deadline = time.monotonic() + 300
    while job["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
        job = httpx.get(f"{server.url}/kecil/ingests/{job['id']}", timeout=30).json()
    assert job["state"] == "done", job
    return job["report"]


def _ask(server: Server, kb: str, question: str) -> dict:
    r = post(server, {"model": f"rag:{kb}", "messages": [{"role": "user", "content": question}], "max_tokens": 40})
    assert r.status_code == 200, r.text
    return r.json()


def test_two_servers_share_one_postgresql_knowledge_base(tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv("KECIL_RAG_STORE", postgres_url)
    servers = []
    try:
        for side in ("a", "b"):
            monkeypatch.setenv("KECIL_HOME", str(tmp_path / side))  # nothing shared on disk
            servers.append(Server(tmp_path, "--context", "1024"))
        a, b = servers
        assert _upload_and_ingest(a, "shared", "history.md")["added"] == ["history.md"]
        assert "rag:shared" in [m["id"] for m in httpx.get(f"{b.url}/v1/models", timeout=30).json()["data"]]
        answer = _ask(b, "shared", "Who founded the Zorblat Institute?")
        assert answer["answered"] and any("Amina Rahman" in c["text"] and c["file"].endswith("history.md") for c in answer["citations"])

        assert _upload_and_ingest(b, "shared", "canteen.txt")["added"] == ["canteen.txt"]  # a's document stays
        answer = _ask(a, "shared", "What does the canteen serve on Thursday?")
        assert answer["answered"] and any(c["file"].endswith("canteen.txt") for c in answer["citations"])
        assert _ask(a, "shared", "Who founded the Zorblat Institute?")["answered"]
    finally:
        for s in servers:
            s.stop()
