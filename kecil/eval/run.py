"""`kecil eval`: quality and system figures of one or more models on a list of tasks, side by side.

`evaluate(EvalConfig(...))` loads each model once, runs each task through the module for its
kind, caches every item's result (an interrupted run resumes), and measures the system figures
in a subprocess. With no --backend named, a GGUF model's log-likelihood tasks run on a torch copy
when there is enough to score for that to be faster (TORCH_SCORING_MIN_TOKENS); each result
names the backend that produced it. A task that cannot run on a model (log-likelihood on an engine without logits,
a missing data package) becomes a result row with its error, never a silent gap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from kecil.errors import ConfigError, KecilError
from kecil.eval import code, generative, multiple_choice
from kecil.eval import perplexity as perplexity_task
from kecil.eval.cache import ResultCache
from kecil.models.reference import model_fingerprint
from kecil.eval.confidence import chance_level, wilson_interval
from kecil.eval.fertility import FertilityConfig, LanguageFertility, fertility
from kecil.infer.hardware import check_device_name, device_field
from kecil.infer.measure import SystemFigures, proc_bytes
from kecil.eval.tasks import Task, build_prompt, fewshot_examples, get_task, select_items

DEFAULT_SEED = 1234
RUNNERS = {"choice": multiple_choice, "generate": generative, "code": code}
SCORING_KINDS = ("choice", "perplexity")  # log-likelihood tasks: prompt processing, no decoding
# Scoring is prompt processing, where torch is the faster CPU engine for a small model: on the
# bundled 135M model (docs/benchmarks.md) 721 prompt tok/s against llama.cpp's 289 on its Q4_1
# file, but ~19 s to load (it dequantizes the GGUF). So when no backend is named, a GGUF model's
# scoring tasks move to a torch copy once there is enough to score to repay that load
# (T/289 > 19 + T/721 from T ~ 8,600 tokens; the threshold keeps a 2x margin) and the float32
# copy fits in half the available memory. Generation stays on llama.cpp (3.5x faster decode).
TORCH_SCORING_MIN_TOKENS = 20_000

# (model, task, done, total): called after every item (and every perplexity chunk)
Progress = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate. Every field but `models` and `tasks` has a default."""

    models: tuple[str, ...]
    tasks: tuple[str, ...]  # built-in task names, "perplexity" (needs text), or names from task_files
    limit: int | None = None  # at most this many items per task (a fixed random subset), or perplexity chunks
    seed: int = DEFAULT_SEED  # picks the subset and the few-shot examples
    shots: int | None = None  # few-shot examples per prompt; None = each task's default
    text: Path | None = None  # the text for the `perplexity` task
    context: int = perplexity_task.DEFAULT_CONTEXT  # perplexity window in tokens
    task_files: tuple[Path, ...] = ()  # YAML specs of custom tasks (kecil/eval/custom.py)
    backend: str | None = None
    threads: int | None = None
    device: str = device_field()  # the torch backend's (and a GGUF's torch copy for scoring)
    system: bool = True  # measure size, RAM, load time and speed
    cache: bool = True  # reuse and store per-item results under KECIL_HOME

    def __post_init__(self) -> None:
        check_device_name(self.device)
        if not self.models:
            raise ConfigError("name at least one model to evaluate")
        if not self.tasks:
            raise ConfigError("name at least one task with --tasks (e.g. --tasks mmlu,arc_easy)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.shots is not None and self.shots < 0:
            raise ConfigError(f"--shots must be 0 or more, got {self.shots}")
        if self.context < 16:
            raise ConfigError(f"--context must be at least 16 tokens, got {self.context}")


@dataclass(frozen=True)
class TaskResult:
    model: str
    task: str
    metric: str
    value: float | None  # None when the task could not run (see error)
    n: int
    shots: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    error: str | None = None
    ci: tuple[float, float] | None = None  # the 95% interval of an accuracy-like value (confidence.py)
    chance: float | None = None  # what guessing scores, on multiple-choice tasks

    @property
    def at_chance(self) -> bool:
        """Whether guessing could have scored this: the interval reaches down to chance level."""
        return self.chance is not None and self.ci is not None and self.ci[0] <= self.chance


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C during `evaluate`: carries the report of what finished (every item is cached, so
    running the same command again resumes where it stopped)."""

    def __init__(self, report: EvalReport):
        super().__init__("evaluation interrupted")
        self.report = report


@dataclass
class EvalReport:
    config: EvalConfig
    results: list[TaskResult] = field(default_factory=list)
    systems: dict[str, SystemFigures | None] = field(default_factory=dict)
    system_errors: dict[str, str] = field(default_factory=dict)
    # per model: tokenizer fertility for the languages of the tasks run (and English, the reference)
    fertility: dict[str, list[LanguageFertility]] = field(default_factory=dict)
    fertility_errors: dict[str, str] = field(default_factory=dict)


def resolve_tasks(config: EvalConfig) -> list[Task]:
    custom: dict[str, Task] = {}
    if config.task_files:
        from kecil.eval.custom import load_task_file

        for path in config.task_files:
            task = load_task_file(path)
            custom[task.name] = task
    tasks = []
    for name in config.tasks:
        if name in custom:
            tasks.append(custom[name])
        elif name == "perplexity":
            if config.text is None:
                raise ConfigError("--tasks perplexity needs --text FILE (or use wikitext-like-perplexity)")
            tasks.append(perplexity_task.text_task(config.text))
        else:
            tasks.append(get_task(name))
    # a custom task file names its own task: run it even if --tasks did not repeat the name
    tasks += [t for name, t in custom.items() if name not in config.tasks]
    return tasks


def shots_for(task: Task, config: EvalConfig) -> int:
    if task.kind in ("code", "perplexity"):
        return 0  # code prompts are complete programs to continue; examples would be run as code
    return task.default_shots if config.shots is None else config.shots


def prompts(task: Task, config: EvalConfig):
    """(item, prompt) for the task's fixed subset, each prompt with its few-shot examples."""
    shots = shots_for(task, config)
    pool: dict = {}
    for item in select_items(task.items(), config.limit, config.seed):
        yield item, build_prompt(task, item, fewshot_examples(task, item, shots, config.seed, pool))


def scoring_tokens(backend, tasks: list[Task], config: EvalConfig) -> int:
    """Tokens the log-likelihood tasks will run through the model, a prompt's prefix shared with
    the previous prompt counted once (Backend.logits reuses it). Cached results count too, so a
    resumed run decides as the first one did. A task that cannot load counts 0 (run_task reports it)."""
    from kecil.infer.backend import shared_prefix_length

    total = 0
    for task in (t for t in tasks if t.kind in SCORING_KINDS):
        try:
            if task.kind == "perplexity":
                chunks = len(backend.tokenize(task.extra["text"](), add_bos=backend.adds_bos)) // config.context
                total += min(chunks, config.limit or chunks) * config.context
                continue
            previous: list[int] = []
            for _, prompt in prompts(task, config):
                ids = backend.tokenize(prompt, add_bos=backend.adds_bos)
                total += len(ids) - shared_prefix_length(previous, ids)
                previous = ids
        except KecilError:
            continue
    return total


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get (MemAvailable), or None where unknown."""
    return proc_bytes("/proc/meminfo", "MemAvailable")


def torch_scorer(backend, tasks: list[Task], config: EvalConfig, window: int | None):
    """A torch copy of a GGUF model for its scoring tasks when that is faster (see
    TORCH_SCORING_MIN_TOKENS), else None; a copy that cannot load leaves scoring where it was."""
    from kecil.infer.load import load_model
    from kecil.models.info import estimate_memory

    if config.backend is not None or backend.ref.format != "gguf" or backend.name == "torch":
        return None
    if scoring_tokens(backend, tasks, config) < TORCH_SCORING_MIN_TOKENS:
        return None
    free = available_memory()
    if free is None or estimate_memory(backend.info, backend.context_length, "torch").total_bytes > free // 2:
        return None
    try:
        return load_model(backend.ref, backend="torch", context_length=window, threads=config.threads, device=config.device)
    except KecilError:
        return None


def run_task(backend, name: str, task: Task, config: EvalConfig, cache: ResultCache, model_key: str, progress) -> TaskResult:
    """Run one task on a loaded model; `name` is the model as the user named it."""
    started = perf_counter()
    if task.kind == "perplexity":
        key = cache.key(model_key, backend.name, "perplexity", task.version, config.context, config.limit,
                        perplexity_task.text_digest(task.extra["text"]()))
        cached = cache.get(key)
        if cached is None:
            value, n, extra = perplexity_task.run(
                backend, task, context=config.context, max_chunks=config.limit,
                progress=lambda d, t: progress(name, task.name, d, t),
            )
            cached = {"value": value, "n": n, "extra": extra}
            cache.put(key, cached)
        return TaskResult(name, task.name, task.metric, cached["value"], cached["n"], 0, perf_counter() - started,
                          {**cached["extra"], "backend": backend.name})
    runner = RUNNERS[task.kind]
    shots = shots_for(task, config)
    planned = list(prompts(task, config))
    results = []
    for done, (item, prompt) in enumerate(planned, 1):
        # the item and its exact prompt are in the key: a changed data file or format is never served stale
        key = cache.key(model_key, backend.name, task.name, task.version, getattr(runner, "RESULT_FORMAT", 1), repr(item), prompt)
        result = cache.get(key)
        if result is None:
            result = runner.evaluate_item(backend, task, item, prompt)
            cache.put(key, result)
        results.append(result)
        progress(name, task.name, done, len(planned))
    cache.flush()
    value, extra = runner.summarize(task, results)
    chance = chance_level([len(item.choices) for item, _ in planned]) if task.kind == "choice" else None
    return TaskResult(name, task.name, task.metric, value, len(results), shots, perf_counter() - started,
                      {**extra, "backend": backend.name}, ci=wilson_interval(value, len(results)), chance=chance)


def task_languages(tasks: list[Task]) -> tuple[str, ...]:
    """The languages of the tasks that name one, in task order, each once."""
    return tuple(dict.fromkeys(t.language for t in tasks if t.language))


def model_fertility(backend, languages: tuple[str, ...]) -> list[LanguageFertility]:
    """Fertility of the loaded model's tokenizer for `languages`, English first as the reference
    (left out only where its sentences are not installed)."""
    wanted = ("en", *(code for code in languages if code != "en"))
    results, _ = fertility(lambda text: backend.tokenize(text, add_bos=False), FertilityConfig(languages=wanted))
    return results


def evaluate(config: EvalConfig, progress: Progress | None = None) -> EvalReport:
    """Run every task on every model; see the module docstring. Ctrl-C raises EvalInterrupted
    with the results so far."""

    progress = progress or (lambda *args: None)
    tasks = resolve_tasks(config)
    needs_window = max((config.context for t in tasks if t.kind == "perplexity"), default=0)
    report = EvalReport(config)
    try:
        _evaluate_all(config, tasks, needs_window, report, progress)
    except KeyboardInterrupt:
        raise EvalInterrupted(report) from None
    return report


def _evaluate_all(config: EvalConfig, tasks: list[Task], needs_window: int, report: EvalReport, progress) -> None:
    from kecil.infer.load import DEFAULT_CONTEXT, load_model
    from kecil.models.reference import resolve

    with ResultCache(enabled=config.cache) as cache:
        for spec in config.models:
            ref = resolve(spec)
            model_key = model_fingerprint(ref.path)
            window = needs_window if needs_window > DEFAULT_CONTEXT else None  # else the model's own
            with load_model(ref, backend=config.backend, context_length=window, threads=config.threads,
                            device=config.device) as backend:
                scorer = torch_scorer(backend, tasks, config, window)
                try:
                    for task in tasks:
                        engine = scorer if scorer is not None and task.kind in SCORING_KINDS else backend
                        try:
                            report.results.append(run_task(engine, spec, task, config, cache, model_key, progress))
                        except KecilError as exc:
                            report.results.append(TaskResult(spec, task.name, task.metric, None, 0, error=str(exc)))
                    languages = task_languages(tasks)
                    if languages:
                        try:
                            report.fertility[spec] = model_fertility(backend, languages)
                        except KecilError as exc:
                            report.fertility_errors[spec] = str(exc)
                finally:
                    if scorer is not None:
                        scorer.close()
            if config.system:
                from kecil.infer.measure import measure

                try:
                    report.systems[spec] = measure(spec, backend=config.backend, threads=config.threads)
                except KecilError as exc:
                    report.systems[spec] = None
                    report.system_errors[spec] = str(exc)
