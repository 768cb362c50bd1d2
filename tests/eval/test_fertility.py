"""Tokenizer fertility: counts checked against the tokenizer run directly on a known sentence,
the languages compared on the same sentences, and `kecil info` showing it."""

from __future__ import annotations

import json

import pytest

from kecil.errors import ConfigError
from kecil.eval.fertility import LANGUAGES, FertilityConfig, count_words, fertility, parallel_sentences
from kecil.infer.tokenizer import open_tokenizer
from kecil.models.reference import resolve
from tests.cli_helpers import assert_clean_error, kecil


@pytest.fixture(scope="module")
def smollm2_tokenize():
    return open_tokenizer(resolve("smollm2-135m"))


@pytest.fixture(scope="module")
def smollm2_direct():
    """SmolLM2's vocabulary opened straight through llama-cpp-python, not through kecil."""
    from kecil.infer.llamacpp_runtime import import_llama_cpp

    vocab = import_llama_cpp().Llama(model_path=str(resolve("smollm2-135m").path), vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def test_a_known_sentence_counted_by_hand(smollm2_tokenize, smollm2_direct):
    sentence = "The man turned on the faucet."  # COPA validation premise 0
    assert parallel_sentences("en", 1) == [sentence]
    (english,), _ = fertility(smollm2_tokenize, FertilityConfig(languages=("en",), sentences=1))
    tokens = len(smollm2_direct(sentence))
    assert tokens == 7  # The| man| turned| on| the| faucet|.  (SmolLM2's BPE keeps each word whole)
    assert (english.tokens, english.characters, english.words, english.sentences) == (tokens, 29, 6, 1)
    assert english.tokens_per_word == pytest.approx(7 / 6) and english.tokens_per_char == pytest.approx(7 / 29)
    assert english.vs_english == 1


def test_thai_costs_more_tokens_than_english_on_the_same_sentences(smollm2_tokenize, smollm2_direct):
    results, skipped = fertility(smollm2_tokenize, FertilityConfig(languages=("en", "th", "zh")))
    assert skipped == {}
    by = {f.language: f for f in results}
    thai = parallel_sentences("th")
    assert by["th"].tokens == sum(len(smollm2_direct(s)) for s in thai) and by["th"].sentences == 100
    assert by["th"].english_tokens == by["en"].tokens == sum(len(smollm2_direct(s)) for s in parallel_sentences("en"))
    # SmolLM2's vocabulary is English-first: Thai falls back to byte pieces, several per letter
    assert by["th"].tokens_per_char > 4 * by["en"].tokens_per_char
    assert by["th"].vs_english > 3
    assert by["zh"].words < by["zh"].characters  # jieba joins characters into words


def test_words_in_scripts_without_spaces():
    assert count_words("The man turned on the faucet.", "en") == 6
    assert count_words("ผู้ชายเปิดก๊อกนํ้า", "th") == 3  # ผู้ชาย|เปิด|ก๊อกน้ำ, once its น้ำ is normalised
    assert count_words("那人打开水龙头。", "zh") == 4  # 那|人|打开|水龙头, the full stop is not a word
    assert count_words("Người đàn ông bật vòi nước.", "vi") == 6  # syllables


def test_the_parallel_sentences_line_up():
    for code in LANGUAGES:
        sentences = parallel_sentences(code)
        assert len(sentences) == 100 and all(s.strip() for s in sentences), code
        assert len(set(sentences)) >= 98, code  # translations, not one line repeated
    assert parallel_sentences("ms", 3)[2] == "Wanita itu bersara."  # "The woman retired."
    assert parallel_sentences("hi", 3)[2] == "महिला सेवानिवृत्त हो गई।"


def test_a_hugging_face_tokenizer(tiny_hf_model):
    from transformers import AutoTokenizer

    folder = tiny_hf_model("llama")
    tokenize = open_tokenizer(resolve(str(folder)))
    (english,), _ = fertility(tokenize, FertilityConfig(languages=("en",), sentences=10))
    direct = AutoTokenizer.from_pretrained(str(folder))
    assert english.tokens == sum(len(direct(s, add_special_tokens=False)["input_ids"]) for s in parallel_sentences("en", 10))


def test_bad_config_says_what_is_measured():
    with pytest.raises(ConfigError, match="th"):
        FertilityConfig(languages=("xx",))
    with pytest.raises(ConfigError):
        FertilityConfig(sentences=0)


def test_kecil_info_shows_fertility():
    done = kecil("info", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    by = {row["language"]: row for row in info["fertility"]}
    assert list(by) == list(LANGUAGES)
    assert by["th"]["vs_english"] > 3 and by["en"]["vs_english"] == 1
    assert info["Tokens, Thai (th)"].startswith(f"{by['th']['tokens_per_word']:.2f} tokens/word")
    table = kecil("info", "smollm2-135m")
    assert "Tokens, Tamil (ta)" in table.stdout and "x English" in table.stdout
    plain = kecil("info", "--json", "--no-fertility")
    assert "fertility" not in json.loads(plain.stdout)


def test_custom_task_language_is_checked(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"query": "a", "choices": ["b", "c"], "answer": 0}) + "\n")
    (tmp_path / "t.yaml").write_text("name: t\nkind: choice\ndata: t.jsonl\nlanguage: xx\n")
    assert_clean_error(kecil("eval", "smollm2-135m", "--tasks", "t", "--task-file", str(tmp_path / "t.yaml"), "--no-system"), "language", "th")


def test_info_of_a_model_whose_tokenizer_is_broken_still_shows_the_rest(tiny_hf_model, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_hf_model("llama"), folder)
    (folder / "tokenizer.json").write_text("{not json")
    done = kecil("info", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["Layers"] == "2" and info["fertility"] == []
    assert info["Tokens per language"].startswith("not measured: transformers could not load the tokenizer")
