"""Build kecil's bundled calibration and held-out texts (kecil/compress/data/) from package text.

Sources (pinned; fetched with pip, nothing else):
- the Wikipedia sample in the llamafactory 0.9.5 sdist (data/wiki_demo.txt, 30 articles);
- the multilingual and code text of dataset-build 0.1.11 (dataset_build/data/<language>/).

calibration.txt: the first 10 Wikipedia articles (12 kB each), 5 kB from each of 15 languages,
and a little code. heldout.txt: articles 20-29 (4 kB each), which calibration never sees.
Run: .venv/bin/python scripts/build_calibration_data.py
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "kecil" / "compress" / "data"
LANGUAGES = ("ind", "zho", "fra", "deu", "spa", "hin", "jpn", "kor", "vie", "tha", "rus", "ara", "por", "swa", "tur")
CODE = ("python", "javascript", "c++", "go", "rust")


def fetch(spec: str, folder: Path, *, sdist: bool) -> Path:
    args = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", str(folder)]
    if sdist:
        args[5:5] = ["--no-binary", ":all:"]
    subprocess.run(args, check=True)
    return next(p for p in folder.iterdir() if p.name.lower().startswith(spec.split("==")[0].replace("-", "_")) or p.name.startswith(spec.split("==")[0]))


def cut(text: str, size: int, start: int = 0) -> str:
    """About `size` characters from `start`, ending at a sentence or line end."""
    piece = text[start : start + size]
    end = max(piece.rfind(". "), piece.rfind("\n"), piece.rfind("。"))
    return (piece[: end + 1] if end > size // 2 else piece).strip()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sdist = fetch("llamafactory==0.9.5", folder, sdist=True)
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("data/wiki_demo.txt"))
            wiki = archive.extractfile(member).read().decode("utf-8")
        wheel = fetch("dataset-build==0.1.11", folder, sdist=False)
        with zipfile.ZipFile(wheel) as archive:
            def read(prefix: str) -> str:
                names = sorted(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".txt"))
                return "\n".join(archive.read(n).decode("utf-8") for n in names)

            languages = {code: read(f"dataset_build/data/{code}/") for code in LANGUAGES}
            code = {lang: read(f"dataset_build/data/coding/{lang}/") for lang in CODE}
    articles = [line.strip() for line in wiki.splitlines() if line.strip()]
    calibration = [cut(a, 12_000) for a in articles[:10]]
    calibration += [cut(text, 5_000, start=len(text) // 3) for text in languages.values()]
    calibration += [cut(text, 3_000) for text in code.values() if text]
    heldout = [cut(a, 4_000) for a in articles[20:30]]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "calibration.txt").write_text("\n\n".join(calibration) + "\n", encoding="utf-8")
    (OUT / "heldout.txt").write_text("\n\n".join(heldout) + "\n", encoding="utf-8")
    for name in ("calibration.txt", "heldout.txt"):
        print(name, (OUT / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
