"""The `kecil` command: a thin map from commands to library functions.

Every command calls into the library; this file only parses flags, prints, and turns a
KecilError into one clean line on stderr with a non-zero exit code. Heavy libraries (torch,
transformers, llama_cpp) are imported inside commands so `kecil --help` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from kecil import __version__
from kecil.errors import KecilError

app = typer.Typer(
    help="kecil: run small language models privately, offline, on the hardware you have.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --- shared options ------------------------------------------------------------------------
Backend = Annotated[Optional[str], typer.Option("--backend", "-b", help="llamacpp or torch (default: llamacpp for GGUF, torch for a Hugging Face folder).")]
Context = Annotated[Optional[int], typer.Option("--context", "-c", help="Context window in tokens (default: the model's, at most 4096).")]
Threads = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: physical cores).")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
Temperature = Annotated[float, typer.Option("--temperature", help="Sampling temperature; 0 = greedy.")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling: keep the smallest set of tokens with this much probability.")]
TopK = Annotated[int, typer.Option("--top-k", help="Sample among the K most likely tokens; 0 = off.")]
RepetitionPenalty = Annotated[float, typer.Option("--repetition-penalty", help="Penalty for repeating tokens; 1 = off.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed: the same seed gives the same output.")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop when this text appears (repeatable).")]
Adapter = Annotated[Optional[str], typer.Option("--adapter", help="A LoRA adapter to apply: the -o folder of `kecil tune` (or a GGUF LoRA file with the llamacpp backend).")]


def _config(max_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop):
    from kecil.infer.generation import GenerationConfig

    return GenerationConfig(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=tuple(stop or ()),
    )


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _speed(timings) -> str:
    return (
        f"{timings.prompt_tokens} prompt tokens at {timings.prompt_tokens_per_second:.1f} tok/s, "
        f"{timings.decode_tokens + 1} generated at {timings.decode_tokens_per_second:.1f} tok/s"
    )


# --- commands ------------------------------------------------------------------------------
@app.command()
def generate(
    args: Annotated[list[str], typer.Argument(metavar="[MODEL] PROMPT", help="Optional model (built-in name, .gguf file or Hugging Face folder), then the prompt; '-' reads the prompt from stdin.")],
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.95,
    top_k: TopK = 40,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Seed = None,
    stop: Stop = None,
    backend: Backend = None,
    context: Context = None,
    threads: Threads = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt (chat models).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as plain text, without the model's chat template.")] = False,
    adapter: Adapter = None,
    stats: Annotated[bool, typer.Option(help="Print token counts and speed to stderr.")] = True,
) -> None:
    """Generate an answer to a prompt and stream it to stdout.

    A chat model gets the prompt as one user turn in its own chat template; --raw sends the
    text as it is (plain completion), which is also what a base model without a template gets."""
    if len(args) > 2:
        raise KecilError(f"expected [MODEL] PROMPT, got {len(args)} arguments: quote the prompt")
    model, prompt = (None, args[0]) if len(args) == 1 else args
    if prompt == "-":
        prompt = sys.stdin.read()
    config = _config(max_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop)
    from kecil.infer.load import load_model

    with load_model(model, backend=backend, context_length=context, threads=threads, adapter=adapter) as engine:
        stream = engine.stream(prompt, config) if raw else engine.stream_instruction(prompt, config, system=system)
        for chunk in stream:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if stats:
        _err(f"[{engine.name}] {_speed(chunk.timings)}, finish: {chunk.finish_reason}")


@app.command()
def chat(
    model: Annotated[Optional[str], typer.Argument(help="Built-in name, .gguf file or Hugging Face folder (default: the embedded model).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.95,
    top_k: TopK = 40,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Seed = None,
    stop: Stop = None,
    backend: Backend = None,
    context: Context = None,
    threads: Threads = None,
    adapter: Adapter = None,
) -> None:
    """Chat with a model in the terminal. /reset clears the history, /exit leaves."""
    from kecil.infer.chat import ChatSession
    from kecil.infer.load import load_model

    config = _config(max_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop)
    interactive = sys.stdin.isatty()
    with load_model(model, backend=backend, context_length=context, threads=threads, adapter=adapter) as engine:
        session = ChatSession(engine, config, system=system)
        _err(f"kecil chat with {engine.ref.name} ({engine.name}, {engine.context_length}-token context). /reset clears, /exit leaves.")
        while True:
            try:
                line = input(">>> " if interactive else "")
            except EOFError:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit", "/bye"):
                break
            if text == "/reset":
                session.reset()
                _err("[history cleared]")
                continue
            try:
                turn = session.send(text)
            except KecilError as exc:
                _err(f"kecil: {exc}")
                continue
            if turn.dropped:
                _err(f"[notice] dropped the {turn.dropped} oldest messages to stay within the {engine.context_length}-token context")
            try:
                for chunk in turn.chunks:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                turn.chunks.close()
                _err("\n[interrupted]")
            sys.stdout.write("\n")
            sys.stdout.flush()


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False) -> None:
    """List the built-in models and whether each is installed."""
    from kecil.models.builtins import DEFAULT_MODEL, builtins, is_installed

    rows = [(b, is_installed(b)) for b in builtins()]
    if as_json:
        for b, ok in rows:
            print(json.dumps({"name": b.name, "installed": ok, "default": b.name == DEFAULT_MODEL, "package": b.package, "description": b.description, "license": b.license, "install": b.install_command}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "installed", "description", "license", "install with")
    for b, ok in rows:
        name = b.name + (" (default)" if b.name == DEFAULT_MODEL else "")
        table.add_row(name, "yes" if ok else "no", b.description, b.license, "" if ok else b.install_command)
    Console().print(table)
    print("Any .gguf file or Hugging Face model folder works too: kecil info PATH")


@app.command()
def info(
    model: Annotated[Optional[str], typer.Argument(help="Built-in name, .gguf file or Hugging Face folder (default: the embedded model).")] = None,
    context: Annotated[int, typer.Option("--context", "-c", help="Context length to size the RAM estimate for.")] = 4096,
    backend: Backend = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Architecture, size, quantization, context length and RAM needed for a model."""
    from kecil.infer.load import DEFAULT_BACKEND, LoadOptions
    from kecil.models.info import describe, estimate_memory, inspect_model
    from kecil.models.reference import resolve

    LoadOptions(backend=backend, context_length=context)
    ref = resolve(model)
    details = inspect_model(ref)
    estimate = estimate_memory(details, context, backend or DEFAULT_BACKEND[ref.format])
    rows = describe(details, estimate)
    if ref.system_prompt:
        rows.append(("Default system prompt", ref.system_prompt))
    if as_json:
        print(json.dumps(dict(rows)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # paths must stay whole, wrapped rather than cut
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    Console().print(table)


@app.command()
def demo(
    model: Annotated[Optional[str], typer.Argument(help="Model to run (default: the embedded model).")] = None,
    backend: Backend = None,
) -> None:
    """The main job: load the embedded model, answer three questions, show the speed of each."""
    from kecil.demo import run_demo

    def question(q: str) -> None:
        print(f"\n>>> {q}")

    def answered(a) -> None:
        print(f"\n    [{a.timings.decode_tokens + 1} tokens, {a.timings.decode_tokens_per_second:.1f} tok/s decode, {a.timings.prompt_tokens_per_second:.1f} tok/s prompt]")

    def text(t: str) -> None:
        sys.stdout.write(t)
        sys.stdout.flush()

    run_demo(model, backend=backend, on_question=question, on_text=text, on_answer=answered)


@app.command()
def serve(
    models: Annotated[Optional[list[str]], typer.Argument(metavar="[MODEL]...", help="Models to serve (built-in names, .gguf files, Hugging Face folders); default: the embedded model. Each loads on its first request.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback needs --api-key or --api-keys-file.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 = any free port).")] = 8000,
    api_key: Annotated[Optional[list[str]], typer.Option("--api-key", help="A key clients must send as 'Authorization: Bearer KEY' (repeatable).")] = None,
    api_keys_file: Annotated[Optional[str], typer.Option("--api-keys-file", help="File with one key per line, 'name:key' or 'key'; the name goes to the audit log.")] = None,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="Memory all loaded models may use, e.g. 4GB; least-recently-used models are unloaded to stay under it (default: 75% of RAM).")] = None,
    context: Context = None,
    parallel: Annotated[int, typer.Option("--parallel", "-p", help="Requests per model decoded together (continuous batching slots).")] = 4,
    threads: Threads = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests waiting per model before the server answers 429.")] = 64,
    max_body: Annotated[str, typer.Option("--max-body", help="Largest request body, e.g. 1MB.")] = "1MB",
    max_tokens_limit: Annotated[Optional[int], typer.Option("--max-tokens-limit", help="Largest max_tokens a request may ask for (default: the context length).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds one request may take, queueing included.")] = 300.0,
    log_requests: Annotated[bool, typer.Option("--log-requests", help="Log prompts and completions (off: they are never logged).")] = False,
    audit_log: Annotated[Optional[str], typer.Option("--audit-log", help="Append-only JSON audit log (default: $KECIL_HOME/serve/audit.jsonl).")] = None,
    embeddings: Annotated[bool, typer.Option("--embeddings/--no-embeddings", help="Serve /v1/embeddings with the bundled all-minilm-l6-v2.")] = True,
    preload: Annotated[bool, typer.Option("--preload/--no-preload", help="Load the first model at start-up (then /ready means ready).")] = True,
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="A LoRA adapter for the first MODEL: the -o folder of `kecil tune` (its adapter.gguf keeps a GGUF model on llama.cpp) or a GGUF LoRA file.")] = None,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API, privately, on this machine."""
    from pathlib import Path

    from kecil.models.info import parse_bytes
    from kecil.serve.config import DEFAULT_EMBEDDING_MODEL, ServeConfig, make_key, read_keys_file
    from kecil.serve.server import serve as run_server

    keys = [make_key(k) for k in api_key or ()]
    if api_keys_file:
        keys += read_keys_file(Path(api_keys_file))
    config = ServeConfig(
        models=tuple(models or ()), host=host, port=port, api_keys=tuple(keys),
        max_memory=parse_bytes(max_memory) if max_memory else None, context_length=context, parallel=parallel,
        threads=threads, max_queue=max_queue, max_body_bytes=parse_bytes(max_body), max_tokens_limit=max_tokens_limit,
        request_timeout=timeout, log_requests=log_requests, audit_log=Path(audit_log) if audit_log else None,
        embedding_model=DEFAULT_EMBEDDING_MODEL if embeddings else None, preload=preload,
        adapter=Path(adapter) if adapter else None,
    )
    import logging

    logging.basicConfig(level=logging.INFO, format="kecil serve: %(message)s")
    run_server(config, on_start=lambda url: _err(f"kecil serve: listening on {url} (Ctrl-C stops)"))


# --- tune: LoRA fine-tuning, merging (kecil/tune) ---------------------------------------------
@app.command()
def tune(
    model: Annotated[str, typer.Argument(help="Base model: built-in name, .gguf file (trained as float) or Hugging Face folder.")],
    data: Annotated[str, typer.Argument(help="JSONL training data: chat ('messages'), instruction ('instruction'/'input'/'output') or plain 'text', one object per line.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the adapter (and its checkpoints).")],
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = 3,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (default: 2 x rank).")] = None,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    target_modules: Annotated[Optional[str], typer.Option("--target-modules", help="Comma-separated module names to adapt (default: every linear layer of the architecture).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 2e-4,
    warmup: Annotated[float, typer.Option(help="Share of steps spent warming the learning rate up.")] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Packed rows per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = 1,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per packed row; longer examples are cut.")] = 512,
    val_split: Annotated[float, typer.Option("--val-split", help="Share of examples held out for validation loss.")] = 0.1,
    val_data: Annotated[Optional[str], typer.Option("--val-data", help="A separate JSONL validation file (instead of --val-split).")] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Steps between validation losses.")] = 50,
    save_every: Annotated[int, typer.Option("--save-every", help="Steps between checkpoints.")] = 50,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many optimizer steps.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and data give the same adapter.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its latest checkpoint.")] = False,
    base_bits: Annotated[Optional[int], typer.Option("--base-bits", help="QLoRA: hold the frozen base as int4 or int8 weights (4 or 8) to cut memory; default float32.")] = None,
    base_group_size: Annotated[int, typer.Option("--base-group-size", help="With --base-bits: input columns per quantization scale (32, 64 or 128).")] = 64,
    precision: Annotated[str, typer.Option("--precision", help="The frozen base's dtype: float32, bfloat16, or auto (bfloat16 where the CPU/GPU computes it natively). The adapter weights are always float32.")] = "auto",
    threads: Threads = None,
) -> None:
    """Fine-tune MODEL on DATA with LoRA and write a PEFT adapter folder.

    Use it with `kecil generate/chat MODEL --adapter OUT`, or bake it in with `kecil merge`."""
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from kecil.tune.lora import TuneConfig, tune as run_tune

    config = TuneConfig(
        model=model, data=Path(data), output=Path(output), epochs=epochs, rank=rank, alpha=alpha, dropout=dropout,
        target_modules=tuple(t.strip() for t in target_modules.split(",") if t.strip()) if target_modules else None,
        lr=lr, warmup=warmup, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, val_split=val_split,
        val_data=Path(val_data) if val_data else None, eval_every=eval_every, save_every=save_every, max_steps=max_steps,
        seed=seed, resume=resume, threads=threads, base_bits=base_bits, base_group_size=base_group_size,
        precision=precision,
    )
    columns = (TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("tune", total=None, status="loading model and data")

        def report(p) -> None:
            val = f" val {p.val_loss:.3f}" if p.val_loss is not None else ""
            eta = f"{int(p.eta_seconds // 60)}m{int(p.eta_seconds % 60):02d}s"
            bar.update(task, total=p.total_steps, completed=p.step, status=f"loss {p.loss:.3f}{val} | {p.tokens_per_second:.0f} tok/s | ETA {eta}")

        result = run_tune(config, progress=report)
    if result.resumed_from_step is not None:
        _err(f"resumed from step {result.resumed_from_step}")
    if result.cut_examples or result.dropped_examples:
        _err(f"{result.cut_examples} examples were longer than --max-length {max_length} and cut; {result.dropped_examples} had nothing left to learn and were skipped")
    val = f", validation loss {result.first_val_loss:.3f} -> {result.val_loss:.3f}" if result.val_loss is not None and result.first_val_loss is not None else ""
    _err(f"trained {result.steps} steps on {result.train_examples} {result.format} examples ({result.tokens_per_second:.0f} tok/s){val}")
    print(result.output)


@app.command()
def merge(
    model: Annotated[str, typer.Argument(help="The base model the adapter was trained on.")],
    adapter: Annotated[str, typer.Argument(help="The adapter folder written by `kecil tune`.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the merged Hugging Face model.")],
    export_gguf: Annotated[Optional[str], typer.Option("--export-gguf", help="Also write the merged model as GGUF of this type (f16, q8_0, q4_k_m, ...) into the output folder.")] = None,
) -> None:
    """Bake a LoRA adapter into its base model and write a standalone Hugging Face model folder."""
    from pathlib import Path

    from kecil.tune.merge import MergeConfig, merge as run_merge

    def quantizer(hf_dir: Path, out_type: str, target: Path) -> Path:
        from kecil.compress.quantize import QuantizeConfig, quantize

        return quantize(QuantizeConfig(model=str(hf_dir), to=out_type, output=target, report=False)).output

    config = MergeConfig(model=model, adapter=Path(adapter), output=Path(output), export_gguf=export_gguf)
    result = run_merge(config, quantizer=quantizer)
    print(result.output)
    if result.gguf is not None:
        print(result.gguf)


# --- rag: knowledge bases and grounded answers -----------------------------------------------
rag_app = typer.Typer(help="Knowledge bases of your documents: ingest, search, evaluate, and `kecil ask` them.", no_args_is_help=True)
app.add_typer(rag_app, name="rag")
KbName = Annotated[str, typer.Option("--kb", help="Knowledge base name (kept under $KECIL_HOME/kb).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TopK_ = Annotated[int, typer.Option("--k", "-k", help="How many chunks to retrieve.")]
PathFilter = Annotated[Optional[str], typer.Option("--path", help="Only chunks of this file, or of the files in this folder.")]
Rerank = Annotated[bool, typer.Option("--rerank", help="Reorder the best 10 candidates by how likely the language model finds the question after each (slower; see docs/benchmarks.md).")]
Fusion = Annotated[Optional[str], typer.Option("--fusion", help="How hybrid fuses BM25 and dense: convex (normalised scores) or rrf (reciprocal rank); default: the measured best for the knowledge base's embedding model.")]


@rag_app.command("ingest")
def rag_ingest(
    folder: Annotated[str, typer.Argument(help="Folder (or one file) of .txt .md .html .pdf .docx .csv .json documents.")],
    kb: KbName,
    embedder: Annotated[Optional[str], typer.Option("--embedder", help="Embedding model for a new knowledge base: all-minilm-l6-v2 (default, English) or multilingual-e5-small (~100 languages: use it for non-English documents; embeds ~2x slower).")] = None,
    chunk_tokens: Annotated[int, typer.Option("--chunk-tokens", help="Largest chunk, in model tokens (about).")] = 200,
    overlap: Annotated[int, typer.Option("--overlap", help="Tokens repeated from the end of one chunk at the start of the next.")] = 40,
    max_file_mb: Annotated[float, typer.Option("--max-file-mb", help="Skip files bigger than this.")] = 50.0,
    window_sentences: Annotated[Optional[int], typer.Option("--window-sentences", help="Embed each chunk as runs of about this many sentences, a search scoring it by its best run (default: the measured best for the embedder; 0: one vector per chunk).")] = None,
    as_json: AsJson = False,
) -> None:
    """Add a folder of documents to a knowledge base; a second run only re-reads what changed."""
    from pathlib import Path

    from rich.progress import Progress

    from kecil.rag.chunking import ChunkConfig
    from kecil.rag.ingest import IngestConfig, ingest

    config = IngestConfig(Path(folder), kb, embedder=embedder, chunking=ChunkConfig(chunk_tokens, overlap), max_file_mb=max_file_mb,
                          window_sentences=window_sentences)
    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("ingesting", total=None)
        report = ingest(config, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        print(json.dumps({**report.__dict__, "skipped": [{"path": p, "reason": r} for p, r in report.skipped]}))
        return
    for path, reason in report.skipped:
        _err(f"skipped {path}: {reason}")
    # The rate means nothing for a handful of chunks (it would round to 0 or read as a speed claim).
    rate = f" ({report.chunks / report.seconds:.0f} chunks/s)" if report.chunks >= 20 and report.seconds > 0 else ""
    print(f"{kb}: {len(report.added)} files added, {len(report.updated)} updated, {report.unchanged} unchanged, "
          f"{len(report.removed)} removed, {len(report.skipped)} skipped; {report.chunks} chunks written in {report.seconds:.1f} s{rate}")
    if report.other_types:
        print(f"{report.other_types} files of other types were left out")


def _where(citation_or_chunk) -> str:
    from kecil.rag.ask import Citation
    from kecil.rag.loaders import unit_of

    c = citation_or_chunk
    if not isinstance(c, Citation):
        c = Citation(0, c.path, c.page, c.start, c.end, unit_of(c.path), c.section, c.text, 0.0)
    where = c.where
    cwd = os.getcwd() + os.sep
    return where[len(cwd):] if where.startswith(cwd) else where


@rag_app.command("search")
def rag_search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    kb: KbName,
    k: TopK_ = 5,
    method: Annotated[str, typer.Option("--method", help="hybrid, bm25 or dense.")] = "hybrid",
    path: PathFilter = None,
    fusion: Fusion = None,
    rerank: Rerank = False,
    as_json: AsJson = False,
) -> None:
    """Show the chunks that best match QUERY, with scores and sources."""
    from kecil.rag.rerank import RerankConfig
    from kecil.rag.retrieve import SearchConfig, search

    hits = search(query, kb, SearchConfig(k=k, method=method, path=path, fusion=fusion, rerank=RerankConfig() if rerank else None))
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


@rag_app.command("eval")
def rag_eval(
    kb: KbName,
    qa: Annotated[str, typer.Option("--qa", help='JSON Lines file: {"question": ..., "answers": [...]} per line.')],
    k: TopK_ = 5,
    method: Annotated[str, typer.Option("--method", help="hybrid, bm25 or dense.")] = "hybrid",
    fusion: Fusion = None,
    rerank: Rerank = False,
    as_json: AsJson = False,
) -> None:
    """recall@k and MRR of a knowledge base on questions with known answers."""
    from pathlib import Path

    from rich.progress import Progress

    from kecil.rag.evaluate import evaluate_kb
    from kecil.rag.rerank import RerankConfig
    from kecil.rag.retrieve import SearchConfig

    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("questions", total=None)
        config = SearchConfig(k=k, method=method, fusion=fusion, rerank=RerankConfig() if rerank else None)
        result = evaluate_kb(kb, Path(qa), config, progress=lambda n: bar.advance(task, n))
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    print(f"{kb} ({method}{f' {fusion}' if fusion and method == 'hybrid' else ''}{' + rerank' if rerank else ''}, {result.questions} questions): recall@{k} {result.recall:.3f}, MRR {result.mrr:.3f}, median {result.median_ms:.1f} ms per query")


@rag_app.command("list")
def rag_list(as_json: AsJson = False) -> None:
    """The knowledge bases on this machine."""
    from kecil.rag.store import KnowledgeBase, list_kbs

    for name in list_kbs():
        with KnowledgeBase.open(name) as opened:
            s = opened.stats()
        print(json.dumps(s) if as_json else f"{name}: {s['files']} files, {s['chunks']} chunks, {s['embedder']}")


@rag_app.command("stats")
def rag_stats(name: Annotated[str, typer.Argument(help="Knowledge base name.")], as_json: AsJson = False) -> None:
    """Files, chunks, embedding model and size of a knowledge base."""
    from kecil.rag.store import KnowledgeBase

    with KnowledgeBase.open(name) as opened:
        s = opened.stats()
    if as_json:
        print(json.dumps(s))
        return
    for key, value in s.items():
        print(f"{key}: {value}")


@rag_app.command("remove")
def rag_remove(name: Annotated[str, typer.Argument(help="Knowledge base name.")]) -> None:
    """Delete a knowledge base (its documents on disk are not touched)."""
    from kecil.rag.store import remove_kb

    print(f"removed {remove_kb(name)}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question; '-' reads it from stdin.")],
    kb: KbName,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model to answer with (default: the embedded model).")] = None,
    k: Annotated[Optional[int], typer.Option("--k", "-k", help="How many chunks to give the model [default: 3].")] = None,
    max_tokens: MaxTokens = 256,
    backend: Backend = None,
    context: Context = None,
    rerank: Rerank = False,
    as_json: AsJson = False,
) -> None:
    """Answer a question from a knowledge base, citing the documents used."""
    from kecil.rag.ask import Answer, AskConfig, stream_ask
    from kecil.rag.rerank import RerankConfig
    from kecil.rag.retrieve import SearchConfig

    if question == "-":
        question = sys.stdin.read()
    search = SearchConfig(rerank=RerankConfig() if rerank else None)
    config = AskConfig(search=search, max_tokens=max_tokens, backend=backend, context_length=context)
    # Printed whole, not streamed: the [n] markers are checked against the sources at the end.
    answer = next(piece for piece in stream_ask(question, kb, model=model, config=config, k=k) if isinstance(piece, Answer))
    if as_json:
        print(json.dumps(answer.as_dict(), ensure_ascii=False))
        return
    print(answer.text)
    if answer.citations:
        print("\nSources:")
        for c in answer.citations:
            print(f"  [{c.number}] {_where(c)}")
    if answer.withheld:
        n = len(answer.withheld)
        print(f"\n({n} sentence{'s' if n > 1 else ''} of the model's withheld: a number in {'them' if n > 1 else 'it'} is in none of the sources; --json shows {'them' if n > 1 else 'it'})")


# --- quantize (kecil/compress) ------------------------------------------------------------
@contextmanager
def _stage_bars(labels: dict[str, str], *, width: int, **options):
    """A `progress(stage, done, total)` callback drawing one rich bar per stage as it first reports."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), **options) as bar:
        bars: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(bars[stage], completed=done, total=total)

        yield progress


_QUANT_STAGES = {"convert": "converting to GGUF", "calibrate": "calibrating", "scale": "searching AWQ scales", "quantize": "quantizing", "report": "measuring"}


@app.command()
def quantize(
    model: Annotated[str, typer.Argument(help="Built-in name, .gguf file or Hugging Face folder.")],
    to: Annotated[str, typer.Option("--to", help="GGUF: f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, q3_k_m or q2_k; torch weight-only: int8 or int4.")],
    output: Annotated[str, typer.Option("--output", "-o", help="The GGUF file to write (a folder for int8/int4).")],
    calib: Annotated[Optional[str], typer.Option("--calib", help="Calibration text or JSONL (default: kecil's multilingual set).")] = None,
    method: Annotated[str, typer.Option("--method", help="auto (per type, as measured), awq-gptq, awq, gptq, imatrix, or none (no calibration).")] = "auto",
    heldout: Annotated[Optional[str], typer.Option("--heldout", help="Text for the report's perplexity (default: kecil's held-out set).")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Measure perplexity, speed and RAM after writing.")] = True,
    group_size: Annotated[int, typer.Option("--group-size", help="int8/int4: input columns per scale (32, 64 or 128).")] = 64,
    threads: Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Quantize MODEL to a smaller GGUF file that llama.cpp (and Ollama) loads, and report what it cost."""
    from pathlib import Path

    from kecil.compress.quantize import QuantizeConfig, quantize as run_quantize

    config = QuantizeConfig(
        model=model, to=to, output=Path(output), calib=Path(calib) if calib else None, report=report, method=method,
        heldout=Path(heldout) if heldout else None, threads=threads, group_size=group_size,
    )
    with _stage_bars(_QUANT_STAGES, width=20, transient=as_json) as progress:
        result = run_quantize(config, progress=progress)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    mb = 1024 * 1024
    print(f"wrote {result.output} ({result.type}, {result.method}) in {result.seconds:.1f}s")
    print(f"  size        {result.source_bytes / mb:8.1f} MiB -> {result.output_bytes / mb:8.1f} MiB ({result.ratio:.0%})")
    if result.report:
        r = result.report
        print(f"  perplexity  {r.source_perplexity:8.3f}     -> {r.quantized_perplexity:8.3f}     ({r.perplexity_increase:+.3f} on {r.perplexity_tokens} held-out tokens)")
        print(f"  decode      {r.decode_tokens_per_second:8.1f} tok/s")
        print(f"  peak RAM    {r.peak_ram_bytes / mb:8.0f} MiB")


# --- eval and fit (kecil/eval) -------------------------------------------------------------
def _eval_progress(bar):
    """A callback for kecil.eval that drives one rich progress bar per (model, task)."""
    bars: dict[tuple[str, str], int] = {}

    def progress(model: str, task: str, done: int, total: int) -> None:
        if (model, task) not in bars:
            bars[(model, task)] = bar.add_task(f"{model} {task}", total=total)
        bar.update(bars[(model, task)], completed=done, total=total)

    return progress


@app.command(name="eval")
def eval_(
    models: Annotated[list[str], typer.Argument(metavar="MODEL...", help="Models to compare: built-in names, .gguf files or Hugging Face folders.")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated: mmlu, arc_easy, arc_challenge, hellaswag, piqa, boolq, gsm8k, squad, humaneval, mbpp, wikitext-like-perplexity, perplexity (with --text), or a --task-file's name.")] = "mmlu",
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most N items per task: a fixed random subset (see --seed); for perplexity, the first N chunks.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the subset and the few-shot examples.")] = 1234,
    shots: Annotated[Optional[int], typer.Option("--shots", help="Few-shot examples per prompt (default: each task's own; 0 = zero-shot).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Text file for --tasks perplexity.")] = None,
    context: Annotated[int, typer.Option("--context", "-c", help="Perplexity window in tokens.")] = 512,
    task_file: Annotated[Optional[list[str]], typer.Option("--task-file", help="YAML spec of your own task (repeatable).")] = None,
    backend: Backend = None,
    threads: Threads = None,
    system: Annotated[bool, typer.Option("--system/--no-system", help="Measure size, peak RAM, load time and speed.")] = True,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse per-item results from an earlier (or interrupted) run.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line, one per (model, task).")] = False,
    html: Annotated[Optional[str], typer.Option("--html", help="Also write an HTML report with plots to this file.")] = None,
) -> None:
    """Evaluate models on quality tasks and system figures, side by side, offline."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from kecil.eval.report import json_lines, table
    from kecil.eval.run import EvalConfig, evaluate

    config = EvalConfig(
        models=tuple(models), tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), limit=limit, seed=seed,
        shots=shots, text=Path(text) if text else None, context=context,
        task_files=tuple(Path(f) for f in task_file or ()), backend=backend, threads=threads, system=system, cache=cache,
    )
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        report = evaluate(config, progress=_eval_progress(bar))
    if html:
        from kecil.eval.html import write_html

        written = write_html(report, Path(html))
        _err(f"wrote {written}")
    if as_json:
        for line in json_lines(report):
            print(line)
    else:
        Console().print(table(report))


@app.command()
def fit(
    model: Annotated[str, typer.Argument(help="Built-in name, .gguf file or Hugging Face folder.")],
    memory: Annotated[str, typer.Option("--memory", "-m", help="Memory the model may use, e.g. 4GB, 300MB, 3.5GiB.")],
    context: Annotated[int, typer.Option("--context", "-c", help="Context window the model must hold, in tokens.")] = 4096,
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated quality tasks (as in kecil eval).")] = "wikitext-like-perplexity",
    types: Annotated[Optional[str], typer.Option("--types", help="Comma-separated quantization types to try (default: all eight).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Items per task (perplexity: 512-token chunks).")] = 20,
    threads: Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per variant, then the recommendation.")] = False,
) -> None:
    """Which quantization of MODEL fits in --memory at --context, and which of those is best: measured, not estimated."""
    from rich.console import Console
    from rich.table import Table

    from kecil.eval.fit import DEFAULT_TYPES, FitConfig, fit as run_fit
    from kecil.models.info import format_bytes, parse_bytes

    config = FitConfig(
        model=model, memory=parse_bytes(memory), context=context, tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
        types=tuple(t.strip() for t in types.split(",")) if types else DEFAULT_TYPES, limit=limit, threads=threads,
    )
    console = Console(stderr=True)
    stages = {"quantize": "quantizing", "memory": "measuring peak memory", "evaluate": "evaluating quality"}
    with _stage_bars(stages, width=24, console=console, transient=True) as progress:
        result = run_fit(config, progress=progress)
    if as_json:
        for v in result.variants:
            print(json.dumps({"type": v.type, "size_bytes": v.size_bytes, "peak_rss_bytes": v.peak_rss_bytes, "fits": v.fits(config.memory), "quality": v.quality, "error": v.error}))
        print(json.dumps({"recommended": result.recommended.type if result.recommended else None, "command": result.command, "message": result.message}))
        return
    grid = Table(title=f"kecil fit {model} --memory {memory} --context {context}")
    for column in ("type", "size", "peak RAM", "fits", *config.tasks):
        grid.add_column(column, justify="left" if column == "type" else "right")
    for v in result.variants:
        quality = [("" if v.quality.get(t) is None else f"{v.quality[t]:.3f}" if v.metrics.get(t) == "perplexity" else f"{100 * v.quality[t]:.1f}%") for t in config.tasks]
        mark = "yes" if v.fits(config.memory) else ("error" if v.error else "no")
        name = f"[bold]{v.type}[/bold]" if v is result.recommended else v.type
        grid.add_row(name, format_bytes(v.size_bytes) if v.size_bytes else "", format_bytes(v.peak_rss_bytes) if v.peak_rss_bytes else (v.error or ""), mark, *quality)
    Console().print(grid)
    print(result.message)
    if result.command:
        print(f"\n  {result.command}")


def _version(value: bool) -> None:
    if value:
        print(f"kecil {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False) -> None:
    pass


def main() -> None:
    """Entry point: library errors become one line on stderr, never a traceback."""
    try:
        app()
    except KecilError as exc:
        _err(f"kecil: error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err("kecil: interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line; KECIL_DEBUG=1 shows the traceback
        if os.environ.get("KECIL_DEBUG"):
            raise
        _err(f"kecil: internal error: {type(exc).__name__}: {exc} (rerun with KECIL_DEBUG=1 for the traceback, and please report it)")
        sys.exit(70)
