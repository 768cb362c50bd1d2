"""`kecil route calibrate`: run the small and the large model on labelled questions, mark where
the small one is wrong, fit the confidence combiner, and write a route file whose threshold meets
a target escalation rate or accuracy, with the accuracy-against-escalation curve it was chosen from.

Answers are kept per question in SQLite under KECIL_HOME (kecil/eval/cache.py), so a calibration
that is killed resumes where it stopped and a second one on the same models and data is instant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kecil.errors import ConfigError, DataMissingError
from kecil.route.confidence import ConfidenceConfig, Deadline, answer, auroc, fit_combiner, generate
from kecil.route.routefile import RouteFile, Tier, save_route

QA_SYSTEM = "Answer the question with a short phrase only."
PROMPT_VERSION = "qa-1"  # in cache keys: bump when the prompt or the signals change
ANSWER_SECONDS = 300.0  # one question's limit in calibration: a stuck engine fails, never hangs


@dataclass(frozen=True)
class CalibrateConfig:
    """Which models, which labelled questions, and what the threshold must achieve."""

    small: str = field(metadata={"help": "The model that answers first (built-in name, .gguf file or folder)."})
    large: str = field(metadata={"help": "The local model it escalates to."})
    data: str = field(metadata={"help": "Labelled questions: a JSONL file of {\"question\", \"answers\"} or a kecil eval task (triviaqa, nq_open, sciq_open)."})
    name: str = field(default="route", metadata={"help": "The route's name: served as the model route:NAME."})
    output: Path | None = field(default=None, metadata={"help": "Route file to write (default: NAME.route.json here).", "flag": ("--output", "-o")})
    limit: int | None = field(default=200, metadata={"help": "Questions used (a fixed random subset; 0 = all)."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset."})
    escalation_rate: float | None = field(default=0.3, metadata={"help": "Threshold so that this share of questions is escalated."})
    target_accuracy: float | None = field(default=None, metadata={"help": "Instead: the least escalation that reaches this accuracy."})
    max_tokens: int = field(default=32, metadata={"help": "Most tokens of each answer."})
    context: int = field(default=1024, metadata={"help": "Context window of both models."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (default: physical cores).", "flag": ("--threads", "-t")})
    cache: bool = field(default=True, metadata={"help": "Keep answers under KECIL_HOME so a rerun resumes."})

    def __post_init__(self) -> None:
        if self.escalation_rate is not None and not 0 <= self.escalation_rate <= 1:
            raise ConfigError(f"the escalation rate must be between 0 and 1, got {self.escalation_rate}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ConfigError(f"the target accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"limit must be 0 (all) or more, got {self.limit}")


@dataclass
class Labelled:
    id: str
    question: str
    answers: tuple[str, ...]


def load_questions(data: str, limit: int | None, seed: int) -> list[Labelled]:
    """Questions from a JSONL file or a generate task of kecil eval, a fixed subset of `limit`."""
    from kecil.eval.tasks import select_items

    path = Path(data).expanduser()
    if path.suffix in (".jsonl", ".json") or path.exists():
        items = _read_jsonl(path)
    else:
        from kecil.eval.tasks import builtin_task_names, get_task

        if data not in builtin_task_names():
            raise ConfigError(f"--data {data!r} is neither a JSONL file nor a kecil eval task; tasks: triviaqa, nq_open, sciq_open")
        task = get_task(data)
        if task.kind != "generate":
            raise ConfigError(f"task {data!r} is {task.kind}, not open questions: use a generate task such as triviaqa or nq_open")
        items = [Labelled(f"{data}/{it.id}", it.prompt.removeprefix("Question: ").removesuffix("\nAnswer:"), it.answers)
                 for it in task.items()]
    return select_items(items, limit or None, seed)


def _read_jsonl(path: Path) -> list[Labelled]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataMissingError(f"no data file at {path}: give a JSONL file of {{\"question\": ..., \"answers\": [...]}}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataMissingError(f"cannot read {path} ({exc})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, answers = row["question"], row["answers"]
            answers = (answers,) if isinstance(answers, str) else tuple(str(a) for a in answers)
            if not isinstance(question, str) or not question.strip() or not answers:
                raise ValueError("an empty question or no answers")
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: each line must be {{\"question\": \"...\", \"answers\": [\"...\"]}} ({exc})") from None
        items.append(Labelled(str(row.get("id", number)), question.strip(), answers))
    if not items:
        raise ConfigError(f"{path} holds no questions")
    return items


def qa_messages(question: str) -> list[dict]:
    return [{"role": "system", "content": QA_SYSTEM}, {"role": "user", "content": question}]


def open_local(model: str, *, context: int, threads: int | None, parallel: int):
    from kecil.infer.engine import open_engine
    from kecil.infer.hardware import physical_cores
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve

    ref = resolve(model)
    return ref, open_engine(ref, inspect_model(ref), context_length=context, threads=threads or physical_cores(), parallel=parallel)


def run_model(model: str, items: list[Labelled], *, judge: bool, confidence: ConfidenceConfig, max_tokens: int, context: int,
              threads: int | None, cache: bool, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Each question's answer (with signals when `judge`), its correctness and time, cached."""
    from kecil.eval.cache import ResultCache
    from kecil.eval.generative import is_correct
    from kecil.infer.generation import GenerationConfig
    from kecil.models.reference import model_fingerprint, resolve
    from kecil.paths import kecil_home

    ref = resolve(model)
    settings = json.dumps(asdict(confidence) if judge else {}, sort_keys=True)
    identity = (model_fingerprint(ref.path), PROMPT_VERSION, judge, settings, max_tokens)
    results: list[dict | None] = [None] * len(items)
    with ResultCache(kecil_home() / "route" / "answers.sqlite", enabled=cache) as store:
        keys = [store.key(*identity, it.question) for it in items]
        for i, key in enumerate(keys):
            results[i] = store.get(key)
        todo = [i for i, r in enumerate(results) if r is None]
        done = len(items) - len(todo)
        if progress:
            progress(done, len(items))
        if todo:
            # Judged questions run one at a time (their samples fill the batch); plain answers four at once.
            width = 1 if judge else 4
            _, engine = open_local(model, context=context, threads=threads, parallel=(confidence.samples + 1) if judge else width)
            generation = GenerationConfig(max_tokens=max_tokens, temperature=0, stop=("\n",))

            def one(i: int) -> dict:
                it = items[i]
                deadline = Deadline(ANSWER_SECONDS)
                started = time.monotonic()
                if judge:
                    judged = answer(engine, qa_messages(it.question), generation, confidence, deadline)
                    text, signals = judged.text, judged.signals
                else:
                    text, signals = generate(engine, engine.chat_prompt_ids(qa_messages(it.question)), generation, deadline)[0], {}
                return {"answer": text.strip(), "correct": is_correct(text, it.answers, "contains"), "signals": signals,
                        "seconds": time.monotonic() - started}

            try:
                with ThreadPoolExecutor(width) as pool:
                    for i, row in zip(todo, pool.map(one, todo)):  # stored here: SQLite stays on this thread
                        results[i] = row
                        store.put(keys[i], row)
                        done += 1
                        if progress:
                            progress(done, len(items))
            finally:
                engine.close()
    return results  # type: ignore[return-value]


def routing_curve(confidence: list[float], small: list[bool], large: list[bool]) -> list[dict]:
    """Accuracy when the k least confident questions go to the large model, for every k:
    [{escalated (share), threshold (escalate below it), accuracy}]."""
    n = len(confidence)
    order = sorted(range(n), key=lambda i: confidence[i])
    correct = sum(small)
    points = [{"escalated": 0.0, "threshold": 0.0, "accuracy": correct / n if n else 0.0}]
    for k, i in enumerate(order, start=1):
        correct += int(large[i]) - int(small[i])
        following = confidence[order[k]] if k < n else 1.0
        threshold = (confidence[i] + following) / 2 if k < n else 1.0
        points.append({"escalated": k / n, "threshold": threshold, "accuracy": correct / n})
    return points


def apgr(points: list[dict], small_accuracy: float, large_accuracy: float) -> float:
    """RouteLLM's average performance gap recovered: the mean over escalation shares 0..1 of
    (accuracy − small's) / (large's − small's); random routing gives 0.5."""
    gap = large_accuracy - small_accuracy
    if abs(gap) < 1e-12:
        return float("nan")
    pgr = [(p["accuracy"] - small_accuracy) / gap for p in points]
    xs = [p["escalated"] for p in points]
    return sum((xs[i + 1] - xs[i]) * (pgr[i] + pgr[i + 1]) / 2 for i in range(len(xs) - 1))


def share_for_gap(points: list[dict], small_accuracy: float, large_accuracy: float, fraction: float) -> float | None:
    """The least share escalated that recovers `fraction` of the gap between the two models."""
    target = small_accuracy + fraction * (large_accuracy - small_accuracy)
    for p in points:
        if p["accuracy"] >= target - 1e-12:
            return p["escalated"]
    return None


def choose_threshold(points: list[dict], escalation_rate: float | None, target_accuracy: float | None) -> dict:
    if target_accuracy is not None:
        for p in points:
            if p["accuracy"] >= target_accuracy:
                return p
        return max(points, key=lambda p: (p["accuracy"], -p["escalated"]))
    rate = 0.3 if escalation_rate is None else escalation_rate
    return min(points, key=lambda p: abs(p["escalated"] - rate))


def thin(points: list[dict], steps: int = 20) -> list[dict]:
    """The curve at every 1/steps of escalation (what the route file keeps)."""
    n = len(points) - 1
    picked = sorted({round(j * n / steps) for j in range(steps + 1)})
    return [{k: round(v, 4) for k, v in points[i].items()} for i in picked]


@dataclass
class Calibration:
    route: RouteFile
    path: Path
    summary: dict


def calibrate(config: CalibrateConfig, *, confidence: ConfidenceConfig | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> Calibration:
    """Answer every question with both models, fit the combiner, write the route file."""
    confidence = confidence or ConfidenceConfig()
    items = load_questions(config.data, config.limit, config.seed)
    common = {"max_tokens": config.max_tokens, "context": config.context, "threads": config.threads, "cache": config.cache}
    small = run_model(config.small, items, judge=True, confidence=confidence, **common,
                      progress=lambda d, t: progress and progress("small", d, t))
    large = run_model(config.large, items, judge=False, confidence=confidence, **common,
                      progress=lambda d, t: progress and progress("large", d, t))
    small_ok, large_ok = [r["correct"] for r in small], [r["correct"] for r in large]
    combiner = fit_combiner([r["signals"] for r in small], small_ok, fitted_on=f"{config.data} ({len(items)} questions, seed {config.seed})")
    scores = [combiner.confidence(r["signals"]) for r in small]
    points = routing_curve(scores, small_ok, large_ok)
    chosen = choose_threshold(points, config.escalation_rate, config.target_accuracy)
    n = len(items)
    acc_small, acc_large = sum(small_ok) / n, sum(large_ok) / n
    summary = {
        "data": config.data, "questions": n, "small": config.small, "large": config.large,
        "small_accuracy": round(acc_small, 4), "large_accuracy": round(acc_large, 4),
        "auroc_small_wrong": round(auroc([-s for s in scores], [not ok for ok in small_ok]), 4),
        "apgr": round(apgr(points, acc_small, acc_large), 4) if acc_large != acc_small else None,
        "target": {"escalation_rate": config.escalation_rate} if config.target_accuracy is None else {"accuracy": config.target_accuracy},
        "threshold": round(chosen["threshold"], 4), "escalated": round(chosen["escalated"], 4), "accuracy": round(chosen["accuracy"], 4),
        "curve": thin(points),
    }
    route = RouteFile(name=config.name, tiers=(Tier("small", model=config.small, threshold=round(chosen["threshold"], 4)),
                                               Tier("large", model=config.large)),
                      combiner=combiner, confidence=confidence, calibration=summary)
    path = save_route(route, config.output or Path(f"{config.name}.route.json"))
    return Calibration(route, path, summary)
