"""Document loaders: each file type becomes a list of text blocks that remember where they came from.

A block is a paragraph, heading, list item, table row or JSON item with its source position
(page for PDF; lines for text formats; paragraph numbers for .docx; item numbers for .json),
and the headings it sits under. Chunking (chunking.py) groups blocks; it never re-reads files.
A file that cannot be read raises UnreadableFile with the reason, so ingest can skip and report it.
Containers are opened with bounds (ExpandLimits): a small .docx whose XML inflates to gigabytes
(a zip bomb) is refused from its zip directory, from the bytes it really inflates to and from the
number of XML elements it holds, before python-docx builds a tree of it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from kecil.rag.html_text import html_blocks


@dataclass(frozen=True)
class Block:
    text: str
    start: int  # first line (or paragraph/item) of the block, 1-based; see `unit`
    end: int  # last one, inclusive
    page: int | None = None  # PDF page, 1-based
    section: str = ""  # enclosing headings, outermost first, joined by " > "
    heading: bool = False  # this block is itself a heading


class UnreadableFile(Exception):
    """The file is not something kecil can take text from; str() says why, for the report."""


@dataclass(frozen=True)
class ExpandLimits:
    """How far a loader may expand a compressed container (.docx) before it refuses the file.

    lxml keeps about 150 bytes per element, so a million elements is ~150 MB of tree; a 300-page
    report has a few hundred thousand. Media (images) count towards `total_bytes` only."""

    total_bytes: int = 256 * 2**20  # all members, inflated
    xml_bytes: int = 64 * 2**20  # the XML members, inflated
    elements: int = 1_000_000  # XML start tags across the XML members
    members: int = 10_000


LIMITS = ExpandLimits()


# suffix -> (loader, what `start`/`end` count). Loaders take the raw bytes and the path.
def unit_of(path: str | Path) -> str:
    return _LOADERS.get(Path(path).suffix.lower(), (None, "lines"))[1]


def supported_suffixes() -> list[str]:
    return sorted(_LOADERS)


def load(path: Path, data: bytes) -> list[Block]:
    """The text blocks of the file at `path`, whose bytes are `data`."""
    loader = _LOADERS[path.suffix.lower()][0]
    if not data.strip():
        raise UnreadableFile("empty file")
    blocks = [b for b in map(_encodable, loader(data)) if b.text.strip()]  # a block of NULs alone is no text
    if not blocks:
        raise UnreadableFile("no text found in it")
    return blocks


def _encodable(block: Block) -> Block:
    """`block` with text every store can hold. A lone surrogate (JSON's "\\ud800", a broken PDF
    text layer) cannot be stored as UTF-8: it becomes U+FFFD, so one bad character does not cost
    the file. A NUL character (JSON's "\\u0000", a PDF's padding) means nothing in text and
    PostgreSQL's text type refuses it: it is dropped, for every store alike, so a file is kept the
    same way wherever it goes."""
    text, section = _storable(block.text), _storable(block.section)
    return block if (text, section) == (block.text, block.section) else replace(block, text=text, section=section)


def _storable(text: str) -> str:
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_text(data: bytes) -> str:
    """UTF-8 text (a BOM is allowed; UTF-16 with a BOM too); binary or other encodings are refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise UnreadableFile("broken UTF-16 text") from None
    if b"\x00" in data[:8192]:
        raise UnreadableFile("binary file (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"not UTF-8 text (bad byte at offset {exc.start}): convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


# --- plain text and Markdown -----------------------------------------------------------------
_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _paragraphs(lines: list[str], first_line: int = 1, page: int | None = None) -> list[Block]:
    """Blank-line separated paragraphs of plain text."""
    blocks: list[Block] = []
    start = None
    for number, line in enumerate(lines + [""], start=first_line):
        if line.strip():
            if start is None:
                start = number
        elif start is not None:
            text = "\n".join(lines[start - first_line : number - first_line])
            blocks.append(Block(text, start, number - 1, page=page))
            start = None
    return blocks


def load_text(data: bytes) -> list[Block]:
    return _paragraphs(decode_text(data).splitlines())


def load_markdown(data: bytes) -> list[Block]:
    lines = decode_text(data).splitlines()
    blocks: list[Block] = []
    headings: list[tuple[int, str]] = []  # (level, title) from the outermost in
    para: list[tuple[int, str]] = []
    fence: str | None = None

    def flush() -> None:
        if para:
            section = " > ".join(t for _, t in headings)
            blocks.append(Block("\n".join(t for _, t in para), para[0][0], para[-1][0], section=section))
            para.clear()

    for number, line in enumerate(lines, start=1):
        if fence is not None:  # inside a code block: keep everything, blank lines too
            para.append((number, line))
            if line.strip().startswith(fence):
                fence = None
                flush()
            continue
        opened = _FENCE.match(line)
        if opened:
            flush()
            fence = opened.group(1)
            para.append((number, line))
            continue
        atx = _ATX.match(line)
        setext = para and len(para) == 1 and re.fullmatch(r" {0,3}(=+|-+)\s*", line)
        if atx or setext:
            if setext:
                level, title, start = (1 if line.strip()[0] == "=" else 2), para[0][1].strip(), para[0][0]
                para.clear()
            else:
                flush()
                level, title, start = len(atx.group(1)), atx.group(2), number
            while headings and headings[-1][0] >= level:
                headings.pop()
            headings.append((level, title))
            blocks.append(Block(title, start, number, section=" > ".join(t for _, t in headings), heading=True))
        elif line.strip():
            para.append((number, line))
        else:
            flush()
    flush()
    return blocks


# --- HTML ----------------------------------------------------------------------------------
def load_html(data: bytes) -> list[Block]:
    return [Block(text, start, end, section=section, heading=heading)
            for text, start, end, section, heading in html_blocks(decode_text(data))]


# --- PDF, Word -----------------------------------------------------------------------------
def load_pdf(data: bytes) -> list[Block]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # a broken PDF is reported once, by ingest
    blocks: list[Block] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFile("encrypted PDF: save a copy without a password")
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            blocks.extend(_paragraphs(text.splitlines(), page=number))
    except UnreadableFile:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as exc:
        raise UnreadableFile(f"not a readable PDF ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not blocks:
        raise UnreadableFile("PDF without a text layer (a scan?): run OCR on it first")
    return blocks


def check_zip(data: bytes, limits: ExpandLimits = LIMITS) -> None:
    """Refuse a zip that would expand past `limits`: first by what its directory claims, then by
    inflating every member in pieces (the directory can lie) and counting XML start tags."""
    import zipfile

    mib = 2**20
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > limits.members:
                raise UnreadableFile(f"zip holds {len(members)} members, over the limit of {limits.members} (a zip bomb?)")
            claimed = sum(m.file_size for m in members)
            if claimed > limits.total_bytes:
                raise UnreadableFile(f"expands to {claimed / mib:.0f} MB, over the limit of {limits.total_bytes / mib:.0f} MB (a zip bomb?)")
            total = xml = tags = 0
            for member in members:
                is_xml = member.filename.lower().endswith((".xml", ".rels"))
                with archive.open(member) as stream:
                    while piece := stream.read(mib):
                        total += len(piece)
                        if total > limits.total_bytes:
                            raise UnreadableFile(f"expands past {limits.total_bytes / mib:.0f} MB (a zip bomb?)")
                        if is_xml:
                            xml += len(piece)
                            if xml > limits.xml_bytes:
                                raise UnreadableFile(f"its XML expands past {limits.xml_bytes / mib:.0f} MB (a zip bomb?)")
                            tags += piece.count(b"<") - piece.count(b"</")  # a tag cut between pieces: off by one per MB
                            if tags > limits.elements:
                                raise UnreadableFile(f"its XML holds over {limits.elements:,} elements, over the limit (a zip bomb?)")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError) as exc:
        raise UnreadableFile(f"not a readable .docx file ({type(exc).__name__}: {str(exc)[:80]})") from None


def load_docx(data: bytes) -> list[Block]:
    import docx

    check_zip(data)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx lets zipfile, lxml and its own errors through, of many kinds
        raise UnreadableFile(f"not a readable .docx file ({type(exc).__name__}: {str(exc)[:80]})") from None
    blocks: list[Block] = []
    headings: list[tuple[int, str]] = []
    for number, paragraph in enumerate(document.paragraphs, start=1):
        text = paragraph.text.strip()
        style = paragraph.style.name if paragraph.style is not None else ""
        level = re.fullmatch(r"Heading (\d)", style or "")
        if level or style == "Title":
            depth = int(level.group(1)) if level else 0
            while headings and headings[-1][0] >= depth:
                headings.pop()
            headings.append((depth, text))
        blocks.append(Block(text, number, number, section=" > ".join(t for _, t in headings), heading=bool(level or style == "Title")))
    after = len(document.paragraphs)
    for table in document.tables:  # tables come after the body text, one block per row
        for row in table.rows:
            after += 1
            cells = [c.text.strip() for c in row.cells]
            blocks.append(Block(" | ".join(dict.fromkeys(c for c in cells if c)), after, after))
    return blocks


# --- CSV and JSON --------------------------------------------------------------------------
def load_csv(data: bytes) -> list[Block]:
    text = decode_text(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = next(reader, None)
        blocks: list[Block] = []
        start = reader.line_num + 1
        for row in reader:
            # "column: value" keeps each value next to its meaning, for BM25 and for the model
            pairs = [f"{h.strip()}: {v.strip()}" if h.strip() else v.strip() for h, v in zip(header, row) if v.strip()]
            blocks.append(Block("; ".join(pairs), start, reader.line_num))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UnreadableFile(f"malformed CSV ({exc})") from None
    return blocks


JSON_DEPTH = 64  # deeper than this, the rest of an item is kept as one line of JSON


def _flatten(value, prefix: str = "", depth: int = 0) -> list[str]:
    if depth >= JSON_DEPTH and isinstance(value, (dict, list)):
        value = _compact(value)
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in _flatten(v, f"{prefix}{k}.", depth + 1)]
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return [line for i, v in enumerate(value) for line in _flatten(v, f"{prefix}{i}.", depth + 1)]
    shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return [f"{prefix[:-1]}: {shown}" if prefix else shown]


def _compact(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        raise UnreadableFile(f"JSON nested too deeply (over {JSON_DEPTH} levels are kept as text, but not this many)") from None


def load_json(data: bytes) -> list[Block]:
    text = decode_text(data)
    try:
        value = json.loads(text)
    except RecursionError:
        raise UnreadableFile("JSON nested too deeply for Python's parser") from None
    except json.JSONDecodeError:
        try:  # JSON Lines: one document per line
            value = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise UnreadableFile(f"not valid JSON or JSON Lines ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            raise UnreadableFile("JSON nested too deeply for Python's parser") from None
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else [("", value)]
    blocks = []
    for number, (key, item) in enumerate(items, start=1):
        lines = _flatten(item, f"{key}." if isinstance(key, str) and key else "")
        blocks.append(Block("\n".join(lines), number, number))
    return blocks


_LOADERS: dict[str, tuple[Callable[[bytes], list[Block]], str]] = {
    ".txt": (load_text, "lines"),
    ".text": (load_text, "lines"),
    ".md": (load_markdown, "lines"),
    ".markdown": (load_markdown, "lines"),
    ".html": (load_html, "lines"),
    ".htm": (load_html, "lines"),
    ".pdf": (load_pdf, "lines"),
    ".docx": (load_docx, "paragraphs"),
    ".csv": (load_csv, "lines"),
    ".json": (load_json, "items"),
    ".jsonl": (load_json, "items"),
}
