"""The result folder of `kecil build`: what a user hands to operations.

With the gate passed: the GGUF, the adapter as a GGUF LoRA (for a base already deployed), the
knowledge base, an Ollama Modelfile, `serve.sh` (the `kecil serve` command line), a Kubernetes
manifest with this model's values (kubernetes.py), a model card (README.md) and the reports.
With the gate missed: the reports only, so nothing that failed its checks looks deployable. The folder is assembled beside its place and renamed into it, so a kill
never leaves half a result; an existing folder is replaced only if a build wrote it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kecil.build.gate import Verdict
from kecil.build.modelfile import write_modelfile
from kecil.build.recipe import Recipe
from kecil.build.report import evaluation_table, write_reports
from kecil.errors import ConfigError

MARK = ".kecil-build-result"  # in every result folder: the next build may replace it


def check_output(folder: Path) -> None:
    """Refuse a folder that holds something a build did not write (it would be replaced)."""
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MARK).is_file())):
        raise ConfigError(f"{folder} exists and was not written by kecil build: choose another -o folder or move it away")


def _place(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (a GGUF is large), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def serve_command(recipe: Recipe, gguf: str) -> str:
    return f'kecil serve "$HERE/{gguf}" --port {recipe.export.serve_port}'


def export(recipe: Recipe, folder: Path, report: dict, verdict: Verdict, files: dict[str, Path | None]) -> Path:
    """Assemble the result folder; `files` holds the built "gguf", "lora" and "knowledge" (None when absent)."""
    check_output(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    (work / MARK).write_text("written by kecil build; the next build of this recipe replaces this folder\n", encoding="utf-8")
    notes: list[str] = []
    if verdict.passed:
        gguf = f"{recipe.name}.gguf"
        _place(files["gguf"], work / gguf)
        report["result_gguf"] = gguf
        lora = None
        if recipe.export.lora_gguf and files.get("lora"):
            lora = f"{recipe.name}-lora.gguf"
            _place(files["lora"], work / lora)
        kb = None
        if recipe.export.knowledge_base and files.get("knowledge"):
            (work / "knowledge").mkdir()
            kb = f"knowledge/{recipe.name}.sqlite"
            shutil.copy2(files["knowledge"], work / kb)
        if recipe.export.modelfile:
            from kecil.build.stages import system_prompt

            notes += write_modelfile(work, gguf, system_prompt(recipe))
        command = serve_command(recipe, gguf)
        (work / "serve.sh").write_text(f'#!/bin/sh\n# Serve {recipe.name} on this machine (OpenAI-compatible API).\n'
                                       f'HERE="$(cd "$(dirname "$0")" && pwd)"\nexec {command} "$@"\n', encoding="utf-8")
        (work / "serve.sh").chmod(0o755)
        report["serve_command"] = command.replace('"$HERE/', '"./')
        if recipe.export.kubernetes:
            from kecil.build.kubernetes import manifest

            peak = (report.get("systems", {}).get("result") or {}).get("peak_rss_bytes")
            (work / "kubernetes.yaml").write_text(manifest(recipe.name, gguf, kb, peak, report["size_bytes"]), encoding="utf-8")
        (work / "README.md").write_text(model_card(recipe, report, gguf, lora, kb, notes), encoding="utf-8")
    write_reports(work, report)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(work, folder)
    return folder


def _change(value) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def _score(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _prune_lines(prune: dict | None) -> list[str]:
    if not prune:
        return []
    heal = prune.get("heal")
    healed = f", healed by distillation from the tuned model ({heal['steps']} steps, {heal['tokens']:,} tokens)" if heal else ", not healed"
    return [f"- pruned ({prune['method']}): {prune['params_before']:,} -> {prune['params_after']:,} parameters{healed}"]


def model_card(recipe: Recipe, report: dict, gguf: str, lora: str | None, kb: str | None, notes: list[str]) -> str:
    """The README of the result: what it is, how it was made, how well it does, how to run it."""
    rows = "\n".join(f"| {r['task']}{' (yours)' if r['yours'] else ''} | {_score(r['base'])} | {_score(r['result'])} | {_change(r['change'])} |"
                     for r in evaluation_table(report["evaluation_detail"]))
    checks = "\n".join(f"- {'passed' if c['passed'] else 'missed'}: {c['text']}" for c in report["gate"]["checks"])
    tune = report["stage_details"].get("tune", {})
    quant = report["stage_details"].get("quantize", {})
    parts = [
        f"# {recipe.name}", "",
        f"A fine-tuned and quantized copy of `{recipe.base}`, made by `kecil build {recipe.path.name}`.", "",
        "## How it was made", "",
        f"- LoRA fine-tuning on `{recipe.data.name}`: {tune.get('train_examples', '?')} examples, {tune.get('steps', '?')} steps",
        "- merged into the base",
        *_prune_lines(report["stage_details"].get("prune")),
        f"- quantized to {quant.get('type', '?')} ({quant.get('calibration', 'chosen by kecil fit')})",
        "", "## Evaluation (base and result, same items)", "",
        "| task | base | result | change (points) |", "|---|---|---|---|", rows, "", "## Gate", "", checks, "",
        "## Run it", "",
        f"- kecil: `./serve.sh` (that is `{report['serve_command']}`), an OpenAI-compatible API on port {recipe.export.serve_port};"
        f" or `kecil chat ./{gguf}`",
    ]
    if recipe.export.modelfile:
        parts.append(f"- Ollama: `ollama create {recipe.name} -f Modelfile` in this folder, then `ollama run {recipe.name}`")
    if recipe.export.kubernetes:
        parts.append("- Kubernetes: `kubectl apply -f kubernetes.yaml` once this folder is in the volume it names (see its first lines)")
    if lora:
        parts.append(f"- the adapter alone, for `{recipe.base}` already deployed: `kecil serve {recipe.base} --adapter ./{lora}`")
    if kb:
        parts.append(f"- the knowledge base: `cp {kb} ~/.cache/kecil/kb/` (or `$KECIL_HOME/kb/`), then "
                     f"`kecil rag ask --kb {recipe.name} --model ./{gguf} \"your question\"`")
    if notes:
        parts += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    parts += ["", "`report.html` and `report.json` hold every stage's time and peak RAM.", ""]
    return "\n".join(parts)
