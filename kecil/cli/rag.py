"""`kecil rag ...` (knowledge bases of your documents) and `kecil ask` (grounded answers from one) (kecil/rag)."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, Optional

import typer

from kecil.cli.common import AsJson, Backend, Context, Yes, confirm, err, limits_note
from kecil.cli.options import config_options
from kecil.rag.ask import AskConfig
from kecil.rag.chunking import ChunkConfig
from kecil.rag.ingest import IngestConfig
from kecil.rag.retrieve import SearchConfig

rag_app = typer.Typer(help="Knowledge bases of your documents: ingest, search, evaluate, and `kecil ask` them.", no_args_is_help=True)
KbName = Annotated[str, typer.Option("--kb", help="Knowledge base: a name (a SQLite file under $KECIL_HOME/kb, or in $KECIL_RAG_STORE when set) or a postgresql://USER@HOST/DATABASE URL.")]
KbArg = Annotated[str, typer.Argument(help="Knowledge base: a name or a postgresql:// URL.")]
Rerank = Annotated[bool, typer.Option("--rerank", help="Reorder the best 10 candidates by how likely the language model finds the question after each (slower; see docs/benchmarks.md).")]


def _search(options: dict[str, Any], rerank: bool) -> SearchConfig:
    from kecil.rag.rerank import RerankConfig

    return SearchConfig(**options, rerank=RerankConfig() if rerank else None)


@config_options(IngestConfig, build=False, arguments=("folder",), exclude=("kb", "chunking"), into="options")
@config_options(ChunkConfig, into="chunking", flags={"max_tokens": "--chunk-tokens", "overlap_tokens": "--overlap"})
def ingest(options: dict[str, Any], chunking: ChunkConfig, kb: KbName, as_json: AsJson = False) -> None:
    """Add a folder of documents to a knowledge base; a second run only re-reads what changed."""
    from rich.progress import Progress

    from kecil.rag.ingest import ingest as run_ingest

    config = IngestConfig(**options, kb=kb, chunking=chunking)
    with Progress(transient=True, disable=as_json, console=_bar_console()) as bar:
        task = bar.add_task("ingesting", total=None)
        report = run_ingest(config, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        print(json.dumps({**report.__dict__, "skipped": [{"path": p, "reason": r} for p, r in report.skipped]}))
        return
    for path, reason in report.skipped:
        err(f"skipped {path}: {reason}")
    # The rate means nothing for a handful of chunks (it would round to 0 or read as a speed claim).
    rate = f" ({report.chunks / report.seconds:.0f} chunks/s)" if report.chunks >= 20 and report.seconds > 0 else ""
    print(f"{report.kb}: {len(report.added)} files added, {len(report.updated)} updated, {report.unchanged} unchanged, "
          f"{len(report.removed)} removed, {len(report.skipped)} skipped; {report.chunks} chunks written in {report.seconds:.1f} s{rate}")
    if report.other_types:
        print(f"{report.other_types} files of other types were left out")
    for note in report.notes:  # the embedding model chosen for the documents' language, or a mismatch
        err(f"note: {note}")


def _bar_console():
    """Where a transient bar draws: stderr, so a redirected stdout holds only the result (a bar on
    stdout left a blank first line there when it was not a terminal)."""
    from rich.console import Console

    return Console(stderr=True)


def _where(citation_or_chunk) -> str:
    from kecil.rag.ask import Citation
    from kecil.rag.loaders import unit_of

    c = citation_or_chunk
    if not isinstance(c, Citation):
        c = Citation(0, c.path, c.page, c.start, c.end, unit_of(c.path), c.section, c.text, 0.0)
    where = c.where
    cwd = os.getcwd() + os.sep
    return where[len(cwd):] if where.startswith(cwd) else where


@config_options(SearchConfig, build=False, only=("k", "method", "path", "fusion"), into="options")
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    options: dict[str, Any],
    kb: KbName,
    rerank: Rerank = False,
    as_json: AsJson = False,
) -> None:
    """Show the chunks that best match QUERY, with scores and sources."""
    from kecil.rag.retrieve import search as run_search

    hits = run_search(query, kb, _search(options, rerank))
    if as_json:
        for rank, h in enumerate(hits, start=1):
            c = h.chunk
            print(json.dumps({"rank": rank, "score": h.score, "similarity": h.similarity, "bm25_rank": h.bm25_rank, "dense_rank": h.dense_rank, "rerank_score": h.rerank_score,
                              "file": c.path, "page": c.page, "lines": [c.start, c.end], "section": c.section, "text": c.text}, ensure_ascii=False))
        return
    if not hits:
        print("no matching chunks")
    for rank, h in enumerate(hits, start=1):
        sim = f", similarity {h.similarity:.2f}" if h.similarity is not None else ""
        print(f"[{rank}] {_where(h.chunk)}  (score {h.score:.4g}{sim})")
        text = h.chunk.text if len(h.chunk.text) <= 400 else h.chunk.text[:400] + " ..."
        print("    " + text.replace("\n", "\n    ") + "\n")


@config_options(SearchConfig, build=False, only=("k", "method", "fusion"), into="options")
def evaluate(
    options: dict[str, Any],
    kb: KbName,
    qa: Annotated[str, typer.Option("--qa", help='JSON Lines file: {"question": ..., "answers": [...]} per line.')],
    rerank: Rerank = False,
    as_json: AsJson = False,
) -> None:
    """recall@k and MRR of a knowledge base on questions with known answers."""
    from pathlib import Path

    from rich.progress import Progress

    from kecil.rag.evaluate import evaluate_kb

    config = _search(options, rerank)
    with Progress(transient=True, disable=as_json, console=_bar_console()) as bar:
        task = bar.add_task("questions", total=None)
        result = evaluate_kb(kb, Path(qa), config, progress=lambda n: bar.advance(task, n))
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    fusion = f" {config.fusion}" if config.fusion and config.method == "hybrid" else ""
    print(f"{kb} ({config.method}{fusion}{' + rerank' if rerank else ''}, {result.questions} questions): recall@{config.k} {result.recall:.3f}, MRR {result.mrr:.3f}, median {result.median_ms:.1f} ms per query")


def list_kbs(as_json: AsJson = False) -> None:
    """The knowledge bases on this machine."""
    from kecil.rag.store import KnowledgeBase, list_kbs as names

    found = names()
    if not found and not as_json:
        err("no knowledge bases yet: `kecil rag ingest FOLDER --kb NAME` makes one")
    for name in found:
        with KnowledgeBase.open(name) as opened:
            s = opened.stats()
        print(json.dumps(s) if as_json else f"{name}: {s['files']} files, {s['chunks']} chunks, {s['embedder']}")


def stats(name: KbArg, as_json: AsJson = False) -> None:
    """Files, chunks, embedding model and size of a knowledge base."""
    from kecil.rag.store import KnowledgeBase

    with KnowledgeBase.open(name) as opened:
        s = opened.stats()
    if as_json:
        print(json.dumps(s))
        return
    for key, value in s.items():
        print(f"{key}: {value}")


def remove(name: KbArg, yes: Yes = False) -> None:
    """Delete a knowledge base (its documents on disk are not touched). Asks first; --yes when not on a terminal."""
    from kecil.rag.store import kb_exists, locate, remove_kb

    if not kb_exists(name):
        remove_kb(name)  # raises the error that lists the knowledge bases there are
    confirm(f"remove the knowledge base {name!r} ({locate(name).shown})", yes=yes)
    print(f"removed {remove_kb(name)}")


def export(
    name: KbArg,
    file: Annotated[str, typer.Argument(help="The file to write (a SQLite knowledge base; must not exist).")],
    as_json: AsJson = False,
) -> None:
    """Copy a knowledge base (SQLite or PostgreSQL) into one portable file: every chunk, source and vector."""
    from pathlib import Path

    from kecil.rag.transfer import export_kb

    _print_transfer(export_kb(name, Path(file)), as_json)


def import_(
    file: Annotated[str, typer.Argument(help="A file `kecil rag export` wrote (or any SQLite knowledge base).")],
    kb: KbName,
    as_json: AsJson = False,
) -> None:
    """Copy a portable file into a knowledge base (made if missing), e.g. --kb postgresql://USER@HOST/DATABASE."""
    from pathlib import Path

    from kecil.rag.transfer import import_kb

    _print_transfer(import_kb(Path(file), kb), as_json)


def _print_transfer(report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.__dict__))
        return
    print(f"{report.source} -> {report.target}: {report.files} files copied ({report.chunks} chunks, {report.vectors} vectors), "
          f"{report.unchanged} already there, in {report.seconds:.1f} s")


@config_options(AskConfig, build=False, only=("k", "max_tokens", "draft"), into="options")
def ask(
    question: Annotated[str, typer.Argument(help="The question; '-' reads it from stdin.")],
    options: dict[str, Any],
    kb: KbName,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model to answer with (default: the embedded model).")] = None,
    backend: Backend = None,
    context: Context = None,
    rerank: Rerank = False,
    route: Annotated[Optional[str], typer.Option("--route", metavar="FILE", help=(
        "Route the answer (a `kecil route calibrate` file): the small model answers, a larger one when it is unsure; "
        "a remote tier gets the question and the chunks only redacted, and only if the file allows it."))] = None,
    escalate: Annotated[str, typer.Option("--escalate", help="With --route: all, local (no remote endpoint) or none.")] = "all",
    as_json: AsJson = False,
) -> None:
    """Answer a question from a knowledge base, citing the documents used."""
    from kecil.rag.ask import Answer, stream_ask
    from kecil.rag.rerank import RerankConfig

    if question == "-":
        question = sys.stdin.read()
    if route is not None:
        _ask_routed(question, kb, route, escalate, options.get("k") or 5, as_json)
        return
    search = SearchConfig(rerank=RerankConfig() if rerank else None)
    config = AskConfig(**options, search=search, backend=backend, context_length=context)
    # Printed whole, not streamed: the [n] markers are checked against the sources at the end.
    answer = next(piece for piece in stream_ask(question, kb, model=model, config=config) if isinstance(piece, Answer))
    if as_json:
        print(json.dumps(answer.as_dict(), ensure_ascii=False))
        return
    print(answer.text)
    _print_sources(answer.citations)
    if answer.withheld:
        n = len(answer.withheld)
        print(f"\n({n} sentence{'s' if n > 1 else ''} of the model's withheld: a number in {'them' if n > 1 else 'it'} is not tied to its words in any source; --json shows {'them' if n > 1 else 'it'})")
    if answer.answered and (note := _answering_limits(model)):
        err(note)


def _print_sources(citations) -> None:
    if citations:
        print("\nSources:")
        for c in citations:
            print(f"  [{c.number}] {_where(c)}")


def _ask_routed(question: str, kb: str, route_file: str, escalate: str, k: int, as_json: bool) -> None:
    from kecil.paths import kecil_home
    from kecil.route.ask import ask_routed, audit_file
    from kecil.route.routefile import load_route
    from kecil.route.router import RouteRequest

    plan = load_route(route_file)
    result = ask_routed(question, kb, plan, k=k, request=RouteRequest(escalate=escalate),
                        audit=audit_file(kecil_home() / "route" / "audit.jsonl"))
    routed = result.routed
    if as_json:
        print(json.dumps({"text": routed.text, "answered": result.answered, "route": routed.fields(),
                          "citations": [c.as_dict() for c in result.citations]}, ensure_ascii=False))
        return
    print(routed.text)
    _print_sources(result.citations)
    confidence = "" if routed.confidence is None else f", confidence {routed.confidence:.2f}"
    err(f"answered by {routed.routed_to} ({routed.model}{confidence}): {routed.reason}")


def _answering_limits(model: str | None) -> str | None:
    from kecil.models.reference import resolve

    return limits_note(resolve(model))


def register(app: typer.Typer) -> None:
    app.add_typer(rag_app, name="rag")
    for name, command in (("ingest", ingest), ("search", search), ("eval", evaluate), ("list", list_kbs), ("stats", stats), ("remove", remove),
                          ("export", export), ("import", import_)):
        rag_app.command(name)(command)
    app.command()(ask)
