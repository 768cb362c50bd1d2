"""`kecil quantize`: a smaller GGUF (or torch int8/int4) copy of a model, and what it cost (kecil/compress)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from kecil.cli.common import Threads, on_device, stage_bars

# Options are written here rather than made from QuantizeConfig's fields: importing kecil.compress
# at start-up would load gguf and numpy, and `kecil --help` must stay instant.
_STAGES = {"convert": "converting to GGUF", "calibrate": "calibrating", "scale": "searching AWQ scales", "quantize": "quantizing", "report": "measuring"}


@on_device
def quantize(
    load: dict,
    model: Annotated[str, typer.Argument(help="Built-in name, .gguf file or Hugging Face folder.")],
    to: Annotated[str, typer.Option("--to", help="GGUF: f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, q3_k_m or q2_k; torch weight-only: int8 or int4.")],
    output: Annotated[str, typer.Option("--output", "-o", help="The GGUF file to write (a folder for int8/int4).")],
    calib: Annotated[Optional[str], typer.Option("--calib", help="Calibration text or JSONL; its first 32 chunks of 512 tokens are read (default: kecil's own set, whose first 32 chunks are English Wikipedia).")] = None,
    method: Annotated[str, typer.Option("--method", help="auto (per type, as measured), awq-gptq, awq, gptq, imatrix, or none (no calibration).")] = "auto",
    heldout: Annotated[Optional[str], typer.Option("--heldout", help="Text for the report's perplexity (default: kecil's held-out set).")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Measure perplexity, speed and RAM after writing.")] = True,
    group_size: Annotated[int, typer.Option("--group-size", help="int8/int4: input columns per scale (32, 64 or 128).")] = 64,
    threads: Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Quantize MODEL to a smaller GGUF file that llama.cpp (and Ollama) loads, and report what it cost."""
    from pathlib import Path

    from kecil.compress.quantize import QuantizeConfig, quantize as run_quantize

    config = QuantizeConfig(
        model=model, to=to, output=Path(output), calib=Path(calib) if calib else None, report=report, method=method,
        heldout=Path(heldout) if heldout else None, threads=threads, group_size=group_size, **load,
    )
    with stage_bars(_STAGES, width=20, transient=as_json) as progress:
        result = run_quantize(config, progress=progress)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    from kecil.compress.report import report_lines

    print("\n".join(report_lines(result)))


def register(app: typer.Typer) -> None:
    app.command()(quantize)
