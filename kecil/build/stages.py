"""The stages of `kecil build`, each a call into the library function its own command makes.

tune (kecil.tune.lora) → merge (kecil.tune.merge) → prune and heal, when the recipe asks
(kecil.compress.prune, then kecil.compress.distill) → quantize (kecil.compress.quantize, or with a
memory budget kecil.build.fit's choice) → knowledge, when the recipe has documents (kecil.rag.ingest)
→ evaluate the base and the result side by side (kecil.eval). Each gets its work folder (cache.py)
and the finished folders of the stages it reads, and returns what the report shows of it.
`inputs(recipe)` is what each stage's key is made of: every setting and input file that changes
its output, and nothing that does not (threads, where the build folder is).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kecil.build.cache import file_digest, folder_digest
from kecil.build.recipe import Recipe
from kecil.errors import BuildError, ConfigError

ADAPTER = "adapter"  # in the tune stage's folder: the PEFT folder (and its adapter.gguf)
MERGED = "model"  # in the merge stage's folder: the merged Hugging Face model
PRUNED = "model"  # in the prune stage's folder: the pruned (and healed) Hugging Face model
MODEL_GGUF = "model.gguf"  # in the quantize stage's folder
KNOWLEDGE = "knowledge.sqlite"  # in the knowledge stage's folder
EVALUATION = "evaluation.json"  # in the evaluate stage's folder
# Settings that change how fast a stage runs, not what it writes: left out of its key.
NOT_IN_KEY = {"threads", "save_every", "device"}

# (stage, done, total): drawn by the CLI as it draws its other commands' stages
Progress = Callable[[str, int, int], None]


def inputs(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Per stage, the values its key is made of (without the keys of the stages before it)."""
    from kecil.models.reference import model_fingerprint, resolve

    base = resolve(recipe.base)
    data = file_digest(recipe.data)
    q = recipe.quantize
    e = recipe.evaluate
    stages = {
        "tune": {"base": model_fingerprint(base.path), "data": data,
                 "settings": {k: v for k, v in recipe.tune.items() if k not in NOT_IN_KEY}},
        "merge": {},
        "quantize": {"type": q.type, "memory": q.memory, "context": q.context, "types": list(q.types) if q.memory else None,
                     "calibration": data if q.calibrate else None, "system": recipe.system},
        "evaluate": {"base": model_fingerprint(base.path), "tasks": [_task_digest(t) for t in e.tasks],
                     "general": list(e.general), "limit": e.limit, "seed": e.seed, "system": e.system},
    }
    if recipe.documents is not None:
        stages["knowledge"] = {"documents": folder_digest(recipe.documents), "name": recipe.name}
    if recipe.prune is not None:
        stages["prune"] = {**asdict(recipe.prune), "data": data if recipe.prune.heal else None}
    return stages


def _task_digest(task: Path) -> list[str]:
    """A task file's hash and its data file's: either changing changes the evaluation."""
    import yaml

    spec = yaml.safe_load(task.read_text(encoding="utf-8"))
    return [file_digest(task), file_digest(task.parent / spec["data"])]


def tune_stage(recipe: Recipe, work: Path, _: dict[str, Path], progress: Progress) -> dict:
    from kecil.tune.lora import TuneConfig, tune

    output = work / ADAPTER
    # A work folder a killed build left holds tune's checkpoints: resume from them (resume=True with
    # none starts fresh), ending with the same adapter as an uninterrupted run (kecil/tune/lora.py).
    config = TuneConfig(model=recipe.base, data=recipe.data, output=output, resume=True, **recipe.tune)

    def step(p) -> None:
        progress("tune", p.step, p.total_steps)

    # the work around training reports too: the base model's answers for the general replay (minutes,
    # the first time for a model) and the general questions asked after it
    result = tune(config, progress=step, on_stage=lambda stage, d, t: progress(f"tune-{stage}", d, t))
    return {"steps": result.steps, "train_examples": result.train_examples, "val_loss": result.val_loss,
            "first_val_loss": result.first_val_loss, "train_loss": result.train_loss, "best_step": result.best_step,
            "resumed_from_step": result.resumed_from_step, "tokens_per_second": round(result.tokens_per_second, 1),
            "lora_gguf": result.gguf_adapter is not None, "warnings": list(result.warnings)}


def merge_stage(recipe: Recipe, work: Path, done: dict[str, Path], progress: Progress) -> dict:
    from kecil.tune.merge import MergeConfig, merge

    result = merge(MergeConfig(model=recipe.base, adapter=done["tune"] / ADAPTER, output=work / MERGED), progress=progress)
    return {"output": result.output.name}


# prune's and distill's own progress names, told apart from merge's "load" and "save" and quantize's "calibrate"
_PRUNE_PROGRESS = {"load": "prune-load", "calibrate": "prune-calibrate", "save": "prune-save", "teacher": "heal-teacher",
                   "distill": "heal"}


def prune_stage(recipe: Recipe, work: Path, done: dict[str, Path], progress: Progress) -> dict:
    """Prune the merged model (kecil.compress.prune, importance measured on kecil's general text),
    then heal it by distillation from the merged model on the tuning data (kecil.compress.distill).
    Resumable as the commands are: a pruned folder a killed build left (prune writes it by rename)
    is healed rather than pruned again, and healing resumes from distill's checkpoints."""
    from kecil.compress.prune import PruneConfig, prune

    p = recipe.prune
    teacher = done["merge"] / MERGED
    pruned, record = work / "pruned", work / "pruned.json"

    def report(stage: str, d: int, t: int) -> None:
        progress(_PRUNE_PROGRESS.get(stage, stage), d, t)

    if pruned.is_dir() and record.is_file():
        detail = json.loads(record.read_text(encoding="utf-8"))
    else:
        shutil.rmtree(pruned, ignore_errors=True)
        result = prune(PruneConfig(model=str(teacher), output=pruned, ratio=p.ratio, params=p.params, method=p.method,
                                   calib_chunks=p.calib_chunks, seed=p.seed, threads=recipe.tune.get("threads")), progress=report)
        detail = {"method": result.method, "params_before": result.params_before, "params_after": result.params_after,
                  "removed": result.removed, "calibration_tokens": result.calibration_tokens}
        record.write_text(json.dumps(detail), encoding="utf-8")
    output = work / PRUNED
    if not p.heal:
        shutil.rmtree(output, ignore_errors=True)
        pruned.rename(output)
        return {**detail, "heal": None}
    from kecil.compress.distill import DistillConfig, distill

    if (output / "config.json").is_file() and not (output / "checkpoints").is_dir():
        shutil.rmtree(output)  # healed, but killed before this stage finished: heal again (the teacher's logits are cached)
    healed = distill(DistillConfig(student=str(pruned), teacher=str(teacher), output=output, data=recipe.data, tokens=p.heal_tokens,
                                   minutes=p.heal_minutes, seq_len=p.heal_seq_len, seed=p.seed, resume=True,
                                   threads=recipe.tune.get("threads"), cache_dir=work / "teacher"), progress=report)
    # the teacher's logits on the user's data stay in the build folder while needed, and go when healed
    shutil.rmtree(work / "teacher", ignore_errors=True)
    shutil.rmtree(pruned)
    return {**detail, "heal": {"steps": healed.steps, "tokens": healed.tokens, "first_loss": healed.first_loss,
                               "last_loss": healed.last_loss, "resumed_from": healed.resumed_from}}


def model_folder(done: dict[str, Path]) -> Path:
    """The Hugging Face model the quantizer reads: the pruned one when the recipe prunes, else the merged one."""
    return done["prune"] / PRUNED if "prune" in done else done["merge"] / MERGED


def quantize_stage(recipe: Recipe, work: Path, done: dict[str, Path], progress: Progress) -> dict:
    merged = model_folder(done)
    target = work / MODEL_GGUF
    if recipe.quantize.memory is not None:
        detail = _fit(recipe, merged, work, target, progress)
    else:
        from kecil.compress.quantize import QuantizeConfig, quantize

        calib = _calibration_text(recipe, work) if recipe.quantize.calibrate else None
        result = quantize(QuantizeConfig(model=str(merged), to=recipe.quantize.type, output=target, calib=calib, report=False,
                                         system_prompt=system_prompt(recipe)), progress=progress)
        detail = {"type": result.type, "method": result.method, "calibration": "tuning data" if calib else "kecil's default set",
                  "bits_per_weight": round(result.bits_per_weight, 3), "notes": result.notes}
    detail["size_bytes"] = target.stat().st_size
    return detail


def _calibration_text(recipe: Recipe, work: Path) -> Path | None:
    """The tuning data as plain text for the quantizer's calibration, or None (kecil's own set)
    when there is too little of it to calibrate on (the quantizer needs a few paragraphs)."""
    pieces = []
    for line in recipe.data.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            pieces += [m.get("content", "") for m in row["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)]
        elif isinstance(row, dict):
            pieces += [v for v in row.values() if isinstance(v, str)]
    text = "\n\n".join(p for p in pieces if p.strip())
    if len(text) < 2000:
        return None
    path = work / "calibration.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _fit(recipe: Recipe, merged: Path, work: Path, target: Path, progress: Progress) -> dict:
    """kecil fit's best type within the memory budget (its measured peak at the recipe's context)."""
    from kecil.build.fit import FitConfig, fit

    q = recipe.quantize
    result = fit(FitConfig(model=str(merged), memory=q.memory, context=q.context, types=q.types, workdir=work / "fit"),
                 progress=progress)
    if result.recommended is None:
        raise ConfigError(result.message)
    shutil.move(str(result.recommended.path), target)
    shutil.rmtree(work / "fit", ignore_errors=True)  # the other variants: the result folder needs only the one
    chosen = result.recommended
    return {"type": chosen.type, "chosen_by": "kecil fit", "memory_budget": q.memory, "peak_rss_bytes": chosen.peak_rss_bytes,
            "candidates": [{"type": v.type, "size_bytes": v.size_bytes, "peak_rss_bytes": v.peak_rss_bytes, "fits": v.fits(q.memory),
                            "joules_per_token": v.joules_per_token,
                            "quality": v.quality, "error": v.error} for v in result.variants]}


def system_prompt(recipe: Recipe) -> str | None:
    """The result's system prompt: the recipe's, else the base model's preset (a built-in's), which
    the merged Hugging Face folder no longer carries."""
    from kecil.models.reference import resolve

    return recipe.system or resolve(recipe.base).system_prompt


def knowledge_stage(recipe: Recipe, work: Path, _: dict[str, Path], progress: Progress) -> dict:
    """The documents as a knowledge base, ingested under a build-only name and moved into the stage's
    folder (ingest is incremental: a build killed mid-way picks up where that ingest stopped)."""
    from kecil.rag.ingest import IngestConfig, ingest
    from kecil.rag.store import remove_kb
    from kecil.rag.transfer import export_kb

    name = f"build-{recipe.name}"[:57]  # a name either store takes (PostgreSQL's schema names are shorter)
    report = ingest(IngestConfig(folder=recipe.documents, kb=name), progress=lambda d, t: progress("knowledge", d, t))
    # Exported rather than copied: the result ships one portable SQLite file whichever store
    # KECIL_RAG_STORE puts the build's own knowledge base in (a PostgreSQL one has no file to copy).
    (work / KNOWLEDGE).unlink(missing_ok=True)  # a kill between export and removal left one
    export_kb(name, work / KNOWLEDGE)
    remove_kb(name)
    return {"files": len(report.added) + len(report.updated) + report.unchanged, "skipped": report.skipped,
            "chunks": report.chunks, "embedder": report.embedder}


def evaluate_stage(recipe: Recipe, work: Path, done: dict[str, Path], progress: Progress) -> dict:
    """The base and the result on the user's tasks and the general ones, with the same items and seed."""
    from kecil.eval.custom import load_task_file
    from kecil.eval.run import EvalConfig, EvalInterrupted, evaluate

    e = recipe.evaluate
    result = str(done["quantize"] / MODEL_GGUF)
    own = [load_task_file(t).name for t in e.tasks]
    config = EvalConfig(models=(recipe.base, result), tasks=(*own, *e.general), task_files=e.tasks, limit=e.limit,
                        seed=e.seed, system=e.system)
    finished: set = set()
    total = 2 * (len(own) + len(e.general))

    def on_item(model: str, task: str, d: int, t: int) -> None:
        if d == t:
            finished.add((model, task))
        progress("evaluate", len(finished), total)

    try:
        report = evaluate(config, progress=on_item)
    except EvalInterrupted:
        raise KeyboardInterrupt from None  # every item is cached: a rerun of the build resumes the evaluation
    rows = []
    for r in report.results:
        rows.append({"model": "base" if r.model == recipe.base else "result", "task": r.task, "metric": r.metric,
                     "value": r.value, "n": r.n, "error": r.error, "own": r.task in own, "ci": list(r.ci) if r.ci else None})
    systems = {("base" if spec == recipe.base else "result"): (asdict(s) if s is not None else None) for spec, s in report.systems.items()}
    detail = {"results": rows, "systems": systems, "own_tasks": own, "general_tasks": list(e.general)}
    (work / EVALUATION).write_text(json.dumps(detail, indent=2, default=str), encoding="utf-8")
    return {"tasks": len(own) + len(e.general), "items_per_task": e.limit}


STAGES: dict[str, Callable[[Recipe, Path, dict[str, Path], Progress], dict]] = {
    "tune": tune_stage, "merge": merge_stage, "prune": prune_stage, "quantize": quantize_stage, "knowledge": knowledge_stage,
    "evaluate": evaluate_stage,
}


def needs(recipe: Recipe) -> dict[str, tuple[str, ...]]:
    """Which finished stages each reads (its key includes theirs): quantize reads prune's model when there is one."""
    return {"tune": (), "merge": ("tune",), "prune": ("merge",), "quantize": ("prune",) if recipe.prune else ("merge",),
            "knowledge": (), "evaluate": ("quantize",)}


def run_stage(name: str, recipe: Recipe, work: Path, done: dict[str, Path], progress: Progress) -> dict:
    """Run one stage; its KecilError becomes a BuildError naming the stage, in one line."""
    from kecil.errors import Interrupted, KecilError

    try:
        return STAGES[name](recipe, work, done, progress)
    except Interrupted:  # Ctrl-C: the stage kept what it had (tune a checkpoint), and the build resumes it
        raise Interrupted(f"kecil build stopped in the {name} stage, which kept its progress: "
                          "run the same `kecil build` again to go on from there") from None
    except KecilError as exc:
        raise BuildError(f"the {name} stage failed: {exc} (the stages before it are kept: rerun the build once this is fixed)") from None
