"""Ingest on real files into real stores, each test on SQLite and on PostgreSQL (the `engine`
fixture): incremental runs, bad files, a killed ingest resumed, and searches running while an
ingest writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kecil.errors import KnowledgeBaseError
from kecil.rag.ingest import IngestConfig, ingest
from kecil.rag.retrieve import Retriever, SearchConfig
from kecil.rag.store import KnowledgeBase
from tests.rag.documents import broken_xml_docx, write_bad_folder, write_mixed_folder


def test_every_type_is_ingested_and_found(tmp_path, embedder, engine):
    phrases = write_mixed_folder(tmp_path / "docs")
    report = ingest(IngestConfig(tmp_path / "docs", engine.kb("mixed")), embedder=embedder)
    assert len(report.added) == len(phrases) and not report.skipped
    with Retriever(engine.kb("mixed"), embedder=embedder) as retriever:
        for name, phrase in phrases.items():
            hits = retriever.search(phrase, SearchConfig(k=1, method="bm25"))
            assert hits and hits[0].chunk.path.endswith(name) and phrase in hits[0].chunk.text, name


def test_second_run_reads_only_changes_and_drops_deleted_files(tmp_path, embedder, engine):
    kb, counts = engine.kb("incremental"), engine.counts
    docs = tmp_path / "docs"
    write_mixed_folder(docs)
    ingest(IngestConfig(docs, kb), embedder=embedder)
    before = counts(kb)
    again = ingest(IngestConfig(docs, kb), embedder=embedder)
    assert (again.added, again.updated, again.removed, again.chunks) == ([], [], [], 0) and again.unchanged == 7
    assert counts(kb) == before

    (docs / "notes.txt").write_text("The backup server was renamed to badger.\n")
    os.utime(docs / "guide.md", ns=(1, 1))  # touched, content unchanged: no re-chunking
    (docs / "staff.csv").unlink()
    third = ingest(IngestConfig(docs, kb), embedder=embedder)
    assert [p.rsplit("/", 1)[1] for p in third.updated] == ["notes.txt"]
    assert [p.rsplit("/", 1)[1] for p in third.removed] == ["staff.csv"]
    assert third.unchanged == 5 and third.chunks == 1
    after = counts(kb)
    assert after["files"] == 6 and after["chunks"] == after["vectors"] == after["terms"]
    with Retriever(kb, embedder=embedder) as retriever:
        assert not retriever.search("ferret", SearchConfig(method="bm25"))
        assert "badger" in retriever.search("badger", SearchConfig(k=1, method="bm25"))[0].chunk.text
        assert not retriever.search("Budi room", SearchConfig(method="bm25"))


def test_bad_files_are_skipped_and_reported_the_rest_ingested(tmp_path, embedder, engine):
    reasons = write_bad_folder(tmp_path / "bad", big_mb=200)
    report = ingest(IngestConfig(tmp_path / "bad", engine.kb("bad")), embedder=embedder)
    skipped = {path.rsplit("/", 1)[1]: why for path, why in report.skipped}
    assert set(skipped) == set(reasons)
    for name, word in reasons.items():
        assert word.lower() in skipped[name].lower(), (name, skipped[name])
    assert [p.rsplit("/", 1)[1] for p in report.added] == ["good.md"] and report.other_types == 1
    with Retriever(engine.kb("bad"), embedder=embedder) as retriever:
        assert "zebra" in retriever.search("zebra crossing", SearchConfig(k=1))[0].chunk.text


def test_one_bad_file_of_any_kind_does_not_stop_the_rest(tmp_path, embedder, engine):
    """Deep JSON, broken XML in a .docx and a file name that is not UTF-8, in one ingest with good files."""
    import json

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Good\n\nThe heron nests by the lake.\n")
    (docs / "deep.json").write_text("[" * 600 + '"the otter sleeps deep"' + "]" * 600)  # RecursionError before
    (docs / "deeper.json").write_text("[" * 100_000 + "]" * 100_000)
    (docs / "surrogate.json").write_text('{"note": "a lone \\ud800 beside the walrus"}')
    (docs / "nul.json").write_text('{"note": "padding\\u0000 beside the pelican"}')  # PostgreSQL's text refused it before
    broken_xml_docx(docs / "broken-xml.docx")  # lxml's XMLSyntaxError before
    odd = os.path.join(os.fsencode(docs), b"caf\xff\xfe.md")  # UnicodeEncodeError in SQLite before
    with open(odd, "wb") as handle:
        handle.write(b"# Odd name\n\nThe badger lives under an odd name.\n")

    report = ingest(IngestConfig(docs, engine.kb("one-bad")), embedder=embedder)
    skipped = {path.rsplit("/", 1)[1]: why for path, why in report.skipped}
    assert set(skipped) == {"deeper.json", "broken-xml.docx"}, skipped
    assert "nested too deeply" in skipped["deeper.json"] and ".docx" in skipped["broken-xml.docx"]
    shown = "caf\\xff\\xfe.md"  # the bad bytes escaped, as the report and citations show them
    assert sorted(p.rsplit("/", 1)[1] for p in report.added) == sorted(["good.md", "deep.json", "surrogate.json", "nul.json", shown])
    json.dumps(report.__dict__, ensure_ascii=False).encode("utf-8")  # printable as the CLI's --json does
    with Retriever(engine.kb("one-bad"), embedder=embedder) as retriever:
        hit = retriever.search("badger odd name", SearchConfig(k=1, method="bm25"))[0]
        assert hit.chunk.path == os.path.join(str(docs), shown)
        assert "otter" in retriever.search("otter sleeps", SearchConfig(k=1, method="bm25"))[0].chunk.text
        assert "\ufffd beside the walrus" in retriever.search("walrus", SearchConfig(k=1, method="bm25"))[0].chunk.text
        assert "padding beside the pelican" in retriever.search("pelican", SearchConfig(k=1, method="bm25"))[0].chunk.text

    again = ingest(IngestConfig(docs, engine.kb("one-bad")), embedder=embedder)  # the odd name was stored losslessly
    assert (again.added, again.updated, again.unchanged) == ([], [], 5)
    os.unlink(odd)
    third = ingest(IngestConfig(docs, engine.kb("one-bad")), embedder=embedder)
    assert [p.rsplit("/", 1)[1] for p in third.removed] == [shown] and engine.counts(engine.kb("one-bad"))["files"] == 4


def test_the_embedding_model_of_a_new_knowledge_base_follows_the_documents_language(tmp_path, embedder):
    """Thai and Indonesian documents get multilingual-e5-small unless told otherwise; English ones
    keep MiniLM; an English-only model given for them is ingested with a note saying so."""
    from kecil.rag.qa_sets import load_chatterbot
    from kecil.rag.qa_sets import write_corpus

    documents, _ = load_chatterbot({"thai": "th", "indonesian": "id"})
    folder = write_corpus(tmp_path / "th-id", documents)[0].parent
    report = ingest(IngestConfig(folder, "th-id"))
    assert report.embedder == "multilingual-e5-small" and report.added and not report.skipped
    assert "not English: embedding with multilingual-e5-small" in report.notes[0]
    with KnowledgeBase.open("th-id") as kb:
        assert kb.embedder_name == "multilingual-e5-small"

    told = ingest(IngestConfig(folder, "th-id-minilm"), embedder=embedder)
    assert told.embedder == "all-minilm-l6-v2" and "--embedder multilingual-e5-small" in told.notes[0]

    write_mixed_folder(tmp_path / "english")
    english = ingest(IngestConfig(tmp_path / "english", "english"))
    assert english.embedder == "all-minilm-l6-v2" and english.notes == []


def test_another_embedding_model_is_a_clear_error(tmp_path, embedder, engine):
    write_mixed_folder(tmp_path / "docs")
    ingest(IngestConfig(tmp_path / "docs", engine.kb("model-check")), embedder=embedder)
    with pytest.raises(KnowledgeBaseError, match="all-minilm-l6-v2.*multilingual-e5-small"):
        Retriever(engine.kb("model-check"), embedder="multilingual-e5-small")
    with pytest.raises(KnowledgeBaseError, match="built with the embedding model all-minilm-l6-v2"):
        ingest(IngestConfig(tmp_path / "docs", engine.kb("model-check"), embedder="multilingual-e5-small"))
    with KnowledgeBase.open(engine.kb("model-check")) as kb:
        with pytest.raises(KnowledgeBaseError, match="cannot be searched"):
            kb.check_embedder("all-minilm-l6-v2", 768)


SLOW_INGEST = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kecil.rag.ingest import IngestConfig, ingest
    # one text per batch, files committed every 8 chunks: there is plenty of "midway" to kill it in
    ingest(IngestConfig(Path(sys.argv[1]), sys.argv[2], batch_size=1, commit_chunks=8))
""")


def test_killed_ingest_resumes_without_duplicates_and_search_works_meanwhile(tmp_path, embedder, engine):
    kb, counts = engine.kb("resume"), engine.counts
    docs = tmp_path / "many"
    docs.mkdir()
    # Enough files that the child is still writing after the searches below, on a slow CI machine too
    # (60 once finished in that time: every file committed, the process not yet exited).
    total = 400
    for i in range(total):
        (docs / f"memo{i:03d}.md").write_text(f"# Memo {i}\n\nMemo number {i} is about project codename-{i}.\n\nIt was filed in room {100 + i}.\n")
    child = subprocess.Popen([sys.executable, "-c", SLOW_INGEST, str(docs), kb], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while counts(kb)["files"] < 8 and time.monotonic() < deadline:
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.02)
        # The ingest is writing: searches read the committed files meanwhile, without locking errors.
        with Retriever(kb, embedder=embedder) as retriever:
            for _ in range(5):
                assert retriever.search("project codename-0", SearchConfig(k=1))[0].chunk.text.count("codename-0") == 1
        assert child.poll() is None, "the ingest finished before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    partial = counts(kb)
    assert 8 <= partial["files"] < total
    assert partial["chunks"] == partial["vectors"] == partial["terms"]  # no half-written file

    report = ingest(IngestConfig(docs, kb), embedder=embedder)
    assert report.unchanged >= partial["files"] - 1 and len(report.added) == total - report.unchanged
    done = counts(kb)
    assert done["files"] == total and done["chunks"] == done["vectors"] == done["terms"] == total
    with Retriever(kb, embedder=embedder) as retriever:
        texts = [h.chunk.text for h in retriever.search("codename-59 room 159", SearchConfig(k=total, method="bm25"))]
        assert len(texts) == len(set(texts))  # no duplicates


def test_chunks_are_embedded_as_sentence_windows_unless_told_otherwise(tmp_path, embedder, engine):
    import numpy as np

    from kecil.rag.chunking import index_text, sentence_windows

    docs = tmp_path / "docs"
    docs.mkdir()
    facts = [f"The depot in town {i} opens at {i + 5} o'clock and keeps {i * 3} trucks." for i in range(30)]
    (docs / "depots.txt").write_text(" ".join(facts), encoding="utf-8")
    windowed = ingest(IngestConfig(docs, engine.kb("windows")), embedder=embedder)  # MiniLM: 2-sentence windows
    whole = ingest(IngestConfig(docs, engine.kb("whole"), window_sentences=0), embedder=embedder)
    assert windowed.chunks == whole.chunks >= 2 and whole.vectors == whole.chunks
    with KnowledgeBase.open(engine.kb("windows")) as kb:
        vectors, stored = kb.vectors(), kb.chunks([int(i) for i in kb.vectors().ids])
        expected = [sentence_windows(stored[int(i)].text, 2) for i in vectors.ids]
        assert windowed.vectors == len(vectors.matrix) == sum(map(len, expected)) > 4 * windowed.chunks
        first = stored[int(vectors.ids[0])]
        alone = embedder.embed([index_text(w, first.section) for w in expected[0]])
        # the same vectors as embedding the windows apart (bfloat16 sums differ a little with the batch's padding)
        assert np.einsum("ij,ij->i", vectors.matrix[: len(expected[0])], alone).min() > 0.999
    # a question on one sentence finds its chunk through that sentence's window
    with Retriever(engine.kb("windows"), embedder=embedder) as retriever:
        hit = retriever.search("When does the depot in town 17 open?", SearchConfig(k=1, method="dense"))[0]
        assert "town 17 opens at 22" in hit.chunk.text
