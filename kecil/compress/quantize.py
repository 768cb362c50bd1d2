"""`kecil quantize`: turn a model into a smaller GGUF file and report, in the same run, what it cost.

Pipeline: resolve MODEL (an HF folder is converted to a float GGUF first) → optionally
calibrate (activation statistics of the float model on calibration text, see calibration.py)
→ requantize every tensor with ggml's own quantizers, weighted by the importance matrix or
error-compensated by GPTQ, after AWQ scaling (requantize.py, gptq.py, awq.py) → report size, held-out perplexity of
both models, decode speed and peak RAM, each model measured alone in a fresh process
(kecil.infer.measure), with the real bits per weight and plain notes when the output is larger
or worse than its input (report.py). `--to int8|int4` instead writes a folder of torch
weight-only layers (weight_only.py) that the torch backend runs, with the same report.
A built-in's preset system prompt travels in the written GGUF (kecil.models.reference.SYSTEM_PROMPT_KEY).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kecil.compress.calibration import HELD_OUT, Calibration, bundled_text, collect_statistics, read_calibration_text
from kecil.compress.quant_types import QUANT_TYPES, quant_type
from kecil.compress.report import census, compare, describe
from kecil.compress.requantize import METHODS, read_source, requantize
from kecil.errors import ConfigError, InvalidModelError
from kecil.infer.hardware import check_device_name, device_field, physical_cores
from kecil.models.reference import SYSTEM_PROMPT_KEY, ModelRef, resolve
from kecil.scratch import disk_full, is_disk_full, owned_prefix, sweep_stale

# (stage, done, total): stages are "convert", "calibrate", "scale" (AWQ's search), "quantize", "report".
Progress = Callable[[str, int, int], None]
CALIBRATION_CONTEXT = 512  # tokens per calibration chunk, as llama-imatrix's default
# What "--method auto" does per type, from bench/quantize.py across held-out corpora
# (docs/benchmarks.md, 2026-12-06): the lowest mean added perplexity was AWQ with its bounded
# search at q4_k_m (still worse than llama-imatrix on Shakespeare) and the importance matrix at
# q2_k (AWQ then GPTQ, the old q2_k default, added 44% more than llama-imatrix: it fitted the
# Wikipedia calibration text). q3_k_m keeps AWQ then GPTQ, and q6_k, q5_k_m, q4_0 AWQ, as measured
# on one held-out text only (2026-11-26); f16 and q8_0 use no statistics.
AUTO_METHODS = {"f16": "none", "q8_0": "none", "q3_k_m": "awq-gptq", "q2_k": "imatrix"}
AUTO_DEFAULT = "awq"
NEEDS_HESSIAN = ("gptq", "awq", "awq-gptq")  # methods that read mean(x x^T), not only its diagonal
WEIGHT_ONLY = {"int8": 8, "int4": 4}  # torch-side types: a folder for the torch backend, not a GGUF


@dataclass
class QuantizeConfig:
    """What to quantize, to what, and how."""

    model: str  # a built-in name, a .gguf file or a Hugging Face folder
    to: str  # one of QUANT_TYPES (f16 q8_0 q6_k q5_k_m q4_k_m q4_0 q3_k_m q2_k), or int8/int4 (torch weight-only)
    output: Path  # the GGUF file to write (a folder for int8/int4)
    calib: Path | None = None  # calibration text or JSONL; None = kecil's bundled set (its first 32 chunks are English Wikipedia)
    report: bool = True  # measure perplexity, speed and RAM after writing
    # "auto": per type, the method that measured best (AUTO_METHODS); "imatrix" (importance-
    # weighted rounding), "gptq" (that plus GPTQ error compensation), "awq" (activation-aware
    # scaling, then importance-weighted rounding), "awq-gptq" (scaling, then GPTQ), "none" (no calibration).
    method: str = "auto"
    calib_chunks: int = 32  # most 512-token calibration chunks read (the rest of a long file is skipped)
    heldout: Path | None = None  # report perplexity text; None = kecil's bundled held-out text
    threads: int | None = None
    # Where calibration runs the float model: on a GPU in bfloat16 (float16 where unsupported); the
    # statistics are summed in float32 either way.
    device: str = device_field()
    # Statistics from an earlier `calibrate()` of the same model, reused instead of recomputed
    # (quantizing one model to several types calibrates once).
    statistics: Calibration | None = None
    group_size: int = 64  # int8/int4 only: input columns sharing one scale (32, 64 or 128)
    # A system prompt to carry in the GGUF instead of the model's own preset (kecil build's recipe
    # sets one: a merged Hugging Face folder has none to carry).
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        check_device_name(self.device)
        self.output = Path(self.output)
        if self.to.strip().lower() in WEIGHT_ONLY:
            self.to, self.qtype = self.to.strip().lower(), None
            if self.calib is not None or self.method not in ("auto", "none"):
                raise ConfigError(f"--to {self.to} rounds each group of weights on its own, without calibration: drop --calib and --method")
            if self.output.suffix.lower() == ".gguf":
                raise ConfigError(f"--to {self.to} writes a folder for the torch backend, not a GGUF file: give -o a folder name")
            return
        if self.group_size != 64:
            raise ConfigError("--group-size applies to --to int8/int4 only; GGUF types have fixed block sizes")
        self.qtype = quant_type(self.to)  # validates the name
        if self.method not in ("auto", *METHODS):
            raise ConfigError(f"unknown quantization method {self.method!r}; choose one of: auto, {', '.join(METHODS)}")
        if self.calib is not None and self.method == "none":
            raise ConfigError("--calib was given with --method none: drop one of them")
        if self.calib_chunks < 1:
            raise ConfigError(f"calib_chunks must be at least 1, got {self.calib_chunks}")
        if self.output.suffix.lower() != ".gguf":  # int8/int4 returned above
            raise ConfigError(f"the output {self.output} should end in .gguf (kecil quantize writes GGUF files)")

    @property
    def resolved_method(self) -> str:
        if self.qtype is None:
            return "none"
        if self.method != "auto":
            return self.method
        return AUTO_METHODS.get(self.qtype.name, AUTO_DEFAULT)


@dataclass
class QuantizeReport:
    """What the quantization cost: measured after writing, on text calibration never saw."""

    source_perplexity: float
    quantized_perplexity: float
    perplexity_tokens: int
    decode_tokens_per_second: float
    peak_ram_bytes: int  # the quantized model's process alone (load, perplexity, decode), not calibration's
    source_peak_ram_bytes: int = 0

    @property
    def perplexity_increase(self) -> float:
        return self.quantized_perplexity - self.source_perplexity


@dataclass
class QuantizeResult:
    output: Path
    type: str
    method: str
    source: str
    source_bytes: int
    output_bytes: int
    seconds: float  # conversion + calibration + quantization, without the report
    calibration_tokens: int = 0
    tensor_types: dict[str, int] = field(default_factory=dict)
    report: QuantizeReport | None = None
    bits_per_weight: float = 0.0  # real: every tensor's bytes over every tensor's values, read from the file
    source_bits_per_weight: float | None = None  # for a GGUF source
    quantized_tensors: int = 0  # 2-D weight matrices
    fallback_tensors: int = 0  # of those, given a 32-value type because their rows are not a multiple of 256
    fallback_types: list[str] = field(default_factory=list)
    fallback_rows: list[int] = field(default_factory=list)
    larger_than_source: bool = False
    worse_than_source: bool | None = None  # None when the report was not measured
    system_prompt: str | None = None  # the preset carried into the output (kecil.system_prompt)
    notes: list[str] = field(default_factory=list)  # plain sentences: larger/worse, fallbacks, a dropped preset

    @property
    def ratio(self) -> float:
        return self.output_bytes / self.source_bytes if self.source_bytes else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["output"] = str(self.output)
        data["ratio"] = round(self.ratio, 4)
        if self.report:
            data["report"]["perplexity_increase"] = self.report.perplexity_increase
        return data


def quantize(config: QuantizeConfig, progress: Progress | None = None) -> QuantizeResult:
    """Quantize `config.model` to `config.to` and write `config.output`; see QuantizeConfig."""
    started = time.perf_counter()
    if config.qtype is None:
        return _weight_only(config, started, progress)
    if not config.output.parent.is_dir():
        raise ConfigError(f"the output folder {config.output.parent} does not exist: create it or pick another -o path")
    ref = resolve(config.model)
    refuse_overwriting(ref.path, config.output)
    sweep_stale(config.output.parent)  # what killed runs left here: .part files, working folders
    method = config.resolved_method
    calib_text = read_calibration_text(config.calib) if method != "none" and config.statistics is None else None
    heldout_text = _heldout_text(config) if config.report else None
    threads = config.threads or physical_cores()
    try:
        with tempfile.TemporaryDirectory(prefix=owned_prefix("quantize"), dir=config.output.parent) as tmp:
            source = _as_gguf(ref, Path(tmp), progress)
            calibration = config.statistics if method != "none" else None
            if calibration is None and calib_text:
                calibration = _calibrate(ref, source, calib_text, method, config, threads, progress)
            stats = calibration.stats if calibration else None
            metadata = _calibration_metadata(config, calibration)
            system_prompt = config.system_prompt or ref.system_prompt  # else a built-in's preset, or one read from a GGUF kecil wrote
            if system_prompt:
                metadata[SYSTEM_PROMPT_KEY] = (system_prompt, _string_type())
            summary = requantize(
                source, config.output, config.qtype, stats=stats, method=method if stats else "none", threads=threads,
                metadata=metadata, progress=_stage(progress, "quantize"), scale_progress=_stage(progress, "scale"),
            )  # fmt: skip
            seconds = time.perf_counter() - started
            result = QuantizeResult(
                output=config.output, type=config.qtype.name, method=method if stats else "none", source=str(ref.path),
                source_bytes=_size(ref), output_bytes=config.output.stat().st_size, seconds=seconds,
                calibration_tokens=calibration.tokens if calibration else 0, tensor_types=summary.tensor_types,
                system_prompt=system_prompt,
            )  # fmt: skip
            if heldout_text is not None:
                result.report = _report(source, config.output, heldout_text, threads, progress)
    except OSError as error:
        if not is_disk_full(error):
            raise
        # requantize names the output's exact size; this is the HF folder's float copy (about its own size)
        raise disk_full(config.output.parent, _size(ref), f"a GGUF copy of {ref.name}") from None
    describe(result, ref, census(config.output, config.qtype))
    return result


def refuse_overwriting(source: Path, output: Path) -> None:
    """A ConfigError when `output` is the input itself: the same path, or the same file reached
    through a symbolic or hard link (same device and inode). Writing it would destroy the input."""
    try:
        a, b = os.stat(source), os.stat(output)
    except OSError:
        return  # the output does not exist yet: nothing to destroy
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        how = "" if Path(source).resolve() == Path(output).resolve() else f" (through a link to {source})"
        raise ConfigError(f"-o {output} is the input model itself{how}: writing it would destroy the input; pick another -o path")


def _string_type():
    from gguf import GGUFValueType

    return GGUFValueType.STRING


def _torch_threads(threads: int) -> int:
    """One thread when the CPU is already busy: torch's OpenMP workers spin-wait for each other,
    and on a 2-core machine with other jobs running a 2-thread forward pass was measured 4x
    slower than a 1-thread one (42 s against 10.5 s for 512 tokens of SmolLM2)."""
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if busy > physical_cores() else threads


def _stage(progress: Progress | None, stage: str):
    return (lambda done, total: progress(stage, done, total)) if progress else None


def _size(ref: ModelRef) -> int:
    if ref.format == "gguf":
        return ref.path.stat().st_size
    return sum(p.stat().st_size for p in ref.path.iterdir() if p.suffix in (".safetensors", ".bin"))


def _heldout_text(config: QuantizeConfig) -> str:
    if config.heldout is None:
        return bundled_text(HELD_OUT)
    try:
        return Path(config.heldout).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the held-out text {config.heldout} ({error}): pass a UTF-8 text file") from None


def _as_gguf(ref: ModelRef, tmp: Path, progress: Progress | None) -> Path:
    """The model as a GGUF file: itself, or an HF folder converted at its own float precision."""
    if ref.format == "gguf":
        read_source(ref.path)  # a corrupt file fails here, before any work
        return ref.path
    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

    return convert_hf_to_gguf(ref.path, tmp / "source.gguf", out_type="auto", progress=_stage(progress, "convert"))


def calibrate(config: QuantizeConfig, progress: Progress | None = None) -> Calibration:
    """Only the calibration step of `quantize(config)`: activation statistics to pass back as
    `QuantizeConfig(statistics=...)` when quantizing the same model to several types."""
    ref = resolve(config.model)
    method = "gptq"  # keep the Hessians too: the statistics may serve a type whose method needs them
    text = read_calibration_text(config.calib)
    sweep_stale(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=owned_prefix("quantize")) as tmp:
        source = _as_gguf(ref, Path(tmp), progress)
        return _calibrate(ref, source, text, method, config, config.threads or physical_cores(), progress)


def _calibrate(ref: ModelRef, source: Path, text: str, method: str, config: QuantizeConfig, threads: int, progress) -> Calibration:
    """Activation statistics of the float model on the calibration text, keyed by GGUF tensor name."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kecil.infer.hardware import half_dtype, resolve_device
    from kecil.infer.torch_backend import pretrained_source, quiet_transformers
    from kecil.models.info import inspect_model

    quiet_transformers()
    torch.set_num_threads(_torch_threads(threads))
    device = resolve_device(config.device)
    placed = {"dtype": half_dtype(device), "device_map": str(device)} if device.type == "cuda" else {"dtype": torch.float32}
    where, _ = pretrained_source(ref, use_copy=device.type != "cuda")  # a float copy: the same weights, loaded in a second
    try:
        tokenizer = _GgufTokenizer(ref.path) if ref.format == "gguf" else AutoTokenizer.from_pretrained(**where)
        model = AutoModelForCausalLM.from_pretrained(**where, **placed, local_files_only=True).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidModelError(
            f"cannot load {ref.name} in transformers for calibration ({first}): use --method none to quantize without calibration"
        ) from None
    reader = read_source(source)
    arch_name = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    n_layers = int(reader.get_field(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch_name)).contents())
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    names = gguf.get_tensor_name_map(arch, n_layers)
    info = inspect_model(ref)
    return collect_statistics(
        model, tokenizer, text, lambda n: names.get_name(n, try_suffixes=(".weight",)), context=CALIBRATION_CONTEXT,
        max_chunks=config.calib_chunks, hessian=method in NEEDS_HESSIAN, add_bos=info.add_bos, progress=_stage(progress, "calibrate"),
    )  # fmt: skip


class _GgufTokenizer:
    """A GGUF file's own tokenizer through llama.cpp (as llama-imatrix tokenizes), shaped like the
    transformers call collect_statistics makes: transformers rebuilds a GGUF vocabulary in Python,
    which took 8-30 s for SmolLM2's, where llama.cpp loads it in under a second."""

    def __init__(self, path: Path):
        from kecil.infer.tokenizer import gguf_vocab

        self._llm = gguf_vocab(path)
        bos = self._llm.token_bos()
        self.bos_token_id = bos if bos >= 0 else None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=False)}


def _calibration_metadata(config: QuantizeConfig, calibration: Calibration | None) -> dict:
    from gguf import GGUFValueType

    if calibration is None:
        return {}
    dataset = str(config.calib) if config.calib else "kecil default calibration set"
    return {
        "quantize.imatrix.dataset": (dataset, GGUFValueType.STRING),
        "quantize.imatrix.chunks_count": (calibration.chunks, GGUFValueType.UINT32),
        "quantize.imatrix.entries_count": (len(calibration.stats), GGUFValueType.UINT32),
        "kecil.quantize.method": (config.resolved_method, GGUFValueType.STRING),
    }


def _report(source, output, heldout: str, threads: int, progress: Progress | None, backend: str = "llamacpp") -> QuantizeReport:
    """Each model measured alone in a fresh process (kecil.infer.measure): held-out perplexity,
    decode speed and the peak RAM of that model, not of this process, which held calibration's
    float model."""
    from kecil.infer.measure import measure

    figures = []
    for step, path in enumerate((source, output)):

        def chunk(done: int, total: int, step: int = step) -> None:
            progress("report", step * total + done, 2 * total)

        figures.append(measure(
            str(path), backend=backend, context=CALIBRATION_CONTEXT, threads=threads, prompt_tokens=128, decode_tokens=64,
            perplexity_text=heldout, perplexity_context=CALIBRATION_CONTEXT, timeout=None, progress=chunk if progress else None,
        ))  # fmt: skip
    before, after = figures
    return QuantizeReport(before.perplexity, after.perplexity, after.perplexity_tokens, after.decode_tokens_per_second,
                          after.peak_rss_bytes, source_peak_ram_bytes=before.peak_rss_bytes)  # fmt: skip


def _weight_only(config: QuantizeConfig, started: float, progress: Progress | None) -> QuantizeResult:
    """`--to int8|int4`: a folder of torch weight-only layers, measured with the torch backend."""
    from kecil.compress.weight_only import write_weight_only

    ref = resolve(config.model)
    refuse_overwriting(ref.path, config.output)
    if config.output.parent.is_dir():
        sweep_stale(config.output.parent)
    heldout_text = _heldout_text(config) if config.report else None
    if progress:
        progress("quantize", 0, 1)
    try:
        write_weight_only(config.model, config.output, bits=WEIGHT_ONLY[config.to], group_size=config.group_size)
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise disk_full(config.output.parent, _size(ref) * WEIGHT_ONLY[config.to] // 16, config.output.name) from None
    if progress:
        progress("quantize", 1, 1)
    size = sum(p.stat().st_size for p in config.output.iterdir() if p.suffix == ".safetensors")
    result = QuantizeResult(
        output=config.output, type=f"{config.to}-g{config.group_size}", method="none", source=str(ref.path), source_bytes=_size(ref),
        output_bytes=size, seconds=time.perf_counter() - started,
    )  # fmt: skip
    if heldout_text is not None:
        result.report = _report(str(ref.path), str(config.output), heldout_text, config.threads or physical_cores(), progress, backend="torch")
    r = result.report
    verdict = compare(result.source_bytes, size, r.source_perplexity if r else None, r.quantized_perplexity if r else None, source_name=ref.spec)
    result.larger_than_source, result.worse_than_source, result.notes = verdict.larger_than_source, verdict.worse_than_source, verdict.notes
    if ref.system_prompt:  # a torch folder has no place kecil reads it back from
        result.notes.append(f"the preset system prompt of {ref.name} ({ref.system_prompt!r}) is not carried into a torch folder: "
                            "pass it with --system when you run the output")  # fmt: skip
    return result


def supported_types() -> list[str]:
    return [*QUANT_TYPES, *WEIGHT_ONLY]
