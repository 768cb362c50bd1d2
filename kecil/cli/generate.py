"""`kecil generate`, `chat`, `info` and `demo`: run a model and look inside one."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from kecil.cli.common import Adapter, Backend, Context, Threads, err, limits_note, speed
from kecil.cli.options import config_options
from kecil.errors import ConfigError, KecilError
from kecil.infer.generation import GenerationConfig
from kecil.infer.load import LoadOptions

ModelArg = Annotated[Optional[str], typer.Argument(help="Built-in name, .gguf file or Hugging Face folder (default: the embedded model).")]

# What chat answers to itself; any other line starting with / is refused rather than sent to the model.
CHAT_COMMANDS = {
    "/help": "list these commands",
    "/reset": "clear the conversation's history",
    "/exit": "leave (also /quit, /bye, or Ctrl-D)",
}
_EXIT = ("/exit", "/quit", "/bye")
# --device and --draft, from LoadOptions' fields: the command gets `load`, a dict for load_model(**load).
with_loading = config_options(LoadOptions, into="load", only=("device", "draft"), build=False)


@with_loading
@config_options(GenerationConfig, into="generation")
def generate(
    args: Annotated[list[str], typer.Argument(metavar="[MODEL] PROMPT", help="Optional model (built-in name, .gguf file or Hugging Face folder), then the prompt; '-' reads the prompt from stdin.")],
    generation: GenerationConfig,
    load: dict,
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
    from kecil.infer.load import load_model

    with load_model(model, backend=backend, context_length=context, threads=threads, adapter=adapter, **load) as engine:
        stream = engine.stream(prompt, generation) if raw else engine.stream_instruction(prompt, generation, system=system)
        for chunk in stream:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if stats:
        err(f"[{engine.name}] {speed(chunk.timings)}, finish: {chunk.finish_reason}{drafted(engine)}")


@with_loading
@config_options(GenerationConfig, into="generation", defaults={"max_tokens": 512})
def chat(
    generation: GenerationConfig,
    load: dict,
    model: ModelArg = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    backend: Backend = None,
    context: Context = None,
    threads: Threads = None,
    adapter: Adapter = None,
) -> None:
    """Chat with a model in the terminal. /help lists the commands, /reset clears the history, /exit leaves."""
    from kecil.infer.chat import ChatSession
    from kecil.infer.load import load_model

    interactive = sys.stdin.isatty()
    with load_model(model, backend=backend, context_length=context, threads=threads, adapter=adapter, **load) as engine:
        session = ChatSession(engine, generation, system=system)
        err(f"kecil chat with {engine.ref.name} ({engine.name}, {engine.context_length}-token context). /help lists commands, /exit leaves.")
        if note := limits_note(engine.ref):
            err(note)
        while True:
            try:
                line = input(">>> " if interactive else "")
            except EOFError:
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("//"):
                text = text[1:]  # a message that itself starts with /
            elif text.startswith("/"):
                command = text.split()[0].lower()
                if command in _EXIT:
                    break
                if command == "/reset":
                    session.reset()
                    err("[history cleared]")
                elif command == "/help":
                    err("\n".join(f"  {name:<8} {what}" for name, what in CHAT_COMMANDS.items()) + "\n  //...    send a message that starts with /")
                else:
                    err(f"[unknown command {command}: /help lists the commands; start with // to send a line beginning with /]")
                continue
            try:
                turn = session.send(text)
            except KecilError as exc:
                err(f"kecil: {exc}")
                continue
            if turn.dropped:
                err(f"[notice] dropped the {turn.dropped} oldest messages to stay within the {engine.context_length}-token context")
            try:
                for chunk in turn.chunks:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                turn.chunks.close()
                err("\n[interrupted]")
            sys.stdout.write("\n")
            sys.stdout.flush()


def drafted(engine) -> str:
    """How many drafted tokens the model accepted, for the stats line of a speculative run."""
    stats = getattr(engine, "speculation", None)
    if not stats or not stats.get("drafted"):
        return ""
    return f", draft: {stats['accepted']}/{stats['drafted']} tokens accepted"


def info(
    model: ModelArg = None,
    context: Annotated[int, typer.Option("--context", "-c", help="Context length to size the RAM estimate for.")] = 4096,
    backend: Backend = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    fertility: Annotated[bool, typer.Option("--fertility/--no-fertility", help="Measure the tokenizer's tokens per word and per character in each language (on the same sentences).")] = True,
) -> None:
    """Architecture, size, quantization, context length, RAM needed, and tokens per language for a model."""
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
    measured = []
    if fertility:
        from kecil.eval.fertility import fertility as measure_fertility, summary
        from kecil.infer.tokenizer import open_tokenizer

        try:
            measured, skipped = measure_fertility(open_tokenizer(ref))
            rows += [(f"Tokens, {f.name} ({f.language})", summary(f)) for f in measured]
            rows += [(f"Tokens ({code})", f"not measured: {why}") for code, why in skipped.items()]
        except KecilError as exc:  # the header was readable: show it, and why the tokenizer was not
            rows.append(("Tokens per language", f"not measured: {exc}"))
    if as_json:
        print(json.dumps({**dict(rows), **({"fertility": [f.as_dict() for f in measured]} if fertility else {})}))
        return
    if not sys.stdout.isatty():
        # In a pipe or a file, one unwrapped line per fact: a wrapped path cannot be copied or grepped.
        width = max(len(key) for key, _ in rows)
        print("\n".join(f"{key:<{width}}  {value}" for key, value in rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # paths must stay whole, wrapped rather than cut
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    Console().print(table)


def demo(
    quick: Annotated[bool, typer.Option("--quick", help="Only ask the embedded model (or MODEL) three questions, with the speed of each (seconds).")] = False,
    model: Annotated[Optional[str], typer.Argument(help="With --quick: the model to run (default: the embedded model).")] = None,
    backend: Backend = None,
) -> None:
    """The main job: `kecil build` on the shipped handbook recipe, then the result served and asked a handbook question.

    The build is cached in $KECIL_HOME/demo, so a second run only gates, exports and asks again."""
    if not quick:
        if model is not None or backend is not None:
            raise ConfigError("MODEL and --backend are for `kecil demo --quick`; the main job builds the shipped recipe's own model")
        from kecil.cli.build import run_main_job

        run_main_job()
        return
    from kecil.demo import run_demo

    def question(q: str) -> None:
        print(f"\n>>> {q}")

    def answered(a) -> None:
        print(f"\n    [{a.timings.decode_tokens + 1} tokens, {a.timings.decode_tokens_per_second:.1f} tok/s decode, {a.timings.prompt_tokens_per_second:.1f} tok/s prompt]")

    def text(t: str) -> None:
        sys.stdout.write(t)
        sys.stdout.flush()

    run_demo(model, backend=backend, on_question=question, on_text=text, on_answer=answered)


def register(app: typer.Typer) -> None:
    for command in (generate, chat, info, demo):
        app.command()(command)
