"""`kecil fit`: which quantization of a model fits in N GB at a given context, and which of those is best.

For each quantization type the variant is produced with `kecil.compress.quantize` (kept under
KECIL_HOME, so a rerun reuses it), its peak resident memory is measured in a fresh process with
the context window filled (kecil.infer.measure: a real run, not an estimate), and its quality is
evaluated on the chosen tasks (kecil.eval). A GGUF source is a candidate too, as it is: a shipped
Q4_1 file can be smaller and better than any requantization of it (an HF folder's float weights
are the f16 row). The recommendation is the best-quality candidate whose measured peak fits the
budget, with the `kecil quantize` command that produces it (none for the source itself). The same
measurement reads the energy per generated token where the machine's counters allow (else None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kecil.errors import ConfigError, KecilError
from kecil.models.reference import model_fingerprint
from kecil.models.info import format_bytes
from kecil.paths import kecil_home
from kecil.scratch import sweep_stale

DEFAULT_TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")

# (stage, done, total): stage is "quantize", "memory" or "evaluate"
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FitConfig:
    model: str
    memory: int  # bytes available for the model's process
    context: int = 4096
    tasks: tuple[str, ...] = ("wikitext-like-perplexity",)
    types: tuple[str, ...] = DEFAULT_TYPES
    limit: int | None = 20  # items per task (or perplexity chunks): fit compares variants, quickly
    threads: int | None = None
    workdir: Path | None = None  # where the variants are kept; None = KECIL_HOME/fit/<model>

    def __post_init__(self) -> None:
        if self.memory <= 0:
            raise ConfigError("--memory must be a positive size such as 4GB")
        if self.context < 16:
            raise ConfigError(f"--context must be at least 16 tokens, got {self.context}")
        unknown = [t for t in self.types if t not in DEFAULT_TYPES]
        if unknown or not self.types:
            raise ConfigError(f"unknown quantization type(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(DEFAULT_TYPES)}")


@dataclass
class Variant:
    type: str
    path: Path
    size_bytes: int = 0
    peak_rss_bytes: int | None = None
    quality: dict[str, float | None] = field(default_factory=dict)  # task -> value
    metrics: dict[str, str] = field(default_factory=dict)  # task -> metric name
    error: str | None = None
    source: bool = False  # the model as given, not a quantization of it
    joules_per_token: float | None = None  # decoding at the full context; None where no energy counter is readable

    def fits(self, memory: int) -> bool:
        return self.peak_rss_bytes is not None and self.peak_rss_bytes <= memory


@dataclass
class FitResult:
    config: FitConfig
    variants: list[Variant]
    recommended: Variant | None
    command: str | None
    message: str


def quality_key(variant: Variant) -> tuple:
    """Higher is better: the mean accuracy-like score, or minus the mean perplexity when only
    perplexity was measured; smaller size breaks ties."""
    scores = [v for t, v in variant.quality.items() if v is not None and variant.metrics.get(t) != "perplexity"]
    ppl = [v for t, v in variant.quality.items() if v is not None and variant.metrics.get(t) == "perplexity"]
    accuracy = sum(scores) / len(scores) if scores else float("-inf")
    perplexity = -sum(ppl) / len(ppl) if ppl else float("-inf")
    return (accuracy, perplexity, -variant.size_bytes)


def quantize_command(config: FitConfig, variant: Variant) -> str | None:
    if variant.source:
        return None  # nothing to run: the model as it is
    stem = Path(config.model).stem if config.model.endswith(".gguf") else Path(config.model).name
    return f"kecil quantize {config.model} --to {variant.type} -o {stem}-{variant.type}.gguf"


def _produce(config: FitConfig, folder: Path, progress: Progress) -> list[Variant]:
    from kecil.compress.quantize import QuantizeConfig, calibrate, quantize

    variants = [Variant(t, folder / f"{t}.gguf") for t in config.types]
    statistics = None
    for done, variant in enumerate(variants, 1):
        if not variant.path.is_file():  # a finished variant from an earlier run is reused
            try:
                if statistics is None and variant.type not in ("f16", "q8_0"):
                    statistics = calibrate(QuantizeConfig(model=config.model, to=variant.type, output=variant.path, threads=config.threads))
                quantize(QuantizeConfig(model=config.model, to=variant.type, output=variant.path, report=False,
                                        statistics=statistics, threads=config.threads))
            except KecilError as exc:
                variant.error = f"quantize: {exc}"
        if variant.path.is_file():
            variant.size_bytes = variant.path.stat().st_size
        progress("quantize", done, len(variants))
    return variants


def fit(config: FitConfig, progress: Progress | None = None) -> FitResult:
    """Quantize, measure and evaluate every type; recommend the best that fits (see module docstring)."""
    from kecil.eval.run import EvalConfig, evaluate
    from kecil.infer.measure import measure
    from kecil.models.reference import resolve

    progress = progress or (lambda *args: None)
    ref = resolve(config.model)
    _sweep(config.workdir)
    folder = config.workdir or kecil_home() / "fit" / f"{ref.name}-{model_fingerprint(ref.path)}"
    folder.mkdir(parents=True, exist_ok=True)
    variants = _produce(config, folder, progress)
    if ref.format == "gguf":
        variants.insert(0, source_variant(ref))
    ready = [v for v in variants if v.error is None]
    # Each stage says it started: one variant's measurement fills its context in a fresh process,
    # and a log showed nothing for minutes after "quantizing: 8/8".
    progress("memory", 0, len(ready))
    for done, variant in enumerate(ready, 1):
        try:
            # the peak comes from the weights and the filled KV cache; a few decode steps add nothing
            figures = measure(str(variant.path), backend="llamacpp", context=config.context, threads=config.threads,
                              fill_context=True, decode_tokens=4)
            variant.peak_rss_bytes = figures.peak_rss_bytes
            variant.joules_per_token = figures.joules_per_token
        except KecilError as exc:
            variant.error = f"memory: {exc}"
        progress("memory", done, len(ready))
    measured = [v for v in ready if v.error is None]
    if measured:
        eval_config = EvalConfig(models=tuple(str(v.path) for v in measured), tasks=config.tasks, limit=config.limit,
                                 backend="llamacpp", threads=config.threads, system=False)
        total = len(measured) * len(config.tasks)
        finished: set = set()

        def on_item(model: str, task: str, done: int, count: int) -> None:
            if done == count:
                finished.add((model, task))
                progress("evaluate", len(finished), total)

        progress("evaluate", 0, total)
        report = evaluate(eval_config, progress=on_item)
        by_path = {str(v.path): v for v in measured}
        for r in report.results:
            by_path[r.model].quality[r.task] = r.value
            by_path[r.model].metrics[r.task] = r.metric
    return _recommend(config, variants)


def source_variant(ref) -> Variant:
    """The GGUF model as given, named by its own type: "q4_1 (source)"."""
    from kecil.models.info import inspect_model

    kind = inspect_model(ref).quantization.lower()
    return Variant(f"{kind} (source)", ref.path, size_bytes=ref.path.stat().st_size, source=True)


def _sweep(workdir: Path | None) -> None:
    """Remove what killed runs left in fit's folders (.part files, quantize working folders)."""
    if workdir is not None:
        sweep_stale(workdir)
        return
    root = kecil_home() / "fit"
    if root.is_dir():
        sweep_stale(root)
        for folder in root.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                sweep_stale(folder)


def _recommend(config: FitConfig, variants: list[Variant]) -> FitResult:
    fitting = [v for v in variants if v.error is None and v.fits(config.memory)]
    budget = format_bytes(config.memory)
    if fitting:
        best = max(fitting, key=quality_key)
        command = quantize_command(config, best)
        what = f"{config.model} as it is ({best.type.removesuffix(' (source)')})" if best.source else best.type
        message = (f"{what} fits in {budget} at a {config.context}-token context (peak {format_bytes(best.peak_rss_bytes)}) "
                   f"and has the best quality of the {len(fitting)} that fit")
        if best.source:
            message += ": no quantization needed"
        return FitResult(config, variants, best, command, message)
    measured = [v for v in variants if v.peak_rss_bytes is not None]
    if not measured:
        raise KecilError(f"no variant of {config.model} could be produced and measured: " + "; ".join(f"{v.type}: {v.error}" for v in variants))
    smallest = min(measured, key=lambda v: v.peak_rss_bytes)
    short = smallest.peak_rss_bytes - config.memory
    message = (f"nothing fits in {budget} at a {config.context}-token context: the smallest, {smallest.type}, "
               f"peaks at {format_bytes(smallest.peak_rss_bytes)}, {format_bytes(short)} more than the budget; "
               "try a shorter --context or a smaller model")
    return FitResult(config, variants, None, None, message)
