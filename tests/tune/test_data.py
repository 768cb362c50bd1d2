"""Training data: format detection, line-numbered errors, and which tokens carry loss."""

from __future__ import annotations

import json

import pytest

from kecil.infer.chat_template import ChatTemplate
from kecil.tune.data import DataError, PromptStyle, read_dataset, render_spans, split_validation, tokenize_dataset
from tests.tiny_models import CHATML_TEMPLATE
from tests.tune.helpers import memorisable_chat, write_jsonl

CHATML = PromptStyle(ChatTemplate(CHATML_TEMPLATE, "<|im_start|>", "<|im_end|>"), False, "<|im_start|>", "<|im_end|>")


@pytest.mark.parametrize(
    "record, kind",
    [
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "chat"),
        ({"instruction": "Add", "input": "2 and 2", "output": "4"}, "instruction"),
        ({"instruction": "Say hi", "output": "hi"}, "instruction"),
        ({"text": "Once upon a time."}, "text"),
    ],
)
def test_format_is_detected(tmp_path, record, kind):
    dataset = read_dataset(write_jsonl(tmp_path / "d.jsonl", [record, record]))
    assert dataset.format == kind and len(dataset.records) == 2


def test_bad_lines_are_reported_by_number_and_nothing_starts(tmp_path):
    good = {"text": "fine"}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps(good),
        "{not json",
        json.dumps({"text": ""}),
        json.dumps({"prompt": "x"}),
        "",  # blank lines are skipped, not errors
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        json.dumps(good),
    ]) + "\n")
    with pytest.raises(DataError) as error:
        read_dataset(path)
    message = str(error.value)
    for number in ("line 2:", "line 3:", "line 4:", "line 6:"):
        assert number in message, message
    assert "line 1:" not in message and "line 7:" not in message
    assert "did not start" in message and "one format per file" in message


@pytest.mark.parametrize(
    "record, words",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no non-empty assistant"),
        ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "role 'robot'"),
        ({"messages": "hi"}, "non-empty list"),
        ({"instruction": "do it"}, "'output'"),
        ([1, 2], "JSON object"),
    ],
)
def test_each_kind_of_bad_record_says_what_is_wrong(tmp_path, record, words):
    with pytest.raises(DataError, match="line 1: .*" + words):
        read_dataset(write_jsonl(tmp_path / "d.jsonl", [record]))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        read_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        read_dataset(tmp_path / "empty.jsonl")


def test_chat_loss_covers_only_the_assistant_turns():
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question one?"},
        {"role": "assistant", "content": "Answer one."},
        {"role": "user", "content": "Question two?"},
        {"role": "assistant", "content": "Answer two."},
    ]}
    text, spans = render_spans(record, "chat", CHATML)
    assert [text[a:b] for a, b in spans] == ["Answer one.<|im_end|>\n", "Answer two.<|im_end|>\n"]
    assert text == CHATML.template.render(record["messages"], add_generation_prompt=False)


def test_default_system_prompt_is_trained_as_inference_adds_it():
    style = PromptStyle(CHATML.template, False, None, None, default_system="You are a helpful assistant.")
    text, _ = render_spans(memorisable_chat(1)[0], "chat", style)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_instruction_data_with_and_without_a_chat_template():
    record = {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"}
    text, spans = render_spans(record, "instruction", CHATML)
    assert "<|im_start|>user\nAdd the numbers\n\n2 and 3<|im_end|>" in text
    assert [text[a:b] for a, b in spans] == ["5<|im_end|>\n"]
    base = PromptStyle(None, True, "<s>", "</s>")
    text, spans = render_spans(record, "instruction", base)
    assert text.startswith("### Instruction:\nAdd the numbers\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert [text[a:b] for a, b in spans] == ["5</s>"]
    with pytest.raises(DataError, match="chat template"):
        render_spans(memorisable_chat(1)[0], "chat", base)


def test_trained_tokens_decode_to_the_answers(tiny_hf_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_model("llama"))

    def tokenize(text):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], encoded["offset_mapping"]

    dataset = read_dataset(write_jsonl(tmp_path / "d.jsonl", memorisable_chat(3)))
    examples, cut, dropped = tokenize_dataset(dataset, CHATML, tokenize, None, max_length=512)
    assert (cut, dropped) == (0, 0)
    for example, record in zip(examples, dataset.records):
        trained = tokenizer.decode([t for t, keep in zip(example.ids, example.trained) if keep])
        assert trained == record["messages"][1]["content"] + "<|im_end|>\n"
    # Cut inside the answer: kept and counted. Cut before it: nothing left to learn, refused.
    shortest = min(len(e.ids) for e in examples)
    cut_examples, cut, dropped = tokenize_dataset(dataset, CHATML, tokenize, None, max_length=shortest - 2)
    assert cut == 3 and dropped == 0 and all(len(e.ids) == shortest - 2 for e in cut_examples)
    with pytest.raises(DataError, match="raise --max-length"):
        tokenize_dataset(dataset, CHATML, tokenize, None, max_length=16)


def test_validation_split_is_seeded_and_disjoint():
    items = list(range(50))
    train, val = split_validation(items, 0.1, seed=3)
    assert len(val) == 5 and sorted(train + val) == items
    assert split_validation(items, 0.1, seed=3) == (train, val)
    assert split_validation(items, 0.0, seed=3) == (items, [])
