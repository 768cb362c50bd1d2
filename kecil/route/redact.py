"""Redaction before a text leaves the machine: private values become placeholders (<PERSON_1>, <NRIC_1>) that `restore` puts back into the reply.

`redact(text, config, mapping)` finds identifiers (kecil/route/identifiers.py) and names
(kecil/route/names.py), keeps the best of overlapping finds, and replaces each value with its
kind's placeholder. One `Placeholders` mapping shared by the texts of a request (messages,
system prompt, retrieved chunks) gives a value the same placeholder in all of them, and a value
found in one text is replaced wherever it appears in the next. It fails closed: if anything
goes wrong, or a found value would still be in the output, it raises RedactionError and returns
nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from kecil.errors import ConfigError, KecilError, RedactionError
from kecil.route.identifiers import KINDS as IDENTIFIER_KINDS
from kecil.route.identifiers import PHONE_REGIONS, STRONG, find_identifiers

KINDS: dict[str, str] = {
    **IDENTIFIER_KINDS,
    "PERSON": "person name (spaCy's English NER, titles, patronymics, the user's names)",
    "TERM": "a term from the user's own list",
}
LANGUAGES = ("auto", "en", "ms", "id", "th", "vi", "zh", "hi")


@dataclass(frozen=True)
class RedactConfig:
    """What to redact. Every kind is on by default; the user's names and terms add to what is found."""

    names: tuple[str, ...] = field(default=(), metadata={
        "help": "A person's name to redact wherever it appears (repeatable).", "flag": "--name", "metavar": "NAME"})
    terms: tuple[str, ...] = field(default=(), metadata={
        "help": "Any other term to redact, e.g. a project or client name (repeatable).", "flag": "--term", "metavar": "TERM"})
    kinds: tuple[str, ...] = field(default=tuple(KINDS), metadata={
        "help": f"Kinds to redact (repeatable; default all): {', '.join(KINDS)}.", "flag": "--kind", "metavar": "KIND"})
    regions: tuple[str, ...] = field(default=PHONE_REGIONS, metadata={
        "help": "Countries whose national phone formats are recognised (repeatable); international +NN numbers always are.",
        "flag": "--region", "metavar": "CC"})
    language: str = field(default="auto", metadata={
        "help": f"The texts' language, {'/'.join(LANGUAGES)}: English NER runs on auto and en, and on Latin-script text otherwise."})
    spacy: bool = field(default=True, metadata={"help": "Find person names with spaCy's English NER (off: titles, patronymics and your names only)."})

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"unknown kind {', '.join(unknown)}: choose from {', '.join(KINDS)}")
        if self.language not in LANGUAGES:
            raise ConfigError(f"unknown language {self.language!r}: choose from {', '.join(LANGUAGES)}")
        bad = [r for r in self.regions if not re.fullmatch(r"[A-Z]{2}", r)]
        if bad:
            raise ConfigError(f"regions are two-letter country codes such as SG or MY, got {', '.join(bad)}")


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int
    original: str
    placeholder: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "start": self.start, "end": self.end, "original": self.original, "placeholder": self.placeholder}


def _normal(kind: str, value: str) -> str:
    """The form two writings of one value share: "S1234567D" = "s1234567d", "9123 4567" = "9123-4567"."""
    if kind in ("PERSON", "TERM", "EMAIL"):
        return " ".join(value.casefold().split())
    return re.sub(r"[\s().\-]", "", value).upper()


class Placeholders:
    """Value ↔ placeholder for one request; the same value always gets the same placeholder."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._originals: dict[str, str] = {}
        self._kinds: dict[str, str] = {}
        self._counts: Counter = Counter()

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, _normal(kind, value))
        if key not in self._by_value:
            self._counts[kind] += 1
            tag = f"{kind}_{self._counts[kind]}"
            self._by_value[key] = tag
            self._originals[tag] = value
            self._kinds[tag] = kind
        return f"<{self._by_value[key]}>"

    def original(self, placeholder: str) -> str | None:
        return self._originals.get(placeholder.strip("<>"))

    def values(self) -> list[tuple[str, str]]:
        """(kind, original) of every value seen so far, for finding them again in the next text."""
        return [(self._kinds[tag], value) for tag, value in self._originals.items()]

    def tags(self) -> list[str]:
        return list(self._originals)

    def __len__(self) -> int:
        return len(self._originals)


@dataclass(frozen=True)
class Redaction:
    text: str
    spans: tuple[Span, ...]
    mapping: Placeholders

    @property
    def changed(self) -> bool:
        return bool(self.spans)

    def counts(self) -> dict[str, int]:
        """Redacted entities by kind: what an audit log may record (never the values)."""
        return dict(Counter(s.kind for s in self.spans))


# --- choosing among overlapping finds ---------------------------------------------------------------

_LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class _Candidate:
    kind: str
    start: int
    end: int
    rank: int  # lower wins an overlap


def _candidates(text: str, config: RedactConfig, mapping: Placeholders) -> list[_Candidate]:
    from kecil.route.names import find_names

    found = []
    for f in find_identifiers(text, config.kinds, config.regions):
        # a context word naming the kind beats a check alone; a check beats bare structure
        rank = 0 if f.cued else 1 if f.kind in STRONG else 2
        found.append(_Candidate(f.kind, f.start, f.end, rank))
    use_spacy = config.spacy and "PERSON" in config.kinds and (config.language in ("auto", "en") or bool(_LATIN.search(text)))
    names = config.names if "PERSON" in config.kinds else ()
    terms = config.terms if "TERM" in config.kinds else ()
    for n in find_names(text, names, terms, use_spacy=use_spacy):
        if n.kind in config.kinds:
            found.append(_Candidate(n.kind, n.start, n.end, 0 if n.listed else 4 if n.guessed else 3))
    # what earlier texts of this request had redacted is redacted here too, however it is written
    for kind, value in mapping.values():
        found += [_Candidate(kind, s, e, 1) for s, e in _occurrences(text, value)]
    return found


def _occurrences(text: str, value: str) -> list[tuple[int, int]]:
    """Where `value` is in `text` however it is spaced or hyphenated; a name of several words in
    any case ("tan wei ming"), a one-word one only as written ("Llama" the name, not "llama")."""
    pattern = r"[\s.\-]*".join(re.escape(c) for c in re.sub(r"\s+", "", value)) if len(value) <= 64 else re.escape(value)
    if value[0].isascii() and value[0].isalnum():
        pattern = r"(?<![A-Za-z0-9])" + pattern
    if value[-1].isascii() and value[-1].isalnum():
        pattern += r"(?![A-Za-z0-9])"
    flags = re.IGNORECASE if len(value.split()) > 1 or not value.isalpha() else 0
    return [(m.start(), m.end()) for m in re.finditer(pattern, text, flags)]


def _choose(candidates: list[_Candidate]) -> list[_Candidate]:
    """Non-overlapping finds: best rank first, then the longest."""
    chosen: list[_Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.rank, -(c.end - c.start), c.start)):
        if c.end > c.start and all(c.end <= o.start or c.start >= o.end for o in chosen):
            chosen.append(c)
    return sorted(chosen, key=lambda c: c.start)


def _spread(text: str, chosen: list[_Candidate]) -> list[_Candidate]:
    """A value found once is replaced everywhere it appears in the text: spaCy may tag a name only
    once, and a number after "order" is left alone where the same number elsewhere is not."""
    extra, seen = [], set()
    for c in chosen:
        value = text[c.start:c.end]
        if value in seen:
            continue
        seen.add(value)
        for s, e in _occurrences(text, value):
            if all(e <= o.start or s >= o.end for o in chosen + extra):
                extra.append(_Candidate(c.kind, s, e, c.rank))
    return sorted(chosen + extra, key=lambda c: c.start)


def redact(text: str, config: RedactConfig | None = None, mapping: Placeholders | None = None) -> Redaction:
    """Replace the private values in `text` with placeholders; raise RedactionError rather than
    return a text that may still hold one. Pass one `mapping` to every text of a request."""
    if not isinstance(text, str):
        raise RedactionError(f"redaction takes text, got {type(text).__name__}: nothing was redacted or sent")
    config = config or RedactConfig()
    mapping = mapping if mapping is not None else Placeholders()
    try:
        chosen = _spread(text, _choose(_candidates(text, config, mapping)))
        pieces, spans, at = [], [], 0
        for c in chosen:
            original = text[c.start:c.end]
            tag = mapping.placeholder(c.kind, original)
            pieces += [text[at:c.start], tag]
            spans.append(Span(c.kind, c.start, c.end, original, tag))
            at = c.end
        pieces.append(text[at:])
        redacted = "".join(pieces)
    except KecilError:
        raise
    except Exception as exc:
        # Neither the error's text nor its traceback travels on: either could quote the private
        # text into a log. Its type says enough to find the cause.
        raise RedactionError(
            f"redaction failed ({type(exc).__name__}), so nothing was sent: check that kecil's dependencies are "
            "installed (`make setup` installs spaCy's en_core_web_sm, phonenumbers and python-stdnum)") from None
    leaked = [kind for original, kind in {s.original: s.kind for s in spans}.items() if _occurrences(redacted, original)]
    if leaked:
        raise RedactionError(f"a redacted {leaked[0]} value would still be in the text, so nothing was sent")
    return Redaction(redacted, tuple(spans), mapping)


def _tag_pattern(tag: str) -> str:
    """A placeholder as a model may write it back: <PERSON_1>, PERSON_1, [PERSON_1], <person 1>,
    < PERSON_1 >, &lt;PERSON_1&gt;, PERSON\\_1 (Markdown), but never PERSON_12 for PERSON_1."""
    kind, number = tag.rsplit("_", 1)
    name = r"(?:\\?_|[ -])?".join(re.escape(part) for part in kind.split("_"))
    core = rf"(?<![A-Za-z0-9]){name}(?:\\?_|[ -])?{number}(?!\d)"
    opening, closing = r"(?:&lt;|\\?<|\[|\{)", r"(?:&gt;|\\?>|\]|\})"
    return rf"{opening}[ ]?{core}[ ]?{closing}|{opening}?{core}{closing}?"


def restore(text: str, mapping: Placeholders) -> str:
    """Put the originals back into `text` (a reply) wherever it holds one of `mapping`'s placeholders."""
    tags = sorted(mapping.tags(), key=len, reverse=True)
    if not tags:
        return text
    pattern = re.compile("|".join(f"(?P<t{i}>{_tag_pattern(t)})" for i, t in enumerate(tags)), re.IGNORECASE)
    return pattern.sub(lambda m: mapping.original(tags[int(m.lastgroup[1:])]), text)
