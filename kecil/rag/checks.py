"""What `kecil ask` checks in a model's answer before a reader sees it: each sentence's [n]
markers against the sources' words, each number against the source sentence it claims to come
from, and the script the answer is written in against the question's (`check_sentences`,
`AttributedStream`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import regex

from kecil.rag.scripts import foreign_letters
from kecil.rag.tokenise import tokenise

if TYPE_CHECKING:
    from kecil.rag.ask import Citation

_CITE = regex.compile(r"\[(\d+)\]")
_NUMBER = regex.compile(r"\p{N}+(?:[.,]\p{N}+)*")
_ENUMERATOR = regex.compile(r"\s*(?:\p{N}{1,3}|\p{L})[.)]")  # "1." or "b)" opening a list item: its own "sentence"
# a sentence, with any [n] markers written after its full stop; a single line break does not end
# one (small models copy a source's wrapped lines), a blank line does; nor does a Latin stop with
# a letter or digit right after it ("security@example.com", "3.5"); closing quotes and brackets
# right after its stop are its own (the marker goes after them: 'is "18 days." [1]'); a line that
# opens a list item ("2. ", "b) ", "- ") starts a new one
_SENTENCE = regex.compile(r"(?:[^.!?。！？\n]|\n(?!\n|[ \t]*(?:(?:\p{N}{1,3}|\p{L})[.)]|[-*•])[ \t])|[.!?]+(?=[\p{L}\p{N}]))+(?:[.!?。！？]+[\"'”’»」』)]*)?(?:[ \t]*\[\d+\])*")

# Words that show nothing about where a sentence came from: the prompt's own, and English
# function words long enough to pass the length test ("must" is in half of any policy manual).
_NOT_EVIDENCE = {
    "answer", "source", "sources", "question", "document", "documents", "cannot", "according",
    "about", "after", "also", "been", "before", "being", "both", "could", "does", "each", "from",
    "have", "into", "just", "many", "more", "most", "much", "must", "only", "other", "over", "same",
    "should", "some", "such", "than", "that", "their", "them", "then", "there", "these", "they",
    "this", "those", "very", "were", "what", "when", "where", "which", "while", "will", "with",
    "would", "your",
}
# three-letter English function words: what a number is about is often a three-letter word
# ("gym", "SGD", "new staff"), so those count, these do not
_SHORT = {"the", "and", "for", "are", "was", "per", "who", "how", "its", "not", "but", "you", "can",
          "any", "all", "did", "has", "had", "her", "his", "our", "out", "get", "got", "one", "yes"}
NEAR = 5  # words either side of a number that say what it is about


def content_terms(text: str) -> set[str]:
    """Terms that can show a sentence came from a source: numbers, longer words, non-Latin terms."""
    return {t for t in tokenise(text) if t.isdigit() or len(t) >= 4 or not t.isascii()} - _NOT_EVIDENCE


def _words(text: str) -> set[str]:
    """Words that say what a sentence is about: no numbers, no function words."""
    return {t for t in tokenise(text) if not t.isdigit() and (len(t) >= 3 or not t.isascii())} - _NOT_EVIDENCE - _SHORT


def numbers(text: str) -> set[str]:
    """The numbers in `text`, with their separators dropped: "1,000" and "1000" are one number."""
    return {regex.sub(r"[.,]", "", n) for n in _NUMBER.findall(text)}


def _near(text: str, match) -> set[str]:
    """The words within NEAR words either side of the number `match` in `text`."""
    before, after = tokenise(text[: match.start()]), tokenise(text[match.end() :])
    return _words(" ".join(before[-NEAR:] + after[:NEAR]))


def _source_sentences(citations: list[Citation]) -> list[tuple[set[str], set[str]]]:
    """(numbers, words) of each sentence of each source; a source's section heading is part of
    each of its sentences ("## Leave" says what "18 days" are)."""
    out = []
    for c in citations:
        heading = _words(c.section)
        for match in _SENTENCE.finditer(c.text):
            if match.group().strip():
                out.append((numbers(match.group()), _words(match.group()) | heading))
    return out


def supported(body: str, citations: list[Citation], question: str = "", sentences=None) -> bool:
    """Whether every number in the model's sentence `body` is in the question or tied to its words
    in a source. A number is tied when a source sentence holds it and that sentence shares the
    most words with what the number is said about (the words within NEAR words of it in `body`,
    with the question's: the sentence answers it) of all the sources' sentences, a tie counting.
    So "The gym allowance is 10,000 SGD per month" is not supported by "a relocation budget of
    10,000 SGD" when "The gym allowance is SGD 60 per month" is there too, and "The answer is: 2"
    to "How many days of leave do new staff get?" not by the sick-leave line's "2 days"."""
    asked = numbers(question)
    sentences = _source_sentences(citations) if sentences is None else sentences
    for match in _NUMBER.finditer(body):
        number = regex.sub(r"[.,]", "", match.group())
        if number in asked:
            continue
        about = _near(body, match) | _words(question)
        shared = [len(about & words) for _, words in sentences]
        best = max(shared, default=0)
        if not best or not any(number in nums and n == best for (nums, _), n in zip(sentences, shared)):
            return False
    return True


def attribute(text: str, citations: list[Citation], question: str = "") -> str:
    """`text` with its [n] markers checked against the sources (see `check_sentences`)."""
    checked = check_sentences(text, citations, question)[0]
    # withheld first sentences leave the space that followed them
    return checked if text[:1].isspace() else checked.lstrip()


def check_sentences(text: str, citations: list[Citation], question: str = "", final: bool = True) -> tuple[str, list[str]]:
    """`text` with its [n] markers checked against the sources, and the sentences withheld.

    A marker stays only if source n shares at least half as many content terms with its
    sentence as the source sharing the most; a sentence left without one gets that source. No
    source is cited for a sentence that shares no term with any, or whose numbers are not all in
    it. A sentence with a number not tied to its words in a source (`supported`) is withheld:
    small models change the numbers they copy ("18 days" became "The answer is: 3") or take one
    from another line ("The gym allowance is 10,000 SGD", the relocation budget's), and a wrong
    number next to a citation-checked answer reads as if the documents said it. A list's "1." is
    not a number. When `text` is the end of the answer (`final`), a last sentence that leads in to
    nothing ("The answer to this question is:") is dropped: the model stopped before saying it."""
    if not citations:
        return text, []
    vocab = {c.number: content_terms(c.text + " " + c.section) for c in citations}
    figures = {c.number: numbers(c.text + " " + c.section) for c in citations}
    sentences = _source_sentences(citations)
    asked = numbers(question)
    out, withheld, at = [], [], 0
    for match in _SENTENCE.finditer(text):
        sentence = match.group()
        if _ENUMERATOR.fullmatch(sentence):
            out.append(text[at : match.end()])  # as it is, unless its item is withheld
            at = match.end()
            continue
        body = regex.sub(r"\s*\[\d+\]", "", sentence).rstrip()
        if final and body.endswith(":") and not text[match.end():].strip():
            out.append(text[at : match.start()].rstrip())
            at = len(text)
            continue
        found = numbers(body)
        if not supported(body, citations, question, sentences):
            withheld.append(body.strip())
            if out and _ENUMERATOR.fullmatch(out[-1]):
                out.pop()
            else:
                out.append(text[at : match.start()])
            at = match.end()
            continue
        terms = content_terms(body)
        cited = [int(n) for n in _CITE.findall(sentence)]
        shared = {n: len(terms & vocab[n]) for n in vocab}
        most = max(shared.values())
        keep = [n for n in dict.fromkeys(cited) if n in vocab and (not terms or shared[n] and 2 * shared[n] >= most)]
        if not keep and most:
            keep = [max(vocab, key=shared.__getitem__)]
        keep = [n for n in keep if found - asked <= figures[n]]
        if not body.strip():
            keep = []
        trailing = sentence[len(sentence.rstrip()):]
        out.append(text[at : match.start()] + body + "".join(f" [{n}]" for n in keep) + trailing)
        at = match.end()
    return "".join(out) + text[at:], withheld


class AttributedStream:
    """The model's text as it streams, passed on one finished sentence at a time with its [n]
    markers already checked (`attribute`), so what a streaming reader sees is exactly the
    Answer's text. A sentence is finished once text that cannot be one of its markers follows.
    Given the question's script, text in another one ends the stream (`off_script`)."""

    _AFTER = regex.compile(r"[^\s\[\]\d]")  # a character no trailing " [12]" marker has
    # letters of another script than the question's that stop a reply, when they are also most
    # of its letters: a few words, not a name quoted from a source in its own script
    OFF_SCRIPT_LETTERS = 12

    def __init__(self, citations: list[Citation], question: str = "", script: str | None = None):
        self.citations = citations
        self.question = question
        self.script = script
        self._pending = ""  # raw text not yet passed on
        self._sent: list[str] = []
        self._seen: set[str] = set()
        self.repeating = False  # a finished sentence repeated an earlier one (and was dropped)
        self.off_script = ""  # the script the reply went on in, when not the question's (and was dropped)
        self.withheld: list[str] = []  # sentences with a number not tied to a source

    @property
    def text(self) -> str:
        return "".join(self._sent)

    @property
    def stopped(self) -> bool:
        return self.repeating or bool(self.off_script)

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self._pending += piece
        if not self._sent:
            self._pending = self._pending.lstrip()
        cut = 0
        for match in _SENTENCE.finditer(self._pending):
            if not (match.end() < len(self._pending) and self._AFTER.search(self._pending, match.end())):
                break
            if not _ENUMERATOR.fullmatch(match.group()):  # a list's "3." waits for its item: both may go
                cut = match.end()
        out = self._emit(self._pending[:cut], self._pending[cut:])
        if not self.stopped and self._foreign(self._pending, self.OFF_SCRIPT_LETTERS):
            self._pending = ""  # a sentence in another script is not waited for: Thai has no full stops
        return out

    def finish(self) -> str:
        return "" if self.stopped else self._emit(self._pending.rstrip(), "", final=True)

    def _foreign(self, text: str, least: int = 1) -> bool:
        """Whether most of `text`'s letters, and at least `least`, are in another script than the
        question's (then noted in off_script)."""
        if self.script is None:
            return False
        other, same = foreign_letters(text, self.script)
        if other >= least and other > same:
            from kecil.rag.scripts import main_script

            self.off_script = main_script(text, 1) or "other"
        return bool(self.off_script)

    def _emit(self, done: str, rest: str, final: bool = False) -> str:
        self._pending = rest
        if not done:
            return ""
        kept = []
        for match in _SENTENCE.finditer(done):
            if _ENUMERATOR.fullmatch(match.group()):
                continue
            if self._foreign(match.group(), 4):
                break
            key = " ".join(tokenise(_CITE.sub("", match.group())))
            if key and key in self._seen:
                self.repeating = True
                break
            self._seen.add(key)
            kept.append(match)
        if self.stopped:
            self._pending = ""  # what follows a repeat or a change of script is dropped with it
            done = done[: kept[-1].end()] if kept else ""
            if not done.strip():
                return ""
        out, withheld = check_sentences(done, self.citations, self.question, final)
        self.withheld += withheld
        if not self.text:  # a first sentence dropped whole (a bare marker) leaves its space behind
            out = out.lstrip()
        self._sent.append(out)
        return out
