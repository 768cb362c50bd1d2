"""Thai word segmentation, shared by retrieval (kecil/rag/tokenise.py) and the language figures
(kecil/eval/fertility.py): Thai is written without spaces between words.

PyThaiNLP's newmm maximal matching (https://github.com/PyThaiNLP/pythainlp), whose dictionary ships
inside the package; no hand-written segmenter would match it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache


@cache
def thai_segmenter() -> Callable[[str], list[str]]:
    """A function from Thai text to its words (whitespace dropped)."""
    # PyThaiNLP would otherwise create ~/pythainlp-data and may try to fetch corpora: offline and
    # read-only, as kecil promises; newmm needs neither.
    os.environ.setdefault("PYTHAINLP_OFFLINE", "1")
    os.environ.setdefault("PYTHAINLP_READ_ONLY", "1")
    from pythainlp.tokenize import word_tokenize
    from pythainlp.util import normalize

    # normalize first: text in the wild types น้ำ as นํ้า (nikhahit + tone + sara aa) — XCOPA's Thai
    # does in 10 of 100 sentences — which newmm, not finding it in its dictionary, breaks into letters.
    return lambda text: word_tokenize(normalize(text), engine="newmm", keep_whitespace=False)
