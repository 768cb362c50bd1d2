"""A model's own tokenizer without its weights: for what only needs token counts (`kecil info`'s
tokenizer fertility), where loading the whole model would cost seconds and hundreds of MB.

A GGUF's vocabulary opens through llama.cpp with `vocab_only` (under a second for SmolLM2's,
where transformers rebuilds it in Python in 8-30 s); a Hugging Face folder's through transformers,
from the folder only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kecil.errors import BackendError
from kecil.models.reference import ModelRef

# text -> token ids, no BOS: what a model reads for that text
Tokenize = Callable[[str], list[int]]


def open_tokenizer(ref: ModelRef) -> Tokenize:
    """The tokenize function of `ref`'s own tokenizer (ids for plain text, no BOS added)."""
    return _OPENERS[ref.format](ref)


def gguf_vocab(path: Path, spec: str | None = None):
    """A GGUF file's vocabulary alone, through llama.cpp (a `Llama` with `vocab_only`)."""
    from kecil.infer.llamacpp_runtime import import_llama_cpp

    try:
        return import_llama_cpp().Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"llama.cpp could not read the vocabulary of {path} ({exc}); check it with `kecil info {spec or path}`") from None


def _gguf(ref: ModelRef) -> Tokenize:
    vocab = gguf_vocab(ref.path, ref.spec)
    return lambda text: vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def _hf(ref: ModelRef) -> Tokenize:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"transformers could not load the tokenizer in {ref.path} ({first}); check the folder's tokenizer files") from None
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


_OPENERS: dict[str, Callable[[ModelRef], Tokenize]] = {"gguf": _gguf, "hf": _hf}
