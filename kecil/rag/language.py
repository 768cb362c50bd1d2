"""How much of a text is English, to choose the embedding model for a new knowledge base.

all-minilm-l6-v2 was trained on English: on Thai, Indonesian or Chinese documents its dense side
finds little (chatterbot QA set, held-out half: dense recall@5 0.144 against multilingual-e5-small's
0.676, docs/benchmarks.md). No language-identification model is needed to see that: letters outside
the Latin alphabets (Thai, CJK, Hangul, Arabic, Cyrillic, Devanagari, Vietnamese's extended
Latin ...) are not English, and Latin-script text is English unless the common short words of
another Latin-script language outnumber English ones in it. Text with neither (names, numbers,
a table of codes) counts as English, so such files never flip the choice alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MULTILINGUAL = "multilingual-e5-small"
ENGLISH = "all-minilm-l6-v2"

_ENGLISH = set("""the of and to in is that for it with as on be are this by was at from or an have not
they which you we but his her can will has their were been if would there what all when who so do
does how our your its than into about more should may these those any each only also""".split())
# Common short words of the Latin-script languages kecil's users write most, none of them English
_OTHERS = {
    "indonesian/malay": set("""yang dan di ke dari untuk dengan ini itu adalah tidak akan pada dalam
        juga atau ada kami kita saya anda mereka bisa sudah belum karena oleh sebagai tersebut harus
        dapat lebih bagi hari apa siapa bagaimana kapan berapa""".split()),
    "tagalog": set("ang ng mga sa na ay at ito hindi siya ako ikaw kami tayo namin para kung".split()),
    "spanish": set("el la los las de que y en un una por para con es se del al lo como más pero sus".split()),
    "portuguese": set("o os as de que e em um uma por para com não se do da dos das ao é mais mas".split()),
    "french": set("le la les de des du et en un une est que qui pour dans par sur pas au aux ce ne".split()),
    "german": set("der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch".split()),
    "italian": set("il la di che e un una per con non sono è del della gli le dei da al nel".split()),
    "dutch": set("de het een en van is dat op te zijn niet met voor die er aan ook als bij".split()),
}
_WORD = re.compile(r"[a-zà-ÿ']+")


def _latin(char: str) -> bool:
    return char < "\u0250"  # Basic Latin to Latin Extended-B: English and most European alphabets


def english_letters(text: str) -> tuple[int, int]:
    """(letters judged English, all letters) of `text`."""
    letters = [c for c in text if c.isalpha()]
    latin = sum(1 for c in letters if _latin(c))
    if not latin:
        return 0, len(letters)
    words = _WORD.findall(text.lower())
    english = sum(w in _ENGLISH for w in words)
    other = max(sum(w in vocabulary for w in words) for vocabulary in _OTHERS.values())
    if other > english and other >= max(2, 0.08 * len(words)):
        return 0, len(letters)
    return latin, len(letters)


def english_share(texts: Iterable[str]) -> float:
    """The share of the letters of `texts` that are English (1.0 when there are no letters)."""
    english = total = 0
    for text in texts:
        yes, letters = english_letters(text)
        english, total = english + yes, total + letters
    return english / total if total else 1.0


def suggested_embedder(texts: Iterable[str]) -> tuple[str, float]:
    """(the embedding model for `texts`, their English share): the multilingual model when most
    of the text is not English."""
    share = english_share(texts)
    return (MULTILINGUAL if share < 0.5 else ENGLISH), share
