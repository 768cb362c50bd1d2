"""Which writing system (Unicode script) a text's letters are in, to catch a reply written in
another script than its question (a Thai reply to an Indonesian question)."""

from __future__ import annotations

from collections import Counter

import regex

# The scripts told apart; a letter of any other script counts as "other". Japanese writes Han,
# Hiragana and Katakana together (and Chinese text quotes kana), so the three are one group.
_NAMES = ("Latin", "Thai", "Han", "Hiragana", "Katakana", "Hangul", "Cyrillic", "Greek", "Arabic", "Hebrew",
          "Devanagari", "Bengali", "Tamil", "Telugu", "Kannada", "Malayalam", "Gujarati", "Gurmukhi", "Sinhala",
          "Lao", "Khmer", "Myanmar", "Georgian", "Armenian", "Ethiopic", "Tibetan")
_GROUP = {"Hiragana": "Han", "Katakana": "Han"}
_LETTER = regex.compile(
    "|".join(rf"(?P<{name}>\p{{Script={name}}}+)" for name in _NAMES)
    # letters shared by all scripts (Common: "ー", "ª"; Inherited) say nothing about which one
    + r"|(?P<other>[[\p{L}]--[\p{Script=Common}\p{Script=Inherited}]]+)",
    regex.V1,
)


def letters_by_script(text: str) -> Counter:
    """How many letters of `text` each script group has ("Latin", "Thai", "Han" …, "other")."""
    counts: Counter = Counter()
    for match in _LETTER.finditer(text):
        counts[_GROUP.get(match.lastgroup, match.lastgroup)] += sum(1 for ch in match.group() if ch.isalpha())
    return counts


def main_script(text: str, min_letters: int = 3) -> str | None:
    """The script group most of `text`'s letters are in, or None when it has under `min_letters`."""
    counts = letters_by_script(text)
    if sum(counts.values()) < min_letters:
        return None
    return counts.most_common(1)[0][0]


def foreign_letters(text: str, script: str) -> tuple[int, int]:
    """(letters of `text` not in `script`, letters in it)."""
    counts = letters_by_script(text)
    same = counts.get(script, 0)
    return sum(counts.values()) - same, same
