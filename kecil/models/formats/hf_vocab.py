"""A Hugging Face tokenizer written into GGUF metadata the way llama.cpp's tokenizer expects it.

Two vocabulary kinds cover the supported models: byte-level BPE (tokenizer.json; SmolLM2,
Llama 3, Qwen, and Gemma 3 folders without tokenizer.model) and SentencePiece (tokenizer.model;
Gemma, Phi-3, Mistral 7B). Special tokens, BOS/EOS flags and the chat template come through
gguf-py's SpecialVocab. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gguf

from kecil.errors import InvalidModelError

_log = logging.getLogger(__name__)

# llama.cpp picks its pre-tokenizer (the regex that splits text before BPE) by name. kecil names
# it from the splitting rule the tokenizer.json itself declares, rather than from a table of
# hashes of known models, so any model with one of these rules converts.
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_QWEN2_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_SPLIT_TO_PRE = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def add_vocab(writer: gguf.GGUFWriter, hf_dir: Path, vocab_size: int, *, sentencepiece_space_prefix: bool | None = None) -> set[str]:
    """Write the tokenizer of `hf_dir` into `writer`; returns the set of token texts written."""
    if (hf_dir / "tokenizer.model").is_file():
        tokens = _add_sentencepiece(writer, hf_dir, vocab_size)
        if sentencepiece_space_prefix is not None:
            writer.add_add_space_prefix(sentencepiece_space_prefix)
        special = gguf.SpecialVocab(hf_dir, n_vocab=len(tokens))
    elif (hf_dir / "tokenizer.json").is_file():
        tokens = _add_bpe(writer, hf_dir, vocab_size)
        special = gguf.SpecialVocab(hf_dir, load_merges=True)
    else:
        raise InvalidModelError(
            f"{hf_dir} has neither tokenizer.json nor tokenizer.model, so its vocabulary cannot be converted: "
            "copy the tokenizer files from the original model into the folder"
        )
    special.add_to_gguf(writer, quiet=True)
    return {t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t for t in tokens}


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidModelError(f"cannot read {path} ({error}): copy an intact tokenizer file from the original model") from None


def bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer a tokenizer.json declares ("default" if none matches)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    for part in parts:
        if part.get("type") == "Split":
            pattern = part.get("pattern", {})
            regex = pattern.get("Regex") or pattern.get("String")
            if regex in _SPLIT_TO_PRE:
                return _SPLIT_TO_PRE[regex]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # GPT-2's rule with every digit split off (SmolLM, StarCoder)
    _log.warning("unrecognised BPE pre-tokenizer %s: llama.cpp's default splitting is used", kinds)
    return "default"


def _add_bpe(writer: gguf.GGUFWriter, hf_dir: Path, vocab_size: int) -> list[str]:
    data = _load_json(hf_dir / "tokenizer.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise InvalidModelError(
            f"{hf_dir / 'tokenizer.json'} holds a {model.get('type')} tokenizer; kecil converts byte-level BPE "
            "and SentencePiece vocabularies only"
        )
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    for token_id, token in added.items():
        vocab[token["content"]] = token_id
    size = max(vocab_size, max(vocab.values()) + 1)
    by_id = {token_id: text for text, token_id in vocab.items()}
    tokens, types = [], []
    for token_id in range(size):
        text = by_id.get(token_id)
        if text is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(text)
            control = added[token_id].get("special") or _looks_special(text)
            types.append(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(bpe_pre_tokenizer(data))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    return tokens


def _looks_special(text: str) -> bool:
    # Some models leave control tokens unmarked; llama.cpp's converter treats these shapes as control.
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<unused") and text.endswith(">"))


def _add_sentencepiece(writer: gguf.GGUFWriter, hf_dir: Path, vocab_size: int) -> list[bytes]:
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(hf_dir / "tokenizer.model"))
    except (OSError, RuntimeError) as error:
        raise InvalidModelError(f"cannot read {hf_dir / 'tokenizer.model'} ({error}): copy it again from the original model") from None
    size = max(vocab_size, processor.vocab_size())
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [gguf.TokenType.UNUSED] * size
    for token_id in range(processor.vocab_size()):
        tokens[token_id] = processor.IdToPiece(token_id).encode("utf-8")
        scores[token_id] = processor.GetScore(token_id)
        if processor.IsUnknown(token_id):
            types[token_id] = gguf.TokenType.UNKNOWN
        elif processor.IsControl(token_id):
            types[token_id] = gguf.TokenType.CONTROL
        elif processor.IsUnused(token_id):
            types[token_id] = gguf.TokenType.UNUSED
        elif processor.IsByte(token_id):
            types[token_id] = gguf.TokenType.BYTE
        else:
            types[token_id] = gguf.TokenType.NORMAL
    config_path = hf_dir / "tokenizer_config.json"
    decoder = _load_json(config_path).get("added_tokens_decoder", {}) if config_path.is_file() else {}
    for key, token in decoder.items():
        token_id = int(key)
        if token_id >= size:
            continue
        text = token["content"]
        if token.get("special") or _looks_special(text):
            types[token_id] = gguf.TokenType.CONTROL
        else:
            text = text.replace("\u2581", " ")  # llama.cpp expects user-defined tokens pre-normalised
            types[token_id] = gguf.TokenType.USER_DEFINED
        tokens[token_id] = text.encode("utf-8")
        scores[token_id] = -1000.0
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    return tokens
