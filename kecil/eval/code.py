"""Code tasks: pass@1 of a greedy completion, run against the task's tests in the sandbox.

HumanEval-style items give a signature and docstring; the program is prompt + completion + tests.
MBPP-style items give an instruction; the program is the completion (the code block) + tests.
With one greedy sample per problem, pass@1 is the fraction of problems whose program passes
(Chen et al. 2021, https://arxiv.org/abs/2107.03374).
"""

from __future__ import annotations

from collections.abc import Sequence

from kecil.eval.generative import generate_greedy
from kecil.eval.sandbox import SandboxLimits, run_python
from kecil.eval.tasks import CodeItem, Task
from kecil.infer.backend import Backend

LIMITS = SandboxLimits(timeout=10.0, memory_mb=1024)


def program_for(item: CodeItem, completion: str, stop: Sequence[str]) -> str:
    for marker in stop:  # the stop text itself is not part of the solution
        completion = completion.split(marker)[0]
    body = (item.prompt if item.prefix_prompt else "") + completion
    return body + "\n\n" + item.test


def evaluate_item(backend: Backend, task: Task, item: CodeItem, prompt: str) -> dict:
    completion, truncated = generate_greedy(backend, prompt, max_tokens=task.max_tokens, stop=task.stop)
    result = run_python(program_for(item, completion.text, task.stop), LIMITS)
    return {"passed": result.passed, "status": result.status, "truncated": truncated}


def summarize(task: Task, results: Sequence[dict]) -> tuple[float, dict]:
    n = len(results)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return sum(r["passed"] for r in results) / n, {"outcomes": statuses}
