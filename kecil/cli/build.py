"""`kecil build RECIPE`: from the user's data to a tested, deployable small model (kecil/build/pipeline.py)."""

from __future__ import annotations

import typer

from kecil.build.pipeline import BuildOptions
from kecil.cli.common import err, stage_bars
from kecil.cli.options import config_options

# The stages' own progress, as the commands that run them alone name it.
_LABELS = {"tune-replay": "tune: general replay answers", "tune": "tuning (steps)", "tune-general": "tune: general questions",
           "load": "merge: loading the base", "merge": "merge: merging the adapter",
           "save": "merge: writing the model", "convert": "converting to GGUF", "calibrate": "calibrating",
           "scale": "searching AWQ scales", "quantize": "quantizing", "memory": "fit: measuring peak memory",
           "evaluate": "evaluating base and result", "knowledge": "ingesting the documents",
           "prune-load": "prune: loading the model", "prune-calibrate": "prune: measuring importance", "prune": "pruning",
           "prune-save": "prune: writing the model", "heal-teacher": "heal: the teacher's logits", "heal": "heal: distilling"}


@config_options(BuildOptions, arguments=("recipe",), into="options")
def build(options: BuildOptions) -> None:
    """Tune, merge, (prune,) quantize, evaluate and gate a model as RECIPE says, and write a deployable folder.

    Every stage's output is cached in the build folder by a hash of its inputs: a rerun skips what
    did not change, and a killed build resumes at the stage it was in. `kecil build init` writes a
    commented example recipe."""
    from pathlib import Path

    if str(options.recipe) == "init":
        _init(options.output or Path("recipe.yaml"))
        return
    from kecil.build.pipeline import build as run_build, default_output, describe_plan, plan
    from kecil.build.recipe import load_recipe

    recipe = load_recipe(options.recipe)
    if options.build_dir is not None:
        from dataclasses import replace

        recipe = replace(recipe, build_dir=Path(options.build_dir).expanduser().resolve())
    output = Path(options.output or default_output(recipe)).expanduser().resolve()
    if options.dry_run:
        print("\n".join(describe_plan(recipe, plan(recipe), output)))
        return

    with stage_bars(_LABELS, width=28, transient=True) as progress:
        result = run_build(recipe, output, progress=progress, on_stage=_on_stage)
    _passed(result)
    print(result.result_dir)
    if result.report.get("serve_command"):
        err(f"serve it: cd {result.result_dir} && {result.report['serve_command']}")


def _on_stage(name: str, state: str, seconds: float) -> None:
    if state == "cached":
        err(f"{name}: cached")
    elif state == "running":
        err(f"{name}: running")
    else:
        err(f"{name}: done in {seconds:.1f} s")


def _passed(result) -> None:
    for check in result.verdict.checks:
        err(f"gate passed: {check.text}")


def run_main_job() -> None:
    """`kecil demo` (what `make demo` runs): kecil.demo.run_main_job with each stage's progress, then the two answers."""
    from kecil.demo import HANDBOOK_ANSWER, demo_folder, demo_recipe_path, run_main_job as run

    err(f"kecil build {demo_recipe_path()} (the made-up Kestrel Bakery Cooperative's handbook on the embedded model)")
    err(f"build folder: {demo_folder()} (cached: a second run skips every stage)")
    with stage_bars(_LABELS, width=28, transient=True) as progress:
        job = run(progress=progress, on_stage=_on_stage, on_serving=lambda url: err(f"kecil serve: base and result at {url}"))
    _passed(job.build)
    print(f"\n>>> {job.question}")
    for label, served in (("before (base)", job.base), ("after (built)", job.result)):
        print(f"{label:<14} {served.model}: {served.answer}")
    print(f"\nthe handbook says {HANDBOOK_ANSWER} days: the base {'knew' if job.base.right else 'did not know'} it, "
          f"the built model {'knows' if job.result.right else 'does not know'} it")
    print(f"result folder: {job.build.result_dir}")
    print(f"report: {job.report}")
    err(f"the main job took {job.seconds:.0f} s")


def _init(path) -> None:
    from pathlib import Path

    from kecil.build.recipe import example_text
    from kecil.errors import ConfigError

    path = Path(path).expanduser()
    if path.exists():
        raise ConfigError(f"{path} already exists: give `kecil build init -o OTHER.yaml` a new file name")
    path.write_text(example_text(), encoding="utf-8")
    print(path)
    err("edit it (the data, task and gate), then run `kecil build " + str(path) + "`")


def register(app: typer.Typer) -> None:
    app.command()(build)
