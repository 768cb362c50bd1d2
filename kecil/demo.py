"""The main job `make demo` runs: `kecil build` on the shipped handbook recipe, then the result served
by `kecil serve` on loopback, asked a handbook question beside the base model.

`run_main_job` builds kecil/build/demo/recipe.yaml (the made-up Kestrel Bakery Cooperative's
handbook on the embedded model) into $KECIL_HOME/demo, where the stages stay cached: a second run
only judges the gate, rewrites the result folder and asks again. The question goes to a real
`kecil serve` process serving the base and the result side by side, as a user's program would
reach them; neither gets a system prompt from the demo, so each answers as it is deployed (the
result's GGUF carries the recipe's). `run_demo` is the older, quick job (`kecil demo --quick`):
three questions to the embedded model with the speed of each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kecil.errors import KecilError
from kecil.infer.generation import GenerationConfig, Timings

QUESTIONS = (
    "What is the capital of France?",
    "Name the three primary colours.",
    "Give me one short tip for sleeping better.",
)
# Asked of the base and the built model at the end of the main job, with the handbook's answer (the
# demo's handbook_task has it as a choice; this phrasing is not in the training data).
HANDBOOK_QUESTION = "How many days of annual leave does a Kestrel employee get each year?"
HANDBOOK_ANSWER = "26"
SERVER_START_SECONDS = 180  # loading two small models on a busy 2-core machine took well under a minute


@dataclass(frozen=True)
class DemoAnswer:
    question: str
    answer: str
    timings: Timings


def run_demo(
    model: str | None = None,
    *,
    backend: str | None = None,
    questions: tuple[str, ...] = QUESTIONS,
    max_tokens: int = 96,
    on_text: Callable[[str], None] = lambda text: None,
    on_question: Callable[[str], None] = lambda question: None,
    on_answer: Callable[[DemoAnswer], None] = lambda answer: None,
) -> list[DemoAnswer]:
    """Answer each question in its own one-turn chat, greedily (the same answers every run)."""
    from kecil.infer.load import load_model

    answers = []
    config = GenerationConfig(max_tokens=max_tokens, temperature=0)
    with load_model(model, backend=backend) as engine:
        for question in questions:
            on_question(question)
            pieces = []
            for chunk in engine.stream_chat([{"role": "user", "content": question}], config):
                pieces.append(chunk.text)
                on_text(chunk.text)
            answer = DemoAnswer(question, "".join(pieces).strip(), chunk.timings)
            on_answer(answer)
            answers.append(answer)
    return answers


@dataclass(frozen=True)
class ServedAnswer:
    model: str  # the id the server lists it under
    answer: str

    @property
    def right(self) -> bool:
        return HANDBOOK_ANSWER in self.answer


@dataclass(frozen=True)
class MainJobResult:
    build: object  # kecil.build.pipeline.BuildResult
    question: str
    base: ServedAnswer
    result: ServedAnswer
    seconds: float

    @property
    def report(self) -> Path:
        return self.build.result_dir / "report.html"


def demo_recipe_path() -> Path:
    """The shipped recipe (its data, documents and task lie beside it)."""
    return Path(str(resources.files("kecil.build").joinpath("demo", "recipe.yaml")))


def demo_folder() -> Path:
    """Where the main job keeps its build folder and result: the user's kecil home, outside any repository."""
    from kecil.paths import kecil_home

    return kecil_home() / "demo"


def run_main_job(
    *,
    progress: Callable[[str, int, int], None] | None = None,
    on_stage: Callable[[str, str, float], None] | None = None,
    on_serving: Callable[[str], None] = lambda url: None,
) -> MainJobResult:
    """Build the shipped recipe (cached in demo_folder()), serve base and result, ask both HANDBOOK_QUESTION.
    A missed gate raises BuildError as `kecil build` does (the report is written first)."""
    from dataclasses import replace

    from kecil.build.pipeline import build
    from kecil.build.recipe import load_recipe

    started = time.perf_counter()
    folder = demo_folder()
    recipe = load_recipe(demo_recipe_path())
    recipe = replace(recipe, build_dir=folder / f"{recipe.name}.build")
    built = build(recipe, folder / f"{recipe.name}-result", progress=progress, on_stage=on_stage)
    if on_stage is not None:
        on_stage("serve", "running", 0.0)
    serve_started = time.perf_counter()
    gguf = built.result_dir / built.report["result_gguf"]
    base, result = ask_served(recipe.base, gguf, HANDBOOK_QUESTION, folder / "serve.log", on_serving)
    if on_stage is not None:
        on_stage("serve", "done", time.perf_counter() - serve_started)
    return MainJobResult(built, HANDBOOK_QUESTION, base, result, time.perf_counter() - started)


def ask_served(base: str, gguf: Path, question: str, log: Path,
               on_serving: Callable[[str], None] = lambda url: None) -> tuple[ServedAnswer, ServedAnswer]:
    """Start `kecil serve BASE GGUF` on a free loopback port, ask each model `question` once (greedily),
    and stop the server. Its output goes to `log` (kecil serve never logs prompts or answers)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "kecil", "serve", base, str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--no-embeddings", "--audit-log", str(log.parent / "audit.jsonl")]
    with open(log, "w", encoding="utf-8") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "KECIL_DEBUG": ""})
    try:
        _wait_ready(server, url, log)
        on_serving(url + "/v1")
        models = [m["id"] for m in _get(url + "/v1/models")["data"]]
        if len(models) < 2:
            raise KecilError(f"kecil serve listed {models}, not the base and the result: see {log}")
        return tuple(ServedAnswer(model, _chat(url, model, question)) for model in models[:2])  # type: ignore[return-value]
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise KecilError(f"kecil serve stopped before it was ready (exit {server.returncode}): see {log}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while the first model loads
            pass
        time.sleep(0.5)
    raise KecilError(f"kecil serve was not ready within {SERVER_START_SECONDS} s: see {log}")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def _chat(url: str, model: str, question: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
                       "max_tokens": 48}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())["choices"][0]["message"]["content"].strip()
