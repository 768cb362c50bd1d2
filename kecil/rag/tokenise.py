"""Words for BM25 in any script: spaced scripts split on Unicode word boundaries, Chinese and
Japanese as overlapping character bigrams, Thai through a dictionary word segmenter.

FTS5's own tokenizers split on spaces and punctuation only, so a Chinese sentence would be one
"word" and Hindi words would break at every vowel sign. kecil therefore tokenises text here and
hands FTS5 the words joined by spaces (its `ascii` tokenizer keeps every non-ASCII character
inside a word, so nothing is split again). Queries go through the same function.
Bigrams for CJK follow Lucene's CJKAnalyzer; Thai uses PyThaiNLP's newmm maximal matching
(https://github.com/PyThaiNLP/pythainlp), whose dictionary ships inside the package.
"""

from __future__ import annotations

import unicodedata

import regex

from kecil.infer.thai_words import thai_segmenter

# Scripts written without spaces between words. Han/Kana runs become bigrams; Thai is segmented
# by dictionary; Lao, Khmer and Myanmar (no segmenter here) fall back to bigrams as well.
_NO_SPACE = r"\p{Han}\p{Hiragana}\p{Katakana}\u30fc\p{Lao}\p{Khmer}\p{Myanmar}"
_TOKEN = regex.compile(
    rf"(?P<bigram>[{_NO_SPACE}]+)"
    r"|(?P<thai>\p{Thai}+)"
    # Marks (\p{M}) belong to the word: Hindi vowel signs and viramas, Vietnamese tone marks.
    rf"|(?P<word>[[\p{{L}}\p{{N}}\p{{M}}]--[{_NO_SPACE}\p{{Thai}}]]+)",
    regex.V1,
)


def tokenise(text: str) -> list[str]:
    """Lower-cased search terms of `text`, in order. Punctuation and spaces are dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    terms: list[str] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "word":
            terms.append(piece)
        elif kind == "bigram":
            terms.extend(_bigrams(piece))
        else:
            terms.extend(_thai_words(piece))
    return terms


def _bigrams(run: str) -> list[str]:
    if len(run) == 1:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def _thai_words(run: str) -> list[str]:
    return [w for w in thai_segmenter()(run) if w.strip()]


def fts_document(text: str) -> str:
    """The text FTS5 indexes for `text`: its terms joined by single spaces."""
    return " ".join(tokenise(text))


def query_terms(text: str) -> list[str]:
    """The distinct search terms of `text`, in order."""
    return list(dict.fromkeys(tokenise(text)))


def fts_match(terms: list[str]) -> str | None:
    """An FTS5 MATCH expression that finds chunks sharing any of `terms` (BM25 ranks them), or
    None for no terms. Each term is quoted, so words like AND/NOT/NEAR and characters like * or
    " in the question are plain text."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms) or None


def fts_query(text: str) -> str | None:
    """`fts_match` of every term of `text`."""
    return fts_match(query_terms(text))
