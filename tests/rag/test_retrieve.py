"""Retrieval quality on the SQuAD knowledge base (real model; real SQLite, and real PostgreSQL through
the `engine` fixture: the same scores from both), filters, and the CLI."""

from __future__ import annotations

import json

import pytest

from kecil.errors import ConfigError
from kecil.rag.evaluate import evaluate, first_answer_rank, read_qa
from kecil.rag.retrieve import DenseScores, Retriever, SearchConfig, fuse
from tests.cli_helpers import assert_clean_error, kecil


@pytest.fixture(scope="module")
def results(squad_kb, embedder):
    name, _, items = squad_kb
    configs = {m: SearchConfig(k=5, method=m) for m in ("bm25", "dense", "hybrid")}
    configs |= {f"hybrid-{f}": SearchConfig(k=5, fusion=f) for f in ("convex", "rrf")}
    with Retriever(name, embedder=embedder) as retriever:
        return {label: evaluate(retriever, items, config) for label, config in configs.items()}


def test_hybrid_recall_is_at_least_each_single_method(results):
    hybrid, bm25, dense = results["hybrid"], results["bm25"], results["dense"]
    assert hybrid.questions == 170
    assert hybrid.recall >= bm25.recall and hybrid.recall >= dense.recall, {m: r.recall for m, r in results.items()}
    assert hybrid.recall >= 0.9 and hybrid.mrr >= 0.75


def test_both_fusions_beat_each_single_method_and_convex_is_the_minilm_default(results):
    # measured on these 170: BM25 0.935, dense 0.924, convex 0.976 (MRR 0.871), RRF k=5 / 1.5 0.976 (MRR 0.889)
    assert results["hybrid"].ranks == results["hybrid-convex"].ranks  # MiniLM's default is convex
    single = max(results["bm25"].recall, results["dense"].recall)
    for fusion in ("hybrid-convex", "hybrid-rrf"):
        assert results[fusion].recall >= single, {m: r.recall for m, r in results.items()}


def test_convex_fusion_is_bm25_over_its_best_plus_the_cosine_z_score():
    import numpy as np

    # cosines of chunks 1..4 (mean 0.4, standard deviation sqrt(0.05))
    scores = DenseScores(np.array([1, 2, 3, 4]), np.array([0.7, 0.5, 0.3, 0.1], np.float32))
    mean, std = scores.spread()
    assert mean == pytest.approx(0.4) and std == pytest.approx(0.05 ** 0.5)
    bm25 = [(4, 8.0), (3, 2.0)]
    rows = fuse(bm25, scores.top(2), SearchConfig(fusion="convex", alpha=0.5), scores)
    z = {i: (c - 0.4) / 0.05 ** 0.5 for i, c in zip([1, 2, 3, 4], [0.7, 0.5, 0.3, 0.1])}
    expected = {1: 0.5 * z[1], 2: 0.5 * z[2], 3: 0.5 * 2 / 8 + 0.5 * z[3], 4: 0.5 * 1 + 0.5 * z[4]}
    assert [r[0] for r in rows] == sorted(expected, key=lambda i: -expected[i])
    assert {r[0]: r[1] for r in rows} == pytest.approx(expected, abs=1e-6)
    assert {r[0]: r[2:] for r in rows} == {1: (None, 1), 2: (None, 2), 3: (2, None), 4: (1, None)}
    # alpha 1: BM25's order, then the dense-only finds; alpha 0: the cosine order
    assert [r[0] for r in fuse(bm25, scores.top(2), SearchConfig(fusion="convex", alpha=1.0), scores)][:2] == [4, 3]
    assert [r[0] for r in fuse(bm25, scores.top(2), SearchConfig(fusion="convex", alpha=0.0), scores)] == [1, 2, 3, 4]


def test_hybrid_search_computes_one_dense_product(squad_sqlite, embedder, monkeypatch):
    from kecil.rag import dense

    products = []
    real = dense.similarities
    monkeypatch.setattr(dense, "similarities", lambda matrix, vector: products.append(1) or real(matrix, vector))
    name, _, _ = squad_sqlite
    with Retriever(name, embedder=embedder) as retriever:
        for fusion in ("convex", "rrf"):
            products.clear()
            hits = retriever.search("Which team won Super Bowl 50?", SearchConfig(k=5, fusion=fusion))
            assert len(products) == 1 and len(hits) == 5
            assert all(h.similarity is not None for h in hits)  # BM25's finds carry their cosine too


def test_first_answer_rank_is_case_insensitive():
    assert first_answer_rank(["nothing", "The DENVER Broncos won"], ("Denver Broncos",)) == 2
    assert first_answer_rank(["nothing"], ("x y",)) is None


def test_fusion_rewards_agreement_and_weights_count():
    both = fuse([(1, 9.0), (2, 8.0)], [(2, 0.9), (3, 0.8)], SearchConfig(fusion="rrf"))
    assert [row[0] for row in both] == [2, 1, 3] and both[0][2:] == (2, 1)
    dense_heavy = fuse([(1, 9.0)], [(3, 0.8)], SearchConfig(fusion="rrf", bm25_weight=0.5, dense_weight=1.0))
    assert [row[0] for row in dense_heavy] == [3, 1]


def test_path_filter_keeps_one_file_or_folder(squad_kb, embedder):
    name, folder, _ = squad_kb
    article = sorted(folder.glob("*.md"))[-1]
    with Retriever(name, embedder=embedder) as retriever:
        for method in ("bm25", "dense", "hybrid"):
            hits = retriever.search("who was the first president", SearchConfig(k=5, method=method, path=str(article)))
            assert hits and all(h.chunk.path == str(article) for h in hits), method
        assert len(retriever.search("the", SearchConfig(k=3, path=str(folder)))) == 3
        assert retriever.search("the", SearchConfig(k=3, path=str(folder / "nowhere"))) == []


def test_cli_search_eval_list_stats_remove(squad_sqlite, tmp_path):
    name, _, items = squad_sqlite
    done = kecil("rag", "search", "Which team won Super Bowl 50?", "--kb", name, "--k", "3", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 3 and rows[0]["file"].endswith(".md") and rows[0]["lines"][0] >= 1 and rows[0]["score"] > 0
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": i.question, "answers": list(i.answers)}) + "\n" for i in items[:20]))
    assert len(read_qa(qa)) == 20
    done = kecil("rag", "eval", "--kb", name, "--qa", str(qa), "--method", "bm25", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["questions"] == 20 and 0 < result["recall@5"] <= 1 and 0 < result["mrr"] <= result["recall@5"]
    assert name in kecil("rag", "list").stdout
    assert json.loads(kecil("rag", "stats", name, "--json").stdout)["chunks"] >= 100
    assert_clean_error(kecil("rag", "search", "x", "--kb", "no-such-kb"), "no knowledge base", "kecil rag ingest")
    assert_clean_error(kecil("rag", "search", "x", "--kb", name, "--method", "magic"), "hybrid")
    assert_clean_error(kecil("rag", "search", "x", "--kb", name, "--fusion", "magic"), "convex")
    done = kecil("rag", "eval", "--kb", name, "--qa", str(qa), "--fusion", "rrf")
    assert done.returncode == 0 and done.stdout.startswith(f"{name} (hybrid rrf, 20 questions)"), done
    bad_qa = tmp_path / "bad.jsonl"
    bad_qa.write_text('{"question": "q"}\n')
    assert_clean_error(kecil("rag", "eval", "--kb", name, "--qa", str(bad_qa)), "line 1")


def test_cli_ingest_and_remove(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nThe quarterly report is due on the fifth.\n")
    (tmp_path / "docs" / "b.txt").write_bytes(b"caf\xe9 au lait")
    done = kecil("rag", "ingest", str(tmp_path / "docs"), "--kb", "cli-kb")
    assert done.returncode == 0, done.stderr
    assert "1 files added" in done.stdout and "skipped" in done.stderr and "b.txt" in done.stderr
    assert done.stdout.startswith("cli-kb: "), done.stdout  # the result only: no bar's blank line before it
    assert "removed" in kecil("rag", "remove", "cli-kb", "--yes").stdout
    assert "cli-kb" not in kecil("rag", "list").stdout
    empty = kecil("rag", "list", env={"KECIL_HOME": str(tmp_path / "empty-home")})
    assert empty.returncode == 0 and not empty.stdout and "kecil rag ingest" in empty.stderr, empty


def test_bm25_leaves_out_terms_most_chunks_hold(squad_kb, embedder):
    name, _, _ = squad_kb
    with Retriever(name, embedder=embedder) as retriever:
        terms = retriever.selective_terms("What is the name of the stadium where Super Bowl 50 was played?", 0.2)
        assert "stadium" in terms and "the" not in terms and "of" not in terms
        assert sorted(retriever.selective_terms("the of and", 0.2)) == ["and", "of", "the"]  # all common: the rarest 3 stay
        assert retriever.selective_terms("the stadium", 1.0) == ["the", "stadium"]
        assert retriever.bm25("the of a", 5)  # only common terms: the rarest are kept, never nothing


def test_dense_scores_are_each_chunks_best_vector(squad_kb, embedder):
    import numpy as np

    from kecil.rag.dense import similarities

    name, _, _ = squad_kb
    with Retriever(name, embedder=embedder) as retriever:
        vectors = retriever.kb.vectors()
        assert len(vectors.matrix) > len(vectors.ids)  # MiniLM chunks are embedded as sentence windows
        vector = retriever.query_vector("Which team won Super Bowl 50?")
        rows = vectors.matrix @ vector
        np.testing.assert_allclose(similarities(vectors.matrix, vector), rows, atol=1e-5)
        ends = list(vectors.starts[1:]) + [len(rows)]
        per_chunk = np.array([rows[a:b].max() for a, b in zip(vectors.starts, ends)])
        hits = retriever.search("Which team won Super Bowl 50?", SearchConfig(k=5, method="dense"))
        best = np.argsort(-per_chunk)[:5]
        assert [h.chunk.id for h in hits] == [int(vectors.ids[i]) for i in best]
        assert [h.similarity for h in hits] == pytest.approx([float(per_chunk[i]) for i in best], abs=1e-5)


def test_bm25_order_is_fts5_rank_order(squad_kb, squad_sqlite, embedder):
    """Each engine's BM25 gives FTS5's own ranking (read straight from the SQLite file), and the
    same scores: PostgreSQL's postings reproduce FTS5's bm25() over the same terms."""
    import sqlite3

    from kecil.rag.kb_names import kb_path
    from kecil.rag.tokenise import fts_query, query_terms

    name, _, items = squad_kb
    reference = sqlite3.connect(kb_path(squad_sqlite[0]))
    with Retriever(name, embedder=embedder) as retriever:
        try:
            for item in items[:20]:
                expected = reference.execute("SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT 20",
                                             (fts_query(item.question),)).fetchall()
                found = retriever.kb.bm25(query_terms(item.question), 20)
                chunks = retriever.kb.chunks([i for i, _ in found])
                assert len(found) == len(expected), item.question
                assert [s for _, s in found] == pytest.approx([s for _, s in expected], rel=1e-9), item.question
                assert [chunks[i].text for i, _ in found] == [_text(reference, i) for i, _ in expected], item.question
        finally:
            reference.close()


def _text(db, chunk_id: int) -> str:
    return db.execute("SELECT text FROM chunks WHERE id = ?", (chunk_id,)).fetchone()[0]


def test_term_counts_follow_writes(tmp_path, engine):
    import numpy as np

    from kecil.rag.chunking import TextChunk
    from kecil.rag.store import KnowledgeBase

    def add(kb, path, texts):
        kb.replace_file(path, "0" * 64, 1, 1, [TextChunk(t, "", 1, 1, None) for t in texts], np.eye(len(texts), 4, dtype=np.float32))

    with KnowledgeBase.open(engine.kb("counts"), create=True, embedder="test", dimension=4) as kb:
        add(kb, "/a.txt", ["red apple", "green apple", "red car"])
        assert kb.term_chunks(["apple", "red", "blue"]) == ({"apple": 2, "red": 2, "blue": 0}, 3)
        assert kb.term_chunks(["apple"]) == ({"apple": 2}, 3)  # remembered
        add(kb, "/b.txt", ["blue apple"])  # a write: the remembered counts are stale
        assert kb.term_chunks(["apple", "blue"]) == ({"apple": 3, "blue": 1}, 4)
        kb.remove_files(["/a.txt"])
        assert kb.term_chunks(["apple", "red", "blue"]) == ({"apple": 1, "red": 0, "blue": 1}, 1)


def test_fusion_defaults_follow_the_embedding_model_and_explicit_settings_win():
    from dataclasses import astuple

    from kecil.rag.retrieve import FUSION

    def settings(config):
        return config.fusion, config.alpha, config.rrf_k, config.bm25_weight

    minilm = SearchConfig().for_embedder("all-minilm-l6-v2")
    e5 = SearchConfig().for_embedder("multilingual-e5-small")
    assert settings(minilm) == astuple(FUSION["all-minilm-l6-v2"]) and minilm.fusion == "convex"
    assert settings(e5) == astuple(FUSION["multilingual-e5-small"]) and e5.fusion == "rrf"
    assert SearchConfig(rrf_k=60, bm25_weight=1.0).for_embedder("multilingual-e5-small").rrf_k == 60
    assert SearchConfig(fusion="rrf").for_embedder("all-minilm-l6-v2").fusion == "rrf"
    assert settings(SearchConfig().for_embedder("some-other-model")) == settings(minilm)
    # When the two lists disagree on the first place, RRF with MiniLM's weights sides with BM25, e5's with dense.
    bm25, dense = [(1, 9.0)], [(3, 0.9)]
    assert fuse(bm25, dense, SearchConfig(fusion="rrf").for_embedder("all-minilm-l6-v2"))[0][0] == 1
    assert fuse(bm25, dense, e5)[0][0] == 3
    for bad in ({"fusion": "max"}, {"alpha": 1.5}, {"alpha": -0.1}):
        with pytest.raises(ConfigError):
            SearchConfig(**bad)


def test_a_chunk_with_several_vectors_is_scored_by_its_best(tmp_path, engine):
    import numpy as np

    from kecil.rag.chunking import TextChunk
    from kecil.rag.store import KnowledgeBase

    eye = np.eye(4, dtype=np.float32)
    chunks = [TextChunk(t, "", 1, 1, None) for t in ("first", "second", "third")]
    with KnowledgeBase.open(engine.kb("several-vectors"), create=True, embedder="test", dimension=4) as kb:
        # chunk 1: two vectors; chunk 2: one vector given as a row; chunk 3: three vectors
        kb.replace_file("/a.txt", "0" * 64, 1, 1, chunks, [eye[[0, 1]], eye[2], eye[[3, 3, 0]] * 0.5])
        vectors = kb.vectors()
        assert len(vectors.matrix) == 6 and list(vectors.starts) == [0, 2, 3]
        assert vectors.best(vectors.matrix @ eye[1]).tolist() == [1.0, 0.0, 0.0]
        assert vectors.best(vectors.matrix @ eye[0]).tolist() == [1.0, 0.0, 0.5]  # chunk 3's best is its last vector
        assert kb.stats()["vectors"] == 6 and kb.stats()["chunks"] == 3
        kb.replace_file("/b.txt", "1" * 64, 1, 1, chunks[:1], [eye[[2, 3]]])  # appended to the matrix in memory
        vectors = kb.vectors()
        assert list(vectors.starts) == [0, 2, 3, 6] and vectors.best(vectors.matrix @ eye[3]).tolist() == [0.0, 0.0, 0.5, 1.0]
        kb.remove_files(["/a.txt"])  # a removal: read again
        vectors = kb.vectors()
        assert len(vectors.ids) == 1 and list(vectors.starts) == [0] and len(vectors.matrix) == 2
        with pytest.raises(ValueError, match="vectors of 4 numbers"):
            kb.replace_file("/c.txt", "2" * 64, 1, 1, chunks[:1], [np.zeros(3, np.float32)])
        assert kb.stats()["chunks"] == 1  # the refused file left nothing behind
