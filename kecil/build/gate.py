"""The quality gate of `kecil build`: does the result beat the base where the user needs it, keep
what the base knew elsewhere, and fit the budget? Each check says by how much it passed or missed.

Scores are the tasks' own metrics (accuracy-like, 0-1): the gain on each of the user's tasks must
be at least `min_gain`, the loss on each general task at most `max_general_loss`; a task that could
not run on either model fails its check (a gap is never a pass).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kecil.build.recipe import GateSettings


@dataclass(frozen=True)
class Check:
    name: str  # "gain on handbook", "loss on arc_easy", "size"
    passed: bool
    measured: float | None
    limit: float
    text: str  # one sentence, with the numbers


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def missed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def _points(share: float) -> str:
    return f"{100 * share:+.1f} points"


def _task_check(scores: dict, task: str, kind: str, limit: float) -> Check:
    """The gain (on one of the user's tasks: at least `limit`) or the loss (on a general task: at
    most `limit`) from base to result, in points."""
    base, result = scores.get(("base", task)), scores.get(("result", task))
    if base is None or result is None:
        why = ", so no gain can be shown" if kind == "gain" else ""
        return Check(f"{kind} on {task}", False, None, limit, f"{task}: not measured on both models{why}")
    moved = f"{task}: {100 * base:.1f}% -> {100 * result:.1f}%"
    if kind == "gain":
        gain = result - base
        ok = gain >= limit
        return Check(f"gain on {task}", ok, gain, limit, f"{moved} ({_points(gain)}; needs {_points(limit)}"
                     + ("" if ok else f", missed by {100 * (limit - gain):.1f} points") + ")")
    loss = base - result
    ok = loss <= limit
    return Check(f"loss on {task}", ok, loss, limit, f"{moved} (may lose at most {100 * limit:.1f} points"
                 + ("" if ok else f"; lost {100 * (loss - limit):.1f} points too many") + ")")


def judge(gate: GateSettings, evaluation: dict, size_bytes: int, budget: int | None) -> Verdict:
    """The gate's checks over the evaluate stage's rows (stages.evaluate_stage) and the final file's size."""
    from kecil.models.info import format_bytes

    scores = {(r["model"], r["task"]): r["value"] for r in evaluation["results"]}
    checks = [_task_check(scores, task, "gain", gate.min_gain) for task in evaluation["own_tasks"]]
    checks += [_task_check(scores, task, "loss", gate.max_general_loss) for task in evaluation["general_tasks"]]
    if budget is not None:
        ok = size_bytes <= budget
        checks.append(Check("size", ok, float(size_bytes), float(budget),
                            f"the GGUF is {format_bytes(size_bytes)} against a budget of {format_bytes(budget)}"
                            + ("" if ok else f": {format_bytes(size_bytes - budget)} over")))
    return Verdict(tuple(checks))
