"""How likely a model's answer is right, from signals any engine gives: the answer's token
log-probabilities (mean, minimum, entropy), agreement among a few sampled answers
(self-consistency, Wang et al. 2022, https://arxiv.org/abs/2203.11171) and the model's own yes/no
check of its answer (Kadavath et al. 2022, https://arxiv.org/abs/2207.05221), combined by a
logistic regression fitted on labelled answers (kecil/route/calibrate.py fits it).
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kecil.errors import BackendError, ConfigError, KecilError
from kecil.infer.engine import Engine, SamplingExtras
from kecil.infer.generation import Chunk, GenerationConfig

FEATURES = ("logprob_mean", "logprob_min", "entropy_mean", "agreement", "self_check", "answer_tokens")
SELF_CHECK = "Is the answer you just gave correct? Reply with Yes or No only."


@dataclass(frozen=True)
class ConfidenceConfig:
    """What is measured of an answer. More samples: a steadier agreement signal, more compute."""

    samples: int = field(default=4, metadata={"help": "Sampled answers compared with the greedy one (self-consistency); 0 = off."})
    sample_temperature: float = field(default=0.8, metadata={"help": "Temperature of the sampled answers."})
    sample_tokens: int = field(default=32, metadata={"help": "Most tokens of each sampled answer (and of the greedy one they are compared with)."})
    self_check: bool = field(default=True, metadata={"help": "Ask the model whether its answer is right (one extra scoring pass)."})
    top_logprobs: int = field(default=10, metadata={"help": "Alternatives per token the entropy is computed over, where the engine reports them."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled answers (the same seed gives the same signals)."})

    def __post_init__(self) -> None:
        if not 0 <= self.samples <= 16:
            raise ConfigError(f"samples must be between 0 and 16, got {self.samples}")
        if self.sample_temperature <= 0:
            raise ConfigError(f"the sample temperature must be above 0, got {self.sample_temperature}")
        if self.sample_tokens < 1 or not 0 <= self.top_logprobs <= 20:
            raise ConfigError("sample_tokens must be at least 1 and top_logprobs between 0 and 20")


@dataclass
class Judged:
    """A model's answer, its signals (FEATURES) and, once a combiner scored it, its confidence."""

    text: str
    signals: dict[str, float]
    tokens: int
    seconds: float
    confidence: float | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 0


class Deadline:
    """The time a request has left: every wait below is bounded by it (never a hang)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def generate(engine: Engine, prompt_ids: list[int], config: GenerationConfig, deadline: Deadline,
             extras: SamplingExtras | None = None) -> tuple[str, list, str, int]:
    """(text, token logprobs, finish reason, tokens) of one generation, cancelled at the deadline."""
    chunks: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
    handle = engine.submit(prompt_ids, config, chunks.put, extras)
    return _collect(chunks, handle, deadline)


def _collect(chunks, handle, deadline: Deadline) -> tuple[str, list, str, int]:
    text, logprobs = [], []
    try:
        while True:
            left = deadline.left()
            if left <= 0:
                raise BackendError("the model did not finish within the request's time")
            try:
                chunk = chunks.get(timeout=left)
            except queue.Empty:
                continue
            text.append(chunk.text)
            logprobs.extend(chunk.logprobs)
            if chunk.finish_reason == "error":
                raise BackendError(chunk.error or "the model failed")
            if chunk.finish_reason is not None:
                tokens = chunk.usage.completion_tokens if chunk.usage else len(logprobs)
                return "".join(text), logprobs, chunk.finish_reason, tokens
    finally:
        handle.cancel()  # a no-op once finished; frees the slot of one cut short


def answer(engine: Engine, messages: list[dict], generation: GenerationConfig, config: ConfidenceConfig,
           deadline: Deadline) -> Judged:
    """The model's greedy answer to `messages` with every signal of FEATURES measured."""
    started = time.monotonic()
    prompt_ids = engine.chat_prompt_ids(messages)
    greedy = GenerationConfig(max_tokens=generation.max_tokens, temperature=0, stop=generation.stop)
    has_logprobs = "logprobs" in engine.extras
    extras = SamplingExtras(logprobs=True, top_logprobs=config.top_logprobs) if has_logprobs else None
    # The samples run beside the greedy answer: the batching engine decodes them together.
    pending = [(prompt_ids, greedy, extras)]
    for i in range(config.samples):
        pending.append((prompt_ids, GenerationConfig(max_tokens=config.sample_tokens, temperature=config.sample_temperature,
                                                     top_p=0.95, top_k=40, stop=generation.stop, seed=config.seed + i), None))
    queues = []
    try:
        for ids, gen, ex in pending:
            chunks: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
            queues.append((chunks, engine.submit(ids, gen, chunks.put, ex)))
        results = [_collect(chunks, handle, deadline) for chunks, handle in queues]
    finally:
        for _, handle in queues:
            handle.cancel()
    text, logprobs, finish, tokens = results[0]
    lps, entropies = _token_signals(engine, prompt_ids, text, logprobs, has_logprobs)
    signals = {
        "logprob_mean": sum(lps) / len(lps) if lps else 0.0,
        "logprob_min": min(lps) if lps else 0.0,
        "entropy_mean": sum(entropies) / len(entropies) if entropies else 0.0,
        "agreement": agreement(text, [r[0] for r in results[1:]], config.sample_tokens) if config.samples else 1.0,
        "self_check": self_check(engine, messages, text) if config.self_check else 0.5,
        "answer_tokens": math.log1p(tokens),
    }
    return Judged(text, signals, tokens, time.monotonic() - started, finish_reason=finish, prompt_tokens=len(prompt_ids))


def _token_signals(engine: Engine, prompt_ids: list[int], text: str, logprobs, has_logprobs: bool):
    """Each answer token's log-probability and the entropy of its distribution. An engine that
    reports no logprobs scores the answer's text instead (one forward pass); its entropy is then
    taken as the token's surprisal, the entropy's value when the chosen token is typical."""
    if has_logprobs and logprobs:
        lps = [e.logprob for e in logprobs]
        return lps, [_entropy(e) for e in logprobs]
    answer_ids = engine.tokenize(text, add_bos=False) if text else []
    if not answer_ids:
        return [], []
    lps = engine.score(prompt_ids + answer_ids, start=len(prompt_ids))
    return lps, [-lp for lp in lps]


def _entropy(entry) -> float:
    """Entropy (nats) over the reported alternatives, the probability they leave as one more
    outcome: a lower bound of the full distribution's, which engines do not report whole."""
    probs = [math.exp(lp) for _, lp in entry.top] or [math.exp(entry.logprob)]
    rest = max(0.0, 1.0 - sum(probs))
    return -sum(p * math.log(p) for p in probs + [rest] if p > 0)


def words(text: str) -> list[str]:
    from kecil.eval.generative import normalize

    return normalize(text).split()


def agreement(text: str, samples: Sequence[str], tokens: int) -> float:
    """Mean word-overlap F1 (SQuAD's) between the greedy answer and each sample: 1 when all
    samples say the same, near 0 when each says something else. The greedy answer is cut to
    about the samples' length, so a long answer is compared with what the samples could say."""
    if not samples:
        return 1.0
    mine = words(text)[: max(1, tokens)]
    scores = []
    for sample in samples:
        theirs = words(sample)
        common = sum(min(mine.count(w), theirs.count(w)) for w in set(mine))
        if not mine and not theirs:
            scores.append(1.0)
        elif common == 0:
            scores.append(0.0)
        else:
            precision, recall = common / len(theirs), common / len(mine)
            scores.append(2 * precision * recall / (precision + recall))
    return sum(scores) / len(scores)


def self_check(engine: Engine, messages: list[dict], text: str) -> float:
    """P(Yes) against P(No) when the model is asked whether its own answer is right."""
    asked = [*messages, {"role": "assistant", "content": text.strip() or "(no answer)"}, {"role": "user", "content": SELF_CHECK}]
    try:
        prompt = engine.chat_prompt_ids(asked)
    except KecilError:
        return 0.5  # a template that refuses the turn order: no evidence either way
    scores = []
    for word in ("Yes", "No"):
        ids = engine.tokenize(word, add_bos=False)
        scores.append(sum(engine.score(prompt + ids, start=len(prompt))))
    yes, no = scores
    return 1.0 / (1.0 + math.exp(max(-50.0, min(50.0, no - yes))))


@dataclass(frozen=True)
class Combiner:
    """P(answer right) = sigmoid(weights · standardised signals + bias)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    fitted_on: str = ""  # which data, for the route file's reader

    def confidence(self, signals: dict[str, float]) -> float:
        missing = [f for f in self.features if f not in signals]
        if missing:
            raise ConfigError(f"the combiner needs the signals {', '.join(missing)}: measure them (ConfidenceConfig) or refit it")
        z = self.bias + sum(w * (signals[f] - m) / s for f, w, m, s in zip(self.features, self.weights, self.mean, self.scale))
        return 1.0 / (1.0 + math.exp(max(-50.0, min(50.0, -z))))

    def as_dict(self) -> dict:
        return {"features": list(self.features), "weights": list(self.weights), "bias": self.bias,
                "mean": list(self.mean), "scale": list(self.scale), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict) -> Combiner:
        try:
            combiner = cls(tuple(data["features"]), tuple(float(w) for w in data["weights"]), float(data["bias"]),
                           tuple(float(m) for m in data["mean"]), tuple(float(s) for s in data["scale"]), str(data.get("fitted_on", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the combiner is malformed ({type(exc).__name__}: {exc}): refit it with `kecil route calibrate`") from None
        if not len(combiner.features) == len(combiner.weights) == len(combiner.mean) == len(combiner.scale):
            raise ConfigError("the combiner's features, weights, mean and scale differ in length: refit it with `kecil route calibrate`")
        return combiner


def fit_combiner(rows: Sequence[dict[str, float]], correct: Sequence[bool], *, features: Sequence[str] = FEATURES,
                 l2: float = 1.0, fitted_on: str = "") -> Combiner:
    """Logistic regression by Newton's method (IRLS) with an L2 penalty. Written in numpy, not
    taken from scikit-learn, which kecil does not depend on: six features and a few hundred
    answers need twenty lines, not a 40 MB dependency."""
    import numpy as np

    if len(rows) < 4 or len(set(correct)) < 2:
        raise ConfigError(f"fitting a combiner needs right and wrong answers among at least 4; got {len(rows)} answers, "
                          f"{sum(map(bool, correct))} right: give more questions (or ones the small model gets right sometimes)")
    x = np.array([[row[f] for f in features] for row in rows], dtype=float)
    y = np.array([float(c) for c in correct])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant signal (self-check off, say) gets weight ~0, not a division by zero
    design = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    beta = np.zeros(design.shape[1])
    penalty = np.diag([l2] * (design.shape[1] - 1) + [0.0])  # the bias is not shrunk
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.clip(design @ beta, -50, 50)))
        gradient = design.T @ (p - y) + penalty @ beta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return Combiner(tuple(features), tuple(float(b) for b in beta[:-1]), float(beta[-1]),
                    tuple(float(m) for m in mean), tuple(float(s) for s in scale), fitted_on)


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative
    (ties count half); 0.5 when either class is absent."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return 0.5
    ranked = sorted((s, i) for i, s in enumerate(list(pos) + list(neg)))
    ranks = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(ranks[: len(pos)])
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def default_combiner() -> Combiner:
    """The combiner kecil ships (kecil/route/data/default_combiner.json; which data it was fitted
    on is in its `fitted_on`), for route files that carry none of their own."""
    import json
    from importlib.resources import files

    return Combiner.from_dict(json.loads(files("kecil.route").joinpath("data/default_combiner.json").read_text()))
