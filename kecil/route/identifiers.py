"""Structured identifiers in free text (e-mail, phone, card, IBAN, IP, nine national ID numbers): candidates found by pattern, kept only where their check digits or structure hold and the words around them agree.

python-stdnum validates what it covers (Luhn, IBAN mod 97, Aadhaar's Verhoeff, PAN, MyKad's date
and state code, NIK's region and date, ISO 7064 mod 11-2, the Thai ID's mod 11);
phonenumbers finds and validates phone numbers. Singapore NRIC/FIN, the Hong Kong HKID and the
Vietnamese CCCD are checked here by hand because no well-kept library covers them, and the PRC
ID's date and province are (its check digit is stdnum's), as stdnum.cn.ric rejects real IDs.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass

from kecil.route.context_words import cue_before, is_price

# kind -> what it is; the order is the order of placeholders' kinds in help and reports.
KINDS: dict[str, str] = {
    "EMAIL": "e-mail address",
    "PHONE": "phone number (international, or national for SG MY ID IN HK CN TH VN PH)",
    "CARD": "payment card number (Luhn and a card network's prefix)",
    "IBAN": "IBAN (ISO 13616 mod 97)",
    "IP": "IPv4 or IPv6 address",
    "NRIC": "Singapore NRIC/FIN (check letter)",
    "MYKAD": "Malaysian MyKad number (birth date and state code)",
    "NIK": "Indonesian NIK (region and birth date)",
    "AADHAAR": "Indian Aadhaar (Verhoeff check digit)",
    "PAN": "Indian PAN (holder-type structure)",
    "HKID": "Hong Kong identity card number (check digit)",
    "CN_ID": "PRC resident identity number (ISO 7064 mod 11-2, birth date, province)",
    "THAI_ID": "Thai national ID (mod 11 check digit)",
    "CCCD": "Vietnamese citizen ID, CCCD (province code, century/gender digit, birth year)",
}
# Kinds whose check vouches for a number on its own; the others (a structure without a check
# digit, a valid phone number) are also dropped when the word before them names a look-alike.
STRONG = frozenset({"EMAIL", "CARD", "IBAN", "IP", "NRIC", "AADHAAR", "HKID", "CN_ID", "THAI_ID"})
PHONE_REGIONS = ("SG", "MY", "ID", "IN", "HK", "CN", "TH", "VN", "PH")


@dataclass(frozen=True)
class Found:
    kind: str
    start: int
    end: int
    cued: bool = False  # a context word before it names this kind


# --- check digits written here: no maintained library covers these three -------------------------

_NRIC_TABLES = {"S": "JZIHGFEDCBA", "T": "JZIHGFEDCBA", "F": "XWUTRQPNMLK", "G": "XWUTRQPNMLK"}


def valid_nric(number: str) -> bool:
    """Singapore NRIC/FIN: weights 2765432 over the 7 digits, +4 for the T and G series, +3 for M;
    the remainder mod 11 picks the letter (M, since 2022, from its own table read backwards)."""
    number = number.upper()
    if not re.fullmatch(r"[STFGM]\d{7}[A-Z]", number):
        return False
    total = sum(int(d) * w for d, w in zip(number[1:8], (2, 7, 6, 5, 4, 3, 2)))
    total += {"T": 4, "G": 4, "M": 3}.get(number[0], 0)
    remainder = total % 11
    if number[0] == "M":
        return "KLJNPQRTUWX"[10 - remainder] == number[8]
    return _NRIC_TABLES[number[0]][remainder] == number[8]


def valid_hkid(number: str) -> bool:
    """Hong Kong HKID: one or two letters, six digits, a check digit (0-9 or A) in brackets; a
    one-letter prefix counts as a space (36); weights 9..2, the check makes the sum 0 mod 11."""
    compact = re.sub(r"[\s()]", "", number.upper())
    match = re.fullmatch(r"([A-Z]{1,2})(\d{6})([0-9A])", compact)
    if not match:
        return False
    letters, digits, check = match.groups()
    values = ([36] if len(letters) == 1 else []) + [ord(c) - 55 for c in letters] + [int(d) for d in digits]
    total = sum(v * w for v, w in zip(values, range(9, 1, -1)))
    total += 10 if check == "A" else int(check)
    return total % 11 == 0


# Province codes of the CCCD (Circular 59/2021/TT-BCA, the 63 provinces and cities).
_CCCD_PROVINCES = frozenset(int(c) for c in (
    "001 002 004 006 008 010 011 012 014 015 017 019 020 022 024 025 026 027 030 031 033 034 035 036 037 038 "
    "040 042 044 045 046 048 049 051 052 054 056 058 060 062 064 066 067 068 070 072 074 075 077 079 080 082 "
    "083 084 086 087 089 091 092 093 094 095 096").split())


def valid_cccd(number: str) -> bool:
    """Vietnamese CCCD: 12 digits, a province code, a century/gender digit (0-1: born 19xx, 2-3:
    20xx), two digits of the birth year (not in the future); it has no check digit."""
    digits = re.sub(r"[\s-]", "", number)
    if not re.fullmatch(r"\d{12}", digits) or int(digits[:3]) not in _CCCD_PROVINCES or digits[3] not in "0123":
        return False
    year = (1900 if digits[3] in "01" else 2000) + int(digits[4:6])
    return year <= datetime.date.today().year


def valid_cn_id(number: str) -> bool:
    """PRC resident ID: ISO 7064 mod 11-2 (python-stdnum's), a real birth date and a province code.
    Not stdnum.cn.ric itself: it also wants the county code to have existed at the birth date,
    but an ID carries the code of where it was issued (1999 on), so it rejects real IDs of people
    born before their county's code was created."""
    from stdnum.iso7064 import mod_11_2

    number = re.sub(r"[\s-]", "", number).upper()
    if not re.fullmatch(r"\d{17}[\dX]", number) or number[:2] not in _CN_PROVINCES or not mod_11_2.is_valid(number):
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return datetime.date(1880, 1, 1) <= born <= datetime.date.today()


_CN_PROVINCES = frozenset("11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65 71 81 82".split())


# --- the kinds python-stdnum covers ----------------------------------------------------------------

_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:2[2-9][1-9]|[3-6]\d\d|7[01]\d|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9]|2)|35(?:2[89]|[3-8])")


def valid_card(digits: str) -> bool:
    from stdnum import luhn

    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn.is_valid(digits)


def _stdnum(module: str):
    def check(number: str) -> bool:
        import importlib

        return importlib.import_module(f"stdnum.{module}").is_valid(number)
    return check


# digit-run kinds by length; a run's separators are spaces or hyphens.
_NUMERIC = {
    # when no word says which, a MyKad's date and state code are rarer by chance than a Verhoeff digit
    12: (("MYKAD", _stdnum("my.nric")), ("AADHAAR", _stdnum("in_.aadhaar")), ("CCCD", valid_cccd)),
    13: (("THAI_ID", _stdnum("th.pin")), ("CARD", valid_card)),
    16: (("CARD", valid_card), ("NIK", _stdnum("id.nik"))),
    18: (("CN_ID", valid_cn_id), ("CARD", valid_card)),
}
for _length in (14, 15, 17, 19):
    _NUMERIC[_length] = (("CARD", valid_card),)
# How people group each kind when they group it: a hint when two kinds both validate.
_GROUPING = {(6, 2, 4): "MYKAD", (4, 4, 4): "AADHAAR", (1, 4, 5, 2, 1): "THAI_ID", (4, 4, 4, 4): "CARD", (4, 6, 5): "CARD",
             (4, 4, 4, 4, 3): "CARD", (3, 3, 3, 3): "CCCD"}

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){10,32}(?![A-Za-z0-9])")
_IPV4 = re.compile(r"(?<![A-Za-z0-9_.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(r"(?<![A-Za-z0-9_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![A-Za-z0-9_:])")
_NRIC = re.compile(r"(?<![A-Za-z0-9])[STFGMstfgm]\d{7}[A-Za-z](?![A-Za-z0-9])")
_HKID = re.compile(r"(?<![A-Za-z0-9])[A-Z]{1,2}\d{6} ?(?:\([0-9A]\)|[0-9A])(?![A-Za-z0-9])")
_PAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{3}[PCHFATBLJG][A-Z]\d{4}[A-Z](?![A-Za-z0-9])")
# ASCII boundaries only: Thai and Chinese put an ID right after a word ("身份证号1101…").
_DIGIT_RUN = re.compile(r"(?<![A-Za-z0-9.,/_])\d+(?:[ \u00a0-]\d+)*(?:[Xx](?![A-Za-z0-9]))?(?![A-Za-z0-9/_]|[.,]\d)")
_LONGEST = 19  # digits in the longest number tried (a 19-digit card)


def _cue(text: str, start: int) -> str | None:
    return cue_before(text, start)


def _emails(text: str) -> list[Found]:
    return [Found("EMAIL", m.start(), m.end()) for m in _EMAIL.finditer(text)]


def _ibans(text: str) -> list[Found]:
    from stdnum import iban

    found = []
    for m in _IBAN.finditer(text):
        candidate = m.group()
        # the pattern may run on into the next word; the longest prefix that validates is the IBAN
        for end in range(len(candidate), 11, -1):
            if (end == len(candidate) or candidate[end] == " ") and iban.is_valid(candidate[:end]):
                found.append(Found("IBAN", m.start(), m.start() + end))
                break
    return found


def _ips(text: str) -> list[Found]:
    found = []
    for pattern, make in ((_IPV4, ipaddress.IPv4Address), (_IPV6, ipaddress.IPv6Address)):
        for m in pattern.finditer(text):
            value = m.group()
            if pattern is _IPV6 and sum(c in "0123456789abcdefABCDEF" for c in value) < 4:
                continue  # "a::b", clock times and ratios are not worth a placeholder
            try:
                address = make(value)
            except ValueError:
                continue
            if address.is_loopback or address.is_unspecified:
                continue  # 127.0.0.1 and 0.0.0.0 say nothing about anyone
            if _cue(text, m.start()) == "":
                continue  # "version 1.2.3.4"
            found.append(Found("IP", m.start(), m.end()))
    return found


def _lettered(text: str) -> list[Found]:
    """NRIC/FIN, HKID and PAN: letters and digits in a fixed shape."""
    from stdnum.in_ import pan

    found = [Found("NRIC", m.start(), m.end()) for m in _NRIC.finditer(text) if valid_nric(m.group())]
    found += [Found("HKID", m.start(), m.end()) for m in _HKID.finditer(text) if valid_hkid(m.group())]
    for m in _PAN.finditer(text):
        cue = _cue(text, m.start())
        if pan.is_valid(m.group()) and cue != "":
            found.append(Found("PAN", m.start(), m.end(), cued=cue == "PAN"))
    return found


def _numeric(text: str) -> list[Found]:
    """Digit runs (spaces or hyphens between groups) that are a card or a numeric national ID.

    A run may hold two numbers written side by side, so its groups are tried as a whole first,
    then as the longest valid stretches from the left."""
    found = []
    for m in _DIGIT_RUN.finditer(text):
        groups = [(g.start() + m.start(), g.end() + m.start()) for g in re.finditer(r"\d+[Xx]?", m.group())]
        i = 0
        while i < len(groups):
            last, digits = i, 0
            while last < len(groups) and digits + groups[last][1] - groups[last][0] <= _LONGEST + 1:
                digits += groups[last][1] - groups[last][0]
                last += 1
            for j in range(last, i, -1):
                start, end = groups[i][0], groups[j - 1][1]
                hit = _classify(text, start, end, tuple(e - s for s, e in groups[i:j]), whole=(i, j) == (0, len(groups)))
                if hit is not None:
                    found.append(hit)
                    i = j
                    break
            else:
                i += 1
    return found


def _classify(text: str, start: int, end: int, grouping: tuple[int, ...], whole: bool) -> Found | None:
    digits = re.sub(r"[\s-]", "", text[start:end]).upper()
    kinds = [kind for kind, check in _NUMERIC.get(len(digits), ()) if check(digits)]
    if not whole:
        # a stretch of a longer run is a number of its own only in the grouping its kind is
        # written in: "4111 1111 1111" of a mistyped card is not a MyKad
        kinds = [k for k in kinds if len(grouping) == 1 or _GROUPING.get(grouping) == k]
    if not kinds:
        return None
    cue = _cue(text, start)
    if cue in kinds:
        return Found(cue, start, end, cued=True)
    if is_price(text, start, end):
        return None
    if cue == "":
        return None  # "order 4111 …": one random number in ten passes a check digit
    kind = _GROUPING.get(grouping) if _GROUPING.get(grouping) in kinds else kinds[0]
    return Found(kind, start, end)


def _phones(text: str, regions: tuple[str, ...]) -> list[Found]:
    import phonenumbers

    spans: dict[tuple[int, int], bool] = {}
    for region in regions:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            spans[(match.start, match.end)] = match.raw_string.startswith("+")
    found = []
    for (start, end), international in spans.items():
        cue = _cue(text, start)
        if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", text[start:end]):
            continue  # dotted like an IPv4 address: the IP rule decides
        if (cue == "" or is_price(text, start, end)) and not international:
            continue  # "order 8345 1234" is a valid Singapore number too, "Rp 1.500.000" an Indonesian one
        found.append(Found("PHONE", start, end, cued=cue == "PHONE" or international))
    return found


def find_identifiers(text: str, kinds: tuple[str, ...] = tuple(KINDS), regions: tuple[str, ...] = PHONE_REGIONS) -> list[Found]:
    """Every identifier of `kinds` in `text`, overlapping ones included (the caller keeps the best)."""
    found = _emails(text) + _ibans(text) + _ips(text) + _lettered(text) + _numeric(text)
    if "PHONE" in kinds and regions:
        found += _phones(text, regions)
    return [f for f in found if f.kind in kinds]
