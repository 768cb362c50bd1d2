"""Activation-aware weight scaling (AWQ, https://arxiv.org/abs/2306.00978), searched against ggml's own quantizers.

Columns of a weight matrix that meet large activations matter most. AWQ multiplies such input
columns by s > 1 before rounding (so they lose less relative precision) and divides the input by
the same s, folding 1/s into whatever produces that input: the RMSNorm weight in front of
q/k/v and gate/up, the rows of ffn_up in front of ffn_down, and the rows of attn_v in front of
attn_output. The model computes the same function in float; only the rounding changes. kecil
picks s = importance^(alpha/2) per layer group by trying a grid of alpha with the very ggml
quantizer and tensor types the file will use, and keeps the alpha with the smallest output error
tr(dW H dW^T) on the calibration statistics (alpha = 0, no scaling, is in the grid, so a
layer is never made worse by this measure). The folded file is still a plain llama.cpp GGUF.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGMLQuantizationType

from kecil.compress import ggml_kernels
from kecil.compress.calibration import LayerStats
from kecil.compress.quant_types import FLOAT_TYPES

ALPHAS = tuple(round(a * 0.1, 1) for a in range(11))  # alpha grid; AWQ's own search uses 20 steps over [0, 1)


@dataclass(frozen=True)
class Search:
    """How scales are searched. `floor` adds that fraction of the mean importance to every
    column's before s is computed, so a column that was quiet on the calibration text is not
    shrunk as if it never mattered; `max_ratio` bounds s's largest / smallest (0 = unbounded)."""

    alphas: tuple[float, ...] = ALPHAS
    floor: float = 0.0
    max_ratio: float = 0.0


# The search per method, from bench/quantize.py across held-out corpora (docs/benchmarks.md): with
# the spread of s bounded to 4, `awq`'s q4_k_m gain held on text unlike its calibration text
# (unbounded, it scaled columns quiet on the calibration text down to where other text lost
# precision); the bound was chosen on the tuning corpora. `awq-gptq` (q3_k_m, q2_k) keeps the
# unbounded search it was measured with. bench/quantize.py swaps entries to measure candidates.
SEARCHES = {"awq": Search(max_ratio=4.0), "awq-gptq": Search()}
# Rows are rounded independently, so the error summed over an even sample of rows estimates the
# whole matrix's; searching on at most this many rows per matrix makes the search several times faster.
SEARCH_ROWS = 256
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclass
class Scaling:
    """How to rewrite one tensor: W * columns[None, :] / rows[:, None]; a 1-D tensor is divided by `rows`."""

    columns: np.ndarray | None = None
    rows: np.ndarray | None = None

    def apply(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 1:
            return values / self.rows if self.rows is not None else values
        if self.columns is not None:
            values = values * self.columns[None, :]
        if self.rows is not None:
            values = values / self.rows[:, None]
        return values


@dataclass
class _Group:
    """Matrices that read one input, and the tensors that produce that input (where 1/s is folded)."""

    matrices: list[str]
    producers: list[str]  # 1-D tensors (norm weight, bias) divided by s, or matrices whose rows are
    expand: Callable[[np.ndarray], np.ndarray] | None = None  # producer-side s -> matrix-column s (GQA)


def fold_scales(
    weights: Callable[[str], np.ndarray], names: set[str], types: dict[str, GGMLQuantizationType], stats: dict[str, LayerStats],
    *, n_head: int, n_head_kv: int, threads: int = 1, progress: Callable[[int, int], None] | None = None, search: Search = Search(),
) -> tuple[dict[str, Scaling], dict[str, LayerStats]]:
    """The AWQ scalings of every foldable layer group, and the statistics as the scaled inputs see them.

    `weights(name)` returns a tensor's float values (rows, columns); `types` is each tensor's
    target type. Groups whose matrices stay float, lack statistics or a Hessian are left alone."""
    groups = [g for g in _groups(names, n_head, n_head_kv) if _searchable(g, types, stats)]
    scalings: dict[str, Scaling] = {}
    new_stats: dict[str, LayerStats] = dict(stats)
    for done, group in enumerate(groups, start=1):
        base = stats[group.matrices[0]]
        producer_importance = base.importance if group.expand is None else _collapse(base.importance, n_head, n_head_kv)
        matrices = {name: _sample_rows(weights(name)) for name in group.matrices}
        s = _search(matrices, types, base, producer_importance, group.expand, threads, search)
        if s is not None:
            column_s = s if group.expand is None else group.expand(s)
            for name in group.matrices:
                _merge(scalings, name, columns=column_s)
            for name in group.producers:
                _merge(scalings, name, rows=s)
            scaled = _scaled_stats(base, column_s)
            for name in group.matrices:
                new_stats[name] = scaled
        if progress:
            progress(done, len(groups))
    return scalings, new_stats


def _groups(names: set[str], n_head: int, n_head_kv: int) -> list[_Group]:
    layers = sorted({int(m.group(1)) for m in map(_LAYER.match, names) if m})
    groups = []
    for i in layers:
        has = lambda suffix: f"blk.{i}.{suffix}" in names  # noqa: E731
        at = lambda *suffixes: [f"blk.{i}.{s}" for s in suffixes if has(s)]  # noqa: E731
        if has("attn_norm.weight") and not has("attn_norm.bias"):  # RMSNorm only: a LayerNorm bias would not scale
            attention = at("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_qkv.weight")
            if attention:
                groups.append(_Group(attention, [f"blk.{i}.attn_norm.weight"]))
        if has("ffn_norm.weight") and not has("ffn_norm.bias"):
            mlp = at("ffn_gate.weight", "ffn_up.weight")
            if mlp:
                groups.append(_Group(mlp, [f"blk.{i}.ffn_norm.weight"]))
        # ffn_down reads act(gate) * up: scaling up's rows scales its input exactly (not so for a fused gate_up).
        if has("ffn_down.weight") and has("ffn_up.weight") and has("ffn_gate.weight"):
            groups.append(_Group([f"blk.{i}.ffn_down.weight"], at("ffn_up.weight", "ffn_up.bias")))
        # attn_output reads softmax(..) @ v: scaling v's rows scales it exactly, shared by the query heads of a KV head.
        if has("attn_output.weight") and has("attn_v.weight") and not (has("attn_v_norm.weight") or has("attn_v.scale")):
            groups.append(_Group([f"blk.{i}.attn_output.weight"], at("attn_v.weight", "attn_v.bias"), _expander(n_head, n_head_kv)))
    return groups


def _searchable(group: _Group, types: dict[str, GGMLQuantizationType], stats: dict[str, LayerStats]) -> bool:
    first = stats.get(group.matrices[0])
    return (
        first is not None and first.hessian is not None
        and all(stats.get(m) is first for m in group.matrices)  # one shared input, one set of statistics
        and any(types[m] not in FLOAT_TYPES for m in group.matrices)
    )  # fmt: skip


def _expander(n_head: int, n_head_kv: int) -> Callable[[np.ndarray], np.ndarray]:
    """KV-head layout (n_kv * head_dim) -> query-head layout (n_head * head_dim): query head h reads KV head h // (n_head / n_kv)."""

    def expand(s: np.ndarray) -> np.ndarray:
        per_head = s.reshape(n_head_kv, 1, -1)
        return np.repeat(per_head, n_head // n_head_kv, axis=1).reshape(-1)

    return expand


def _sample_rows(w: np.ndarray) -> np.ndarray:
    if w.shape[0] <= SEARCH_ROWS:
        return w
    return np.ascontiguousarray(w[np.linspace(0, w.shape[0] - 1, SEARCH_ROWS).astype(int)])


def _collapse(importance: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    return importance.reshape(n_head_kv, n_head // n_head_kv, -1).mean(axis=1).reshape(-1)


def _search(
    matrices: dict[str, np.ndarray], types: dict[str, GGMLQuantizationType], stats: LayerStats, producer_importance: np.ndarray,
    expand, threads: int, search: Search = Search(),
) -> np.ndarray | None:
    """The s (in the producer's layout) with the least output error over the alpha grid; None if alpha = 0 wins."""
    h = stats.hessian.astype(np.float32)
    importance = np.maximum(producer_importance, 0.0)
    magnitude = np.sqrt(importance + search.floor * float(importance.mean()))
    floor = max(float(magnitude.max()) * 1e-4, 1e-12)
    best_error, best_s = None, None
    for alpha in search.alphas:
        s = np.maximum(magnitude, floor) ** alpha
        if search.max_ratio:
            s = np.minimum(s, s.min() * search.max_ratio)
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)  # centred around 1, as AWQ does
        column_s = s if expand is None else expand(s)
        error = 0.0
        for name, w in matrices.items():
            qtype = types[name]
            if qtype in FLOAT_TYPES:
                continue
            raw = ggml_kernels.quantize(w * column_s[None, :], qtype, stats.importance / column_s**2, threads=threads)
            delta = w - ggml_kernels.dequantize(raw, qtype, w.shape[1]) / column_s[None, :]
            error += float(np.sum((delta @ h) * delta))
        if best_error is None or error < best_error:
            best_error, best_s = error, (None if alpha == 0 else s)
    return best_s


def _merge(scalings: dict[str, Scaling], name: str, *, columns=None, rows=None) -> None:
    current = scalings.setdefault(name, Scaling())
    if columns is not None:
        current.columns = columns if current.columns is None else current.columns * columns
    if rows is not None:
        current.rows = rows if current.rows is None else current.rows * rows


def _scaled_stats(stats: LayerStats, s: np.ndarray) -> LayerStats:
    """Statistics of the input x / s that the scaled matrices now read."""
    hessian = None if stats.hessian is None else stats.hessian / np.outer(s, s)
    return LayerStats(stats.importance / s**2, hessian, stats.tokens)
