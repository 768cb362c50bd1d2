"""`kecil build RECIPE`: tune → merge → (prune) → quantize → (knowledge) → evaluate → gate → export, resumable.

`plan(recipe)` names every stage with its key (a hash of its inputs, its settings and the keys of
the stages it reads, cache.py) and whether its output is already in the build folder; `build`
runs the stages that are not, in order, timing each and measuring its peak RAM (resources.py),
then judges the gate (gate.py) and writes the result folder and the report (export.py) — the
report also when the gate is missed, after which it raises BuildError saying what missed by how much.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kecil.build.cache import StageSlot, digest, stale_folders
from kecil.build.recipe import Recipe
from kecil.build.stages import EVALUATION, MODEL_GGUF, inputs, needs, run_stage
from kecil.errors import BuildError

# Bumped when a stage's output changes shape, so older build folders are not read as current.
STAGE_FORMAT = 1

# (stage, done, total) while a stage runs; the CLI draws one bar per stage
Progress = Callable[[str, int, int], None]
# (stage, "cached" | "running" | "done", seconds) as each stage is skipped, starts and ends
OnStage = Callable[[str, str, float], None]


@dataclass(frozen=True)
class BuildOptions:
    """What `kecil build` takes besides the recipe's own settings."""

    recipe: Path = field(metadata={"help": "The recipe YAML (`kecil build init` writes a commented example).", "metavar": "RECIPE"})
    output: Path | None = field(default=None, metadata={
        "flag": ("--output", "-o"), "help": "The result folder (default: NAME-result beside the recipe); with `init`, the recipe file to write."})
    build_dir: Path | None = field(default=None, metadata={
        "help": "Where the stages' outputs are cached (default: the recipe's build_dir, else NAME.build beside the recipe)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan and what is cached, and run nothing."})


@dataclass(frozen=True)
class PlannedStage:
    slot: StageSlot
    inputs: dict

    @property
    def name(self) -> str:
        return self.slot.name

    @property
    def cached(self) -> bool:
        return self.slot.done


@dataclass
class StageRecord:
    name: str
    key: str
    cached: bool
    seconds: float
    peak_rss_bytes: int | None
    joules: float | None
    detail: dict


@dataclass
class BuildResult:
    recipe: Recipe
    stages: list[StageRecord]
    verdict: object  # gate.Verdict
    result_dir: Path
    report: dict


def order(recipe: Recipe) -> list[str]:
    return ["tune", "merge", *(["prune"] if recipe.prune is not None else []), "quantize",
            *(["knowledge"] if recipe.documents is not None else []), "evaluate"]


def plan(recipe: Recipe) -> list[PlannedStage]:
    """Every stage in order, with its key and whether the build folder already holds its output."""
    stage_inputs = inputs(recipe)
    reads = needs(recipe)
    keys: dict[str, str] = {}
    planned = []
    for name in order(recipe):
        made_of = {"stage": name, "format": STAGE_FORMAT, **stage_inputs[name], "after": {n: keys[n] for n in reads[name]}}
        keys[name] = digest(made_of)
        planned.append(PlannedStage(StageSlot(name, keys[name], recipe.folder), made_of))
    return planned


def describe_plan(recipe: Recipe, planned: list[PlannedStage], output: Path) -> list[str]:
    """The plan as lines for `--dry-run`: each stage, cached or to run, and where things go."""
    lines = [f"kecil build {recipe.path.name}: {recipe.base} -> {output}", f"build folder: {recipe.folder}"]
    to_run = False
    for stage in planned:
        to_run = to_run or not stage.cached
        state = "cached" if stage.cached else ("resumes from its checkpoints" if stage.name in ("tune", "prune") and stage.slot.work.exists() else "to run")
        lines.append(f"  {stage.name:<10} {stage.slot.key}  {state}")
    lines.append("  gate       judged on the evaluation")
    lines.append(f"  export     {output}")
    old = stale_folders(recipe.folder, {s.slot.folder.name for s in planned})
    if old:
        lines.append(f"{len(old)} stage folder(s) of earlier settings are kept in the build folder (delete them to free the space)")
    if not to_run:
        lines.append("every stage is cached: the build only judges the gate and writes the result")
    return lines


def default_output(recipe: Recipe) -> Path:
    return recipe.path.parent / f"{recipe.name}-result"


def build(recipe: Recipe, output: Path | None = None, *, progress: Progress | None = None, on_stage: OnStage | None = None) -> BuildResult:
    """Run the recipe (see the module docstring); BuildError when a stage fails or the gate is missed."""
    from kecil.build.export import check_output, export
    from kecil.build.gate import judge
    from kecil.build.resources import measured

    output = Path(output or default_output(recipe)).expanduser().resolve()
    check_output(output)  # before hours of work, not after
    progress = progress or (lambda *args: None)
    on_stage = on_stage or (lambda *args: None)
    started = time.perf_counter()
    recipe.folder.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    records: list[StageRecord] = []
    details: dict[str, dict] = {}
    reads = needs(recipe)
    for stage in plan(recipe):
        slot = stage.slot
        inputs_done = {n: done[n] for n in reads[stage.name]}
        if slot.done:
            manifest = slot.manifest()
            details[stage.name] = manifest.get("detail", {})
            usage = manifest.get("usage", {})
            records.append(StageRecord(stage.name, slot.key, True, usage.get("seconds", 0.0), usage.get("peak_rss_bytes"),
                                       usage.get("joules"), details[stage.name]))
            on_stage(stage.name, "cached", 0.0)
        else:
            on_stage(stage.name, "running", 0.0)
            # tune and prune resume inside the stage from what a killed build left in its work folder
            with slot.building(stage.inputs, keep_partial=stage.name in ("tune", "prune")) as (work, manifest):
                with measured() as usage:
                    detail = run_stage(stage.name, recipe, work, inputs_done, progress)
                # what the report shows of this stage when a later build finds it cached
                manifest.update(detail=detail, usage={"seconds": usage.seconds, "peak_rss_bytes": usage.peak_rss_bytes,
                                                      "joules": usage.joules})
            details[stage.name] = detail
            records.append(StageRecord(stage.name, slot.key, False, usage.seconds, usage.peak_rss_bytes, usage.joules, detail))
            on_stage(stage.name, "done", usage.seconds)
        done[stage.name] = slot.folder

    evaluation = json.loads((done["evaluate"] / EVALUATION).read_text(encoding="utf-8"))
    gguf = done["quantize"] / MODEL_GGUF
    size = gguf.stat().st_size
    verdict = judge(recipe.gate, evaluation, size, recipe.size_budget)
    lora = done["tune"] / "adapter" / "adapter.gguf"
    files = {"gguf": gguf, "lora": lora if lora.is_file() else None,
             "knowledge": done["knowledge"] / "knowledge.sqlite" if "knowledge" in done else None}
    report = _report(recipe, records, evaluation, verdict, size, time.perf_counter() - started)
    on_stage("export", "running", 0.0)
    result_dir = export(recipe, output, report, verdict, files)
    if not verdict.passed:
        missed = "; ".join(c.text for c in verdict.missed())
        raise BuildError(f"the gate was missed: {missed}. The report is in {result_dir / 'report.html'}; "
                         "the stages are cached, so a changed setting reruns only what it affects")
    return BuildResult(recipe, records, verdict, result_dir, report)


def _report(recipe: Recipe, records: list[StageRecord], evaluation: dict, verdict, size: int, seconds: float) -> dict:
    from kecil.build.report import evaluation_table
    from kecil.infer.measure import energy_unreadable_reason

    joules = [r.joules for r in records if r.joules is not None]
    unreadable = energy_unreadable_reason()
    energy = (f"{sum(joules):.0f} J over the stages run" if joules else unreadable if unreadable
              else "not measured in this run (every stage was cached)")
    systems = evaluation.get("systems", {})
    # joules per generated token as the evaluation measured them: None, never 0, where unreadable
    per_token = {model: (figures or {}).get("joules_per_token") for model, figures in systems.items()}
    return {
        "name": recipe.name, "recipe": str(recipe.path), "base": recipe.base, "build_folder": str(recipe.folder),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "seconds": round(seconds, 2),
        "size_bytes": size, "stages": [asdict(r) for r in records],
        "stage_details": {r.name: r.detail for r in records},
        "evaluation": evaluation_table(evaluation), "evaluation_detail": evaluation, "systems": systems,
        "gate": verdict.to_dict(), "energy": energy, "joules_per_token": per_token,
        "energy_readable": unreadable is None, "result_gguf": None,
    }
