"""`kecil rag export` / `kecil rag import`: SQLite -> file -> PostgreSQL -> file keeps every file,
chunk, source position and vector; and the CLI's ingest, search and ask on a postgresql:// URL."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kecil.rag.store import KnowledgeBase
from kecil.rag.transfer import export_kb, import_kb
from tests.cli_helpers import assert_clean_error, kecil
from tests.rag.documents import write_mixed_folder


def contents(kb: KnowledgeBase) -> dict:
    """Everything a knowledge base holds, keyed by file, ids left out (each store numbers its own)."""
    out = {}
    for path, record in kb.files().items():
        chunks, vectors = kb.file_chunks(path)
        out[path] = (record.sha256, record.size, record.mtime_ns, chunks, [v.tolist() for v in vectors])
    return out


def test_sqlite_to_postgresql_and_back_keeps_everything(squad_sqlite, postgres_url, tmp_path):
    name = squad_sqlite[0]
    url = f"{postgres_url}&kb=moved"
    first = export_kb(name, tmp_path / "squad.kb")
    there = import_kb(tmp_path / "squad.kb", url)
    assert first.files == there.files == 10 and first.chunks == there.chunks and first.vectors == there.vectors > there.chunks
    back = export_kb(url, tmp_path / "back.kb")
    assert back.vectors == first.vectors
    with KnowledgeBase.open(name) as original, KnowledgeBase.open(url) as moved:
        held = contents(original)
        assert contents(moved) == held and moved.embedder_name == original.embedder_name
        assert moved.stats()["vectors"] == original.stats()["vectors"]
    from kecil.rag.store import open_file

    with open_file(tmp_path / "back.kb") as returned:
        assert contents(returned) == held
    again = import_kb(tmp_path / "squad.kb", url)  # resumable: what is there is left alone
    assert again.files == 0 and again.unchanged == first.files
    with pytest.raises(Exception, match="already exists"):
        export_kb(name, tmp_path / "squad.kb")


def test_cli_on_a_postgresql_url_ingests_searches_exports_and_imports(tmp_path, postgres_url):
    url = f"{postgres_url}&kb=cli-pg"
    phrases = write_mixed_folder(tmp_path / "docs")
    done = kecil("rag", "ingest", str(tmp_path / "docs"), "--kb", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("postgresql://kecil@/kecil_tests?kb=cli-pg: ") and f"{len(phrases)} files added" in done.stdout
    name, phrase = next(iter(phrases.items()))
    found = [json.loads(line) for line in kecil("rag", "search", phrase, "--kb", url, "--k", "1", "--json").stdout.splitlines()]
    assert found and found[0]["file"].endswith(name) and phrase in found[0]["text"]
    assert json.loads(kecil("rag", "stats", url, "--json").stdout)["files"] == len(phrases)
    exported = kecil("rag", "export", url, str(tmp_path / "cli.kb"), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["files"] == len(phrases)
    imported = kecil("rag", "import", str(tmp_path / "cli.kb"), "--kb", "cli-local")
    assert imported.returncode == 0 and f"{len(phrases)} files copied" in imported.stdout, imported
    local = [json.loads(line) for line in kecil("rag", "search", phrase, "--kb", "cli-local", "--k", "1", "--json").stdout.splitlines()]
    assert [(r["file"], r["lines"], r["text"]) for r in local] == [(r["file"], r["lines"], r["text"]) for r in found]
    assert_clean_error(kecil("rag", "import", str(tmp_path / "nothing.kb"), "--kb", url), "does not exist")
    assert "removed" in kecil("rag", "remove", url, "--yes").stdout
    assert_clean_error(kecil("rag", "stats", url), "no knowledge base named 'cli-pg'")


def test_a_vector_survives_the_round_trip_bit_for_bit(postgres_url, tmp_path):
    from kecil.rag.chunking import TextChunk

    rng = np.random.default_rng(24)
    vectors = [rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)]
    chunks = [TextChunk("สวัสดีครับ 你好世界 नमस्ते", "Greetings > Thai", 3, 4, 2), TextChunk("second", "", 5, 5, None)]
    url = f"{postgres_url}&kb=bits"
    with KnowledgeBase.open(url, create=True, embedder="test", dimension=8) as kb:
        kb.replace_file("/docs/caf\udcff.md", "f" * 64, 10, 20, chunks, vectors)
    export_kb(url, tmp_path / "bits.kb")
    from kecil.rag.store import open_file

    with open_file(tmp_path / "bits.kb") as copy:
        assert list(copy.files()) == ["/docs/caf\udcff.md"]  # a name that is not UTF-8 keeps its bytes
        got_chunks, got_vectors = copy.file_chunks("/docs/caf\udcff.md")
    assert got_chunks == chunks
    assert [v.tobytes() for v in got_vectors] == [vectors[0].tobytes(), vectors[1].reshape(1, 8).tobytes()]


def test_importing_a_file_that_is_no_knowledge_base_asks_for_an_export_and_creates_nothing(tmp_path):
    """A bare file given to import is not a named knowledge base: the advice is to give an export,
    not to `kecil rag remove` a knowledge base of the file's name."""
    from kecil.errors import KecilError
    from kecil.rag.store import kb_exists

    junk = tmp_path / "notes.sqlite"
    junk.write_bytes(b"not a database " * 300)
    with pytest.raises(KecilError, match=r"not a usable knowledge base .*give a file that `kecil rag export NAME FILE` wrote") as error:
        import_kb(junk, "imported-junk")
    assert "kecil rag remove" not in str(error.value)
    assert not kb_exists("imported-junk")
    assert junk.read_bytes() == b"not a database " * 300


def test_importing_another_sqlite_database_leaves_it_as_it_was(tmp_path):
    """`kecil rag import` only reads its file: a user's unrelated SQLite database gets no kecil
    tables and keeps its permissions."""
    import sqlite3

    from kecil.errors import KecilError

    other = tmp_path / "inventory.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE loaves (name TEXT)")
    other.chmod(0o644)
    before = other.read_bytes()
    with pytest.raises(KecilError, match=r"has no kecil tables.*kecil rag export NAME FILE"):
        import_kb(other, "imported-inventory")
    assert other.read_bytes() == before and other.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "inventory.db-wal").exists()
