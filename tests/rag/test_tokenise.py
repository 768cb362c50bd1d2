"""BM25 terms in scripts with and without spaces, and FTS5 search in each language end to end."""

from __future__ import annotations

import sqlite3

import pytest

from kecil.rag.tokenise import fts_document, fts_query, tokenise


@pytest.mark.parametrize(
    "text, expected",
    [
        ("北京是中国的首都。", ["北京", "京是", "是中", "中国", "国的", "的首", "首都"]),  # zh: character bigrams
        ("東京は日本の首都です", ["東京", "京は", "は日", "日本", "本の", "の首", "首都", "都で", "です"]),  # ja
        ("ผมชอบกินข้าวผัด", ["ผม", "ชอบ", "กิน", "ข้าวผัด"]),  # th: dictionary words, not characters
        ("Kucing itu tidur di atas tikar.", ["kucing", "itu", "tidur", "di", "atas", "tikar"]),  # id / ms
        ("Hà Nội là thủ đô của Việt Nam.", ["hà", "nội", "là", "thủ", "đô", "của", "việt", "nam"]),  # vi: tone marks kept
        ("भारत की राजधानी नई दिल्ली है।", ["भारत", "की", "राजधानी", "नई", "दिल्ली", "है"]),  # hi: vowel signs stay in the word
        ("ＡＢＣ Straße, e-mail 3.14", ["abc", "strasse", "e", "mail", "3", "14"]),  # NFKC + casefold
    ],
)
def test_terms(text, expected):
    assert tokenise(text) == expected


def test_query_is_quoted_so_operators_are_words():
    assert fts_query('NOT "this" OR that*') == '"not" OR "this" OR "or" OR "that"'
    assert fts_query("  ...  ") is None


DOCS = {
    "zh": ("上海是中国最大的城市，也是重要的金融中心。", "中国的金融中心"),
    "ja": ("富士山は日本で一番高い山です。", "日本で一番高い山"),
    "th": ("กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย", "เมืองหลวงของไทย"),
    "id": ("Jakarta adalah ibu kota Indonesia dan kota terbesar.", "ibu kota Indonesia"),
    "ms": ("Kuala Lumpur ialah ibu negara Malaysia.", "ibu negara Malaysia"),
    "vi": ("Phở là món ăn truyền thống của Việt Nam.", "món ăn Việt Nam"),
    "hi": ("गंगा भारत की सबसे लंबी नदी है।", "सबसे लंबी नदी"),
}


def test_fts5_finds_the_right_document_in_every_language():
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(terms, tokenize = 'ascii')")
    languages = list(DOCS)
    for rowid, language in enumerate(languages, start=1):
        db.execute("INSERT INTO t (rowid, terms) VALUES (?, ?)", (rowid, fts_document(DOCS[language][0])))
    for rowid, language in enumerate(languages, start=1):
        best = db.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY rank LIMIT 1", (fts_query(DOCS[language][1]),)).fetchone()
        assert best == (rowid,), language
