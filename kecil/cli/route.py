"""`kecil route ...`: calibrate when the small model should hand a question to a larger one (kecil/route)."""

from __future__ import annotations

import json
from typing import Any

import typer

from kecil.cli.common import AsJson, stage_bars
from kecil.cli.options import config_options
from kecil.route.calibrate import CalibrateConfig
from kecil.route.confidence import ConfidenceConfig

route_app = typer.Typer(help="Small model first, a larger one (or a remote endpoint, where allowed) when it is unsure.", no_args_is_help=True)
_STAGES = {"small": "small model (with signals)", "large": "large model"}


@config_options(CalibrateConfig, build=False, arguments=("small",), into="options")
@config_options(ConfidenceConfig, into="confidence", exclude=("seed",))
def calibrate(options: dict[str, Any], confidence: ConfidenceConfig, as_json: AsJson = False) -> None:
    """Run SMALL and --large on labelled questions, fit when the small one is wrong, and write a route file."""
    from kecil.route.calibrate import calibrate as run_calibrate

    config = CalibrateConfig(**options)
    with stage_bars(_STAGES, width=28, transient=True) as progress:
        result = run_calibrate(config, confidence=confidence, progress=progress)
    s = result.summary
    if as_json:
        print(json.dumps({"route_file": str(result.path), **s}))
        return
    print(f"{s['questions']} questions from {s['data']}: {s['small']} right on {s['small_accuracy']:.1%}, {s['large']} on {s['large_accuracy']:.1%}")
    print(f"AUROC of 'the small model is wrong': {s['auroc_small_wrong']:.3f}" + (f"; APGR {s['apgr']:.3f}" if s["apgr"] is not None else ""))
    print(f"threshold {s['threshold']:.3f}: {s['escalated']:.0%} escalated, accuracy {s['accuracy']:.1%}")
    print(f"wrote {result.path} (serve it: kecil serve --route {result.path}; ask for the model route:{result.route.name})")


def register(app: typer.Typer) -> None:
    app.add_typer(route_app, name="route")
    route_app.command("calibrate")(calibrate)
