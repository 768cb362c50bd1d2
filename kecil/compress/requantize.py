"""Rewrite a GGUF file at another quantization type: metadata copied, every weight re-rounded by ggml.

The source's weights are dequantized to float (ggml's own `to_float`), each tensor gets the
type llama.cpp's policy gives it (`quant_types.choose_types`), and is quantized by ggml's
`ggml_quantize_chunk` — plain, with an importance vector, through GPTQ, or after AWQ scaling
(awq.py; optionally followed by GPTQ). Output goes to a temporary file renamed only when complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, Keys

from kecil.compress import ggml_kernels
from kecil.compress.awq import SEARCHES, Scaling, fold_scales
from kecil.compress.calibration import LayerStats
from kecil.compress.gptq import inverse_hessian_factor, quantize_gptq
from kecil.compress.quant_types import FLOAT_TYPES, QuantType, choose_types, tensor_order
from kecil.errors import InvalidModelError
from kecil.models.formats.gguf_io import atomic_output
from kecil.scratch import disk_full, is_disk_full

Progress = Callable[[int, int], None]
METHODS = ("none", "imatrix", "gptq", "awq", "awq-gptq")
_SCALED = ("awq", "awq-gptq")  # methods that fold AWQ scales into the weights first
_COMPENSATED = ("gptq", "awq-gptq")  # methods that spread rounding errors with GPTQ
# Keys that describe the old file's encoding rather than the model: rewritten, never copied.
_NOT_COPIED = (Keys.General.ARCHITECTURE, Keys.General.FILE_TYPE, Keys.General.QUANTIZATION_VERSION)


@dataclass
class RequantizeSummary:
    tensor_types: dict[str, str] = field(default_factory=dict)  # ggml type name -> tensor count
    calibrated_tensors: int = 0
    planned_bytes: int = 0  # the output's size, known before writing (for a full disk's message)


def read_source(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as error:
        raise InvalidModelError(f"cannot read {path} as GGUF ({error}): the file is truncated or corrupt; get a fresh copy") from None


def requantize(
    source: Path, output: Path, qtype: QuantType, *, stats: dict[str, LayerStats] | None = None, method: str = "imatrix",
    metadata: dict[str, tuple[object, GGUFValueType]] | None = None, threads: int = 1, progress: Progress | None = None,
    scale_progress: Progress | None = None,
) -> RequantizeSummary:
    """Write `source` (a GGUF file) to `output` at `qtype`. With `stats` from calibration, `method`
    "imatrix" weights ggml's rounding by the importance vector, "gptq" also compensates errors,
    "awq" scales weights by activation size first (folding the inverse into the layer before),
    and "awq-gptq" does both."""
    reader = read_source(source)
    arch = _field(reader, Keys.General.ARCHITECTURE)
    n_layers = int(_field(reader, Keys.LLM.BLOCK_COUNT.format(arch=arch)))
    n_head = _field(reader, Keys.Attention.HEAD_COUNT.format(arch=arch))
    n_head_kv = _field(reader, Keys.Attention.HEAD_COUNT_KV.format(arch=arch), n_head)
    n_gqa = int(n_head) // max(1, int(n_head_kv)) if n_head else 1
    tensors = sorted(reader.tensors, key=lambda t: tensor_order(t.name))
    use_stats = stats if method != "none" else None
    plan = [(t.name, tuple(int(d) for d in t.shape), GGMLQuantizationType(t.tensor_type)) for t in tensors]
    types = choose_types(plan, qtype, n_layers=n_layers, n_gqa=n_gqa, has_imatrix=bool(use_stats))
    scalings: dict[str, Scaling] = {}
    if use_stats and method in _SCALED:
        by_name = {t.name: t for t in tensors}
        scalings, use_stats = fold_scales(
            lambda name: _float_values(by_name[name]), set(by_name), types, use_stats, n_head=int(n_head),
            n_head_kv=int(n_head_kv), threads=threads, progress=scale_progress, search=SEARCHES[method],
        )  # fmt: skip

    writer = GGUFWriter(None, arch)
    _copy_metadata(reader, writer, skip=set(metadata or ()))
    writer.add_file_type(int(qtype.file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    for key, (value, vtype) in (metadata or {}).items():
        writer.add_key_value(key, value, vtype)
    summary = RequantizeSummary()
    for t in tensors:
        new = types[t.name]
        shape = tuple(int(d) for d in reversed(t.shape))  # torch order: rows first
        block, type_size = GGML_QUANT_SIZES[new]
        nbytes = int(np.prod(shape)) // block * type_size
        writer.add_tensor_info(t.name, (*shape[:-1], shape[-1] // block * type_size), np.dtype(np.uint8), nbytes, raw_dtype=new)
        summary.tensor_types[new.name] = summary.tensor_types.get(new.name, 0) + 1
        summary.planned_bytes += nbytes
    summary.planned_bytes += max(0, Path(source).stat().st_size - sum(int(t.n_bytes) for t in tensors))  # metadata, as the source's
    factors: dict[int, tuple] = {}  # one inverse-Hessian factor per shared input (q/k/v, gate/up)
    try:
        with atomic_output(output) as temp:
            writer.write_header_to_file(path=temp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for done, t in enumerate(tensors, start=1):
                layer_stats = use_stats.get(t.name) if use_stats else None
                data = _encode(t, types[t.name], layer_stats, method, threads, factors, scalings.get(t.name))
                summary.calibrated_tensors += layer_stats is not None and types[t.name] not in FLOAT_TYPES
                writer.write_tensor_data(data)
                if progress:
                    progress(done, len(tensors))
            writer.close()
    except OSError as error:
        _close_quietly(writer)  # the unlinked temporary's space comes back only when its file is closed
        if is_disk_full(error):
            raise disk_full(Path(output).parent, summary.planned_bytes, Path(output).name) from None
        raise
    return summary


def _close_quietly(writer: GGUFWriter) -> None:
    for fout in writer.fout or ():
        try:
            fout.close()  # a failed flush still closes the file
        except OSError:
            pass
    writer.fout = None


def _float_values(tensor) -> np.ndarray:
    """A tensor's values as float32, (rows, columns) for a matrix."""
    values = ggml_kernels.dequantize(np.asarray(tensor.data), GGMLQuantizationType(tensor.tensor_type), int(tensor.shape[0]))
    return values.reshape(-1) if len(tensor.shape) == 1 else values


def _encode(
    tensor, new: GGMLQuantizationType, stats: LayerStats | None, method: str, threads: int, factors: dict, scaling: Scaling | None = None
) -> np.ndarray:
    current = GGMLQuantizationType(tensor.tensor_type)
    raw = np.asarray(tensor.data)
    if new == current and scaling is None:
        return raw.reshape(-1).view(np.uint8)
    n_per_row = int(tensor.shape[0])
    values = ggml_kernels.dequantize(raw, current, n_per_row)
    if scaling is not None:
        values = np.ascontiguousarray(scaling.apply(values.reshape(-1) if len(tensor.shape) == 1 else values).reshape(values.shape))
    if new == GGMLQuantizationType.F32:
        return values.reshape(-1).view(np.uint8)
    if new == GGMLQuantizationType.F16:
        return values.astype(np.float16).reshape(-1).view(np.uint8)
    if new == GGMLQuantizationType.BF16:
        return ggml_kernels.quantize(values, new).reshape(-1)
    importance = None if stats is None else stats.importance
    if importance is not None and importance.shape[0] != n_per_row:
        importance = None  # e.g. statistics of a different model: never guess
    if method in _COMPENSATED and stats is not None and stats.hessian is not None and importance is not None:
        if id(stats) not in factors:
            factors.clear()  # the next matrices read another input: keep only one factor alive
            factors[id(stats)] = (stats, inverse_hessian_factor(stats.hessian))
        return quantize_gptq(values, stats.hessian, new, importance, factor=factors[id(stats)][1]).reshape(-1)
    return ggml_kernels.quantize(values, new, importance, threads=threads).reshape(-1)


def _field(reader: GGUFReader, key: str, default=None):
    found = reader.get_field(key)
    if found is None:
        if default is not None:
            return default
        raise InvalidModelError(f"{reader.data.filename if hasattr(reader.data, 'filename') else 'the GGUF'} has no {key}: not a llama.cpp model file")
    return found.contents()


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter, skip: set[str]) -> None:
    """Every key of the source except its encoding's and those `skip` names (written anew)."""
    for key, item in reader.fields.items():
        if key.startswith("GGUF.") or key in _NOT_COPIED or key.startswith("quantize.") or key in skip:
            continue
        vtype = item.types[0]
        sub_type = item.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, item.contents(), vtype, sub_type)
