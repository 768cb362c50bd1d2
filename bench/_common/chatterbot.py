"""A non-English retrieval QA set built from the question -> answer pairs that chatterbot-corpus
ships (Chinese, Japanese, Korean, Indonesian, Hindi, Thai), for tests and bench/rag.py.

The answers are the documents and the questions the queries: one Markdown file per language and
topic (a heading, then one answer per paragraph), and one QA item per question with the answers
it has in the corpus. Answers too short to be found only through their question ("いいえ。", "Python。")
or given to more than one question are left out, so a hit means the right answer was retrieved.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "chatterbot-corpus==1.3.3"  # installed with --no-deps (Makefile MODEL_PACKAGES_NODEPS)
LANGUAGES = {"chinese": "zh", "japanese": "ja", "korean": "ko", "indonesian": "id", "hindi": "hi", "thai": "th"}
_MIN_CHARS = {"zh": 8, "ja": 10, "ko": 10, "th": 12, "id": 24, "hi": 16}  # about one short sentence in each script


def _data_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the multilingual QA set needs `pip install --no-deps {PACKAGE}`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_chatterbot(languages: dict[str, str] | None = None) -> tuple[dict[str, list[str]], list[dict]]:
    """({document name "zh-food": its answers}, [{"question", "answers", "title", "language"}])."""
    import yaml

    documents: dict[str, list[str]] = {}
    pairs: list[tuple[str, str, str, str]] = []  # (language, document, question, answer)
    for folder, code in (languages or LANGUAGES).items():
        for path in sorted((_data_dir() / folder).glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for turn in data.get("conversations") or []:
                if not isinstance(turn, list) or len(turn) < 2:
                    continue
                question, answer = str(turn[0]).strip(), " ".join(str(t).strip() for t in turn[1:])
                if len(answer) >= _MIN_CHARS[code] and question:
                    pairs.append((code, f"{code}-{path.stem}", question, answer))
    askers: dict[str, set[str]] = {}
    for _, _, question, answer in pairs:
        askers.setdefault(answer, set()).add(question)
    questions: dict[tuple[str, str], dict] = {}
    for code, document, question, answer in pairs:
        if len(askers[answer]) > 1:
            continue
        paragraphs = documents.setdefault(document, [])
        if answer not in paragraphs:
            paragraphs.append(answer)
        item = questions.setdefault((code, question), {"question": question, "answers": [], "title": document, "language": code})
        if answer not in item["answers"]:
            item["answers"].append(answer)
    return documents, list(questions.values())
