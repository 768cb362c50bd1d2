"""The perplexity task: llama-perplexity's method (kecil.infer.scoring.perplexity) on a text file
or a packaged text, with the whole result cached under the text's hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kecil.errors import DataMissingError
from kecil.eval.tasks import Task
from kecil.infer.backend import Backend
from kecil.infer.scoring import perplexity

DEFAULT_CONTEXT = 512  # llama-perplexity's default window


def text_task(path: Path) -> Task:
    """`--tasks perplexity --text FILE`: perplexity on the user's own text."""
    path = Path(path)
    if not path.is_file():
        raise DataMissingError(f"no text file at {path}: pass --text with a UTF-8 text file")

    def read() -> str:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataMissingError(f"cannot read {path} as UTF-8 text ({exc}): convert it to UTF-8") from None

    return Task(
        name="perplexity", kind="perplexity", metric="perplexity", items=lambda: (),
        description=f"Perplexity on {path.name}", extra={"text": read}, source=str(path),
    )


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run(backend: Backend, task: Task, *, context: int, max_chunks: int | None = None, progress=None) -> tuple[float, int, dict]:
    """(perplexity, tokens scored, extra figures) for the task's text; `max_chunks` is --limit."""
    text = task.extra["text"]()
    result = perplexity(backend, text, context=context, progress=progress, max_chunks=max_chunks)
    return result.perplexity, result.tokens, {"nll": result.nll, "chunks": result.chunks, "context": context}
