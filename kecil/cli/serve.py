"""`kecil serve`: an OpenAI-compatible HTTP API over local models (kecil/serve)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from kecil.cli.common import err
from kecil.cli.options import config_options
from kecil.serve.config import ServeConfig


@config_options(ServeConfig, build=False, arguments=("models",), exclude=("api_keys", "embedding_model", "adapter", "adapters"))
def serve(
    config: dict[str, Any],
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", metavar="[NAME=]PATH", help=(
        "A LoRA adapter for the first MODEL, served as its own model BASE+NAME (repeatable): PATH is the -o folder of "
        "`kecil tune` (its adapter.gguf keeps a GGUF model on llama.cpp) or a GGUF LoRA file; NAME defaults to its name."))] = None,
    api_key: Annotated[Optional[list[str]], typer.Option("--api-key", help="A key clients must send as 'Authorization: Bearer KEY' (repeatable).")] = None,
    api_keys_file: Annotated[Optional[str], typer.Option("--api-keys-file", help="File with one key per line, 'name:key' or 'key'; the name goes to the audit log.")] = None,
    embeddings: Annotated[bool, typer.Option("--embeddings/--no-embeddings", help="Serve /v1/embeddings with the bundled all-minilm-l6-v2.")] = True,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API, privately, on this machine."""
    from pathlib import Path

    from kecil.serve.config import DEFAULT_EMBEDDING_MODEL, make_key, parse_adapter_spec, read_keys_file
    from kecil.serve.server import serve as run_server

    keys = [make_key(k) for k in api_key or ()]
    if api_keys_file:
        keys += read_keys_file(Path(api_keys_file))
    settings = ServeConfig(**config, api_keys=tuple(keys), embedding_model=DEFAULT_EMBEDDING_MODEL if embeddings else None,
                           adapters=tuple(parse_adapter_spec(spec) for spec in adapter or ()))
    import logging

    logging.basicConfig(level=logging.INFO, format="kecil serve: %(message)s")
    from kecil.serve.server import GRACE_SECONDS

    def stopping(what: str) -> None:
        err("kecil serve: stopped" if what == "stopped" else
            f"kecil serve: stopping: finishing the requests in flight (at most {GRACE_SECONDS} s)")

    run_server(settings, on_start=lambda url: err(
        f"kecil serve: listening on {url} (Ctrl-C stops); the web page is at {url.removesuffix('/v1')}/"), on_stop=stopping)


def register(app: typer.Typer) -> None:
    app.command()(serve)
