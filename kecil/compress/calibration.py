"""Calibration: read calibration text, run it through the float model, and keep activation statistics.

For every matrix multiplication in the transformer blocks kecil records, over all calibration
tokens x, the mean of x*x per input column (llama.cpp's importance matrix, "imatrix") and,
when asked, the whole second-moment matrix mean(x x^T), the Hessian of the layer-wise
reconstruction error that GPTQ (https://arxiv.org/abs/2210.17323) needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from kecil.errors import ConfigError, InvalidModelError

DEFAULT_CALIBRATION = "calibration.txt"  # in kecil/compress/data; built by scripts/build_calibration_data.py
HELD_OUT = "heldout.txt"  # never used for calibration: the report's perplexity text
Progress = Callable[[int, int], None]


def bundled_text(name: str) -> str:
    return resources.files("kecil.compress").joinpath("data").joinpath(name).read_text(encoding="utf-8")


def read_calibration_text(path: Path | None) -> str:
    """The calibration text in `path` (plain text, or JSONL with a "text" field per line); None = bundled set."""
    if path is None:
        return bundled_text(DEFAULT_CALIBRATION)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the calibration file {path} ({error.strerror or error}): check the path") from None
    if b"\x00" in raw[:65536]:
        raise ConfigError(f"{path} is not a text file (it contains NUL bytes): pass UTF-8 text or JSONL to --calib")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text: convert it (iconv -t UTF-8) or pass another file to --calib") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        text = _jsonl_text(text, path)
    if len(text.strip()) < 200:
        raise ConfigError(
            f"the calibration file {path} holds {'no' if not text.strip() else 'too little'} text "
            "(need at least a few paragraphs; a few hundred kB is typical): pass a larger file, or omit --calib for kecil's own set"
        )
    return text


def json_records(text: str, path: Path, what: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of a .jsonl `what` file; a line that
    is not JSON stops with its number. Shared by calibration text and distillation data."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError:
            raise ConfigError(f"{path} line {number} is not JSON: a .jsonl {what} needs one JSON object per line") from None


def _jsonl_text(text: str, path: Path) -> str:
    parts = []
    for _, item in json_records(text, path, "calibration file"):
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, dict):
            value = item.get("text")
            parts.append(value if isinstance(value, str) else "\n".join(v for v in item.values() if isinstance(v, str)))
    return "\n\n".join(p for p in parts if p)


@dataclass
class LayerStats:
    """Activation statistics of one weight matrix's input."""

    importance: np.ndarray  # (n_cols,) mean of x^2 per input column: the imatrix entry
    hessian: np.ndarray | None  # (n_cols, n_cols) mean of x x^T, when collected
    tokens: int


@dataclass
class Calibration:
    stats: dict[str, LayerStats]  # by GGUF tensor name (blk.0.attn_q.weight ...)
    tokens: int
    chunks: int


def collect_statistics(
    model, tokenizer, text: str, name_map: Callable[[str], str | None], *, context: int = 512, max_chunks: int | None = None,
    hessian: bool = True, add_bos: bool = True, sink_positions: int = 0, progress: Progress | None = None,
) -> Calibration:
    """Run `text` through the torch `model` in chunks of `context` tokens and gather input statistics
    of every nn.Linear inside its transformer blocks. `name_map` turns a module's weight name
    into its GGUF tensor name (None to skip the module).

    `sink_positions` leaves the first tokens of every chunk (the "attention sink" positions with
    huge activations) out of the Hessian. Measured on SmolLM2: leaving 4 out made GPTQ worse
    (q4_k_m +1.74 instead of +1.49, q2_k +22.7 instead of +5.97), so the default keeps them."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    step = context - 1 if add_bos else context
    chunks = [ids[i : i + step] for i in range(0, len(ids) - step + 1, step)]
    if max_chunks:
        chunks = chunks[:max_chunks]
    if not chunks:
        raise ConfigError(
            f"the calibration text is {len(ids)} tokens, less than one {context}-token chunk: pass a longer --calib file"
        )
    bos = tokenizer.bos_token_id
    if add_bos and bos is not None:
        chunks = [[bos, *chunk] for chunk in chunks]
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    shared: dict[str, str] = {}  # module -> the module whose identical input it shares (q/k/v, gate/up)
    last = {"input": None, "name": None}
    hooks = []

    def hook_for(gguf_name: str):
        def hook(module, inputs):
            # The same tensor object feeding the next module (q, k and v; gate and up) is counted
            # once; holding it in `last` also keeps its memory from being reused meanwhile.
            if inputs[0] is last["input"]:
                shared.setdefault(gguf_name, last["name"])
                return
            last["input"], last["name"] = inputs[0], gguf_name
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            squares[gguf_name] = squares.get(gguf_name, 0) + (x * x).sum(0)
            if hessian:
                body = inputs[0].detach()[:, sink_positions:, :].reshape(-1, inputs[0].shape[-1]).float()
                sums[gguf_name] = sums.get(gguf_name, 0) + body.T @ body

        return hook

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for module_name, module in decoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = name_map(f"model.{module_name}.weight")
            if gguf_name:
                hooks.append(module.register_forward_pre_hook(hook_for(gguf_name)))
    if not hooks:
        raise InvalidModelError("found no linear layers to calibrate in this model: its architecture is not supported for calibration")
    device = next(model.parameters()).device  # chunks go where the model is (a GPU with quantize --device)
    try:
        with torch.inference_mode():
            for done, chunk in enumerate(chunks, start=1):
                decoder(input_ids=torch.tensor([chunk], device=device), use_cache=False)
                if progress:
                    progress(done, len(chunks))
    finally:
        last["input"] = None
        for h in hooks:
            h.remove()
    n_tokens = len(chunks) * len(chunks[0])
    stats = {}
    for name in squares:
        importance = (squares[name] / n_tokens).cpu().numpy().astype(np.float32)
        h = (sums[name] / (n_tokens - len(chunks) * sink_positions)).cpu().numpy().astype(np.float32) if hessian else None
        stats[name] = LayerStats(importance, h, n_tokens)
    for name, owner in shared.items():
        stats[name] = stats[owner]
    return Calibration(stats, n_tokens, len(chunks))
