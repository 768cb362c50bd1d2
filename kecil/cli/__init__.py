"""The `kecil` command: one module per command group (generate.py, serve.py, tune.py, rag.py,
quantize.py, evaluate.py, redact.py), assembled in app.py; options come from the config dataclasses (options.py)."""

from kecil.cli.app import app, main

__all__ = ["app", "main"]
