"""What a quantization did, as facts and plain sentences: the real bits per weight read from the
written file, the tensors that fell back to other types and why, and whether the output is larger
or worse than its input.

Why the real figure differs from a type's name: llama.cpp's k-quants (q2_k … q6_k) pack 256 values
per block, so a matrix whose rows are not a multiple of 256 (SmolLM2's 576) gets a 32-value type
instead (Q4_0, Q5_0, Q5_1, Q8_0; `quant_types._FALLBACK`), and the mixes give some tensors more bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES

from kecil.compress.quant_types import allows_quantization
from kecil.models.info import format_bytes

K_BLOCK = 256  # values per k-quant block


@dataclass(frozen=True)
class TensorCensus:
    """The tensor types of a GGUF file, counted from its tensor table."""

    types: dict[str, int]  # ggml type name -> tensors of that type
    weights: int  # values in all tensors
    data_bytes: int  # bytes of all tensor data
    quantizable: int  # 2-D weight matrices (the tensors a file type decides)
    fallbacks: int = 0  # of those, matrices whose rows do not split into the target's 256-value blocks
    fallback_types: tuple[str, ...] = ()
    fallback_rows: tuple[int, ...] = ()  # their distinct row lengths

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.data_bytes / self.weights if self.weights else 0.0


def census(path: Path, target=None) -> TensorCensus:
    """Count the tensor types of the GGUF at `path`; with `target` (a QuantType) also the matrices
    that fell back from its 256-value k-quant blocks to another type because of their row length."""
    from kecil.models.gguf_header import read_gguf_header

    header = read_gguf_header(path)
    types: dict[str, int] = {}
    quantizable = 0
    fallback_types: dict[str, int] = {}
    rows: set[int] = set()
    target_block = GGML_QUANT_SIZES[target.default][0] if target is not None else 1
    for t in header.tensors:
        types[t.ggml_type.name] = types.get(t.ggml_type.name, 0) + 1
        if not allows_quantization(t.name, tuple(reversed(t.shape))):
            continue
        quantizable += 1
        row = t.shape[0]
        if target_block == K_BLOCK and row % K_BLOCK and GGML_QUANT_SIZES[t.ggml_type][0] < K_BLOCK:
            fallback_types[t.ggml_type.name] = fallback_types.get(t.ggml_type.name, 0) + 1
            rows.add(row)
    return TensorCensus(
        types=dict(sorted(types.items(), key=lambda kv: -kv[1])),
        weights=sum(t.n_elements for t in header.tensors),
        data_bytes=sum(t.nbytes for t in header.tensors),
        quantizable=quantizable,
        fallbacks=sum(fallback_types.values()),
        fallback_types=tuple(sorted(fallback_types, key=lambda name: -fallback_types[name])),
        fallback_rows=tuple(sorted(rows)),
    )


def bits_sentence(type_name: str, found: TensorCensus) -> str:
    """e.g. "q3_k_m: 4.9 bits/weight; 120 of 211 tensors fell back to Q4_0/Q5_0 because their rows
    (576) are not a multiple of 256"."""
    line = f"{type_name}: {found.bits_per_weight:.1f} bits/weight"
    if found.fallbacks:
        rows = ", ".join(str(r) for r in found.fallback_rows)
        line += (
            f"; {found.fallbacks} of {found.quantizable} tensors fell back to {'/'.join(found.fallback_types)} because their "
            f"rows ({rows}) are not a multiple of {K_BLOCK}"
        )
    return line


@dataclass
class Comparison:
    """The output against its input: the facts a user decides on."""

    larger_than_source: bool
    worse_than_source: bool | None  # None when perplexity was not measured
    notes: list[str] = field(default_factory=list)


def compare(
    source_bytes: int, output_bytes: int, source_ppl: float | None, output_ppl: float | None, *, source_name: str,
    source_bits: float | None = None,
) -> Comparison:
    """Say plainly when the output is larger or worse than its input."""
    larger = output_bytes > source_bytes > 0
    worse = None if source_ppl is None or output_ppl is None else output_ppl > source_ppl
    sizes = f"{format_bytes(output_bytes)} against {format_bytes(source_bytes)}"
    already = f"; the input is already {source_bits:.1f} bits/weight" if source_bits else ""
    notes = []
    if larger and worse:
        notes.append(
            f"the output is LARGER ({sizes}{already}) and WORSE (perplexity {source_ppl:.3f} -> {output_ppl:.3f}) than its input: "
            f"nothing is gained; keep {source_name}"
        )
    elif larger:
        notes.append(f"the output is LARGER than its input ({sizes}{already}): keep {source_name} unless you need this type")
    elif worse:
        notes.append(f"the output is smaller ({sizes}) and worse than its input (perplexity {source_ppl:.3f} -> {output_ppl:.3f})")
    return Comparison(larger, worse, notes)


def describe(result, ref, found: TensorCensus) -> None:
    """Fill in a QuantizeResult's real bits per weight, fallbacks and plain notes, from the census
    of its written file and `ref`, the source it was made from."""
    result.bits_per_weight = found.bits_per_weight
    result.quantized_tensors, result.fallback_tensors = found.quantizable, found.fallbacks
    result.fallback_types, result.fallback_rows = list(found.fallback_types), list(found.fallback_rows)
    if ref.format == "gguf":
        result.source_bits_per_weight = census(ref.path).bits_per_weight
    r = result.report
    verdict = compare(
        result.source_bytes, result.output_bytes, r.source_perplexity if r else None, r.quantized_perplexity if r else None,
        source_name=ref.spec, source_bits=result.source_bits_per_weight,
    )  # fmt: skip
    result.larger_than_source, result.worse_than_source = verdict.larger_than_source, verdict.worse_than_source
    result.notes = verdict.notes + ([bits_sentence(result.type, found)] if found.fallbacks else [])


def report_lines(result) -> list[str]:
    """What `kecil quantize` prints for a QuantizeResult: sizes, bits per weight, the measured report
    and every note, one line each."""
    mb = 1024 * 1024
    lines = [
        f"wrote {result.output} ({result.type}, {result.method}) in {result.seconds:.1f}s",
        f"  size        {result.source_bytes / mb:8.1f} MiB -> {result.output_bytes / mb:8.1f} MiB ({result.ratio:.0%})",
    ]
    if result.bits_per_weight:
        source = f"{result.source_bits_per_weight:8.2f}" if result.source_bits_per_weight else " " * 8
        lines.append(f"  bits/weight {source}     -> {result.bits_per_weight:8.2f}")
    if result.report:
        r = result.report
        lines += [
            f"  perplexity  {r.source_perplexity:8.3f}     -> {r.quantized_perplexity:8.3f}     ({r.perplexity_increase:+.3f} on {r.perplexity_tokens} held-out tokens)",
            f"  decode      {r.decode_tokens_per_second:8.1f} tok/s",
            f"  peak RAM    {r.peak_ram_bytes / mb:8.0f} MiB (the quantized model alone, measured in a fresh process)",
        ]  # fmt: skip
    lines += [f"  note: {note}" for note in result.notes]
    return lines
