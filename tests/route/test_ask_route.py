"""`kecil ask --route FILE`: a knowledge-base answer routed like any other, run as a user runs it
(the real CLI, a real knowledge base, the real small model, a real loopback endpoint that records
every byte). The retrieved chunks are part of what leaves the machine, so they are redacted too."""

from __future__ import annotations

import json

import pytest

from kecil.rag.ingest import IngestConfig, ingest
from kecil.route.routefile import RouteFile, Tier, save_route
from tests.cli_helpers import kecil
from tests.route.endpoint import Endpoint
from tests.route.test_router import QUICK, UNSURE

EMAIL = "nurul.hidayah@klinik-velmora.example.my"
HANDBOOK = f"""The Velmora Clinic night desk

Night-shift questions about medication go to the duty pharmacist, Nurul Hidayah.
Write to her at {EMAIL} before 22:00; after that, page the ward sister.
The night desk closes its dispensary window at 23:30 every day.
"""


@pytest.fixture(scope="module")
def handbook_kb(tmp_path_factory, kecil_home):
    folder = tmp_path_factory.mktemp("handbook")
    (folder / "night-desk.md").write_text(HANDBOOK, encoding="utf-8")
    ingest(IngestConfig(folder, "velmora-night"))
    return "velmora-night"


@pytest.fixture
def remote():
    endpoint = Endpoint("ok")  # echoes the grounded prompt it got: what left the machine comes back
    yield endpoint
    endpoint.close()


def route_file(tmp_path, url: str):
    # A Malay name that English NER misses: the route file's own list of names covers it.
    plan = RouteFile("kb-test", (Tier("small", model="smollm2-135m", threshold=0.9),
                                 Tier("cloud", url=url, remote_model="big", timeout=30, retries=0)),
                     allow_remote=True, combiner=UNSURE, confidence=QUICK, max_tokens=8, redaction={"names": ["Nurul Hidayah"]})
    return save_route(plan, tmp_path / "route.json")


def test_an_unsure_kb_answer_escalates_with_its_chunks_redacted_and_cites_them(tmp_path, handbook_kb, remote, kecil_home):
    done = kecil("ask", "--kb", handbook_kb, "--route", str(route_file(tmp_path, remote.url)), "--json",
                 "Who answers night-shift medication questions, and how do I write to her?")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["answered"] and reply["route"]["routed_to"] == "cloud"
    assert reply["citations"] and reply["citations"][0]["file"].endswith("night-desk.md")
    # The chunk went out (the remote model needs it to answer) but not the address or the name in it.
    sent = remote.everything()
    assert len(remote.received) == 1 and "dispensary window" in sent
    assert EMAIL not in sent and "nurul" not in sent.lower() and "hidayah" not in sent.lower()
    assert EMAIL in reply["text"] and "Nurul Hidayah" in reply["text"]  # the echo comes back restored for the user
    audit = (kecil_home / "route" / "audit.jsonl").read_text().splitlines()
    assert audit and json.loads(audit[-1])["target"] == "cloud" and EMAIL not in audit[-1] and "Hidayah" not in audit[-1]


def test_escalate_none_keeps_a_kb_answer_on_the_machine(tmp_path, handbook_kb, remote):
    done = kecil("ask", "--kb", handbook_kb, "--route", str(route_file(tmp_path, remote.url)), "--escalate", "none",
                 "When does the dispensary window close?")
    assert done.returncode == 0, done.stderr
    assert remote.received == []
    assert "answered by small (smollm2-135m" in done.stderr and "Sources:" in done.stdout and "night-desk.md" in done.stdout


def test_a_question_the_kb_does_not_cover_is_refused_without_asking_anyone(tmp_path, handbook_kb, remote):
    done = kecil("ask", "--kb", handbook_kb, "--route", str(route_file(tmp_path, remote.url)), "--json",
                 "What is the boiling point of mercury on Mars?")
    assert done.returncode == 0, done.stderr
    assert not json.loads(done.stdout)["answered"] and remote.received == []
