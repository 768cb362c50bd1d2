"""Real documents of every supported type, written from scratch for the RAG tests."""

from __future__ import annotations

import json
from pathlib import Path


def pdf_bytes(pages: list[list[str]]) -> bytes:
    """A valid PDF with a text layer: one page per list, one line of Helvetica per string."""
    objects: list[bytes] = []
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % i for i in page_ids) + b"] /Count %d >>" % len(pages))
    for page_id, lines in zip(page_ids, pages):
        ops = [b"BT /F1 12 Tf 14 TL 72 720 Td"]
        for line in lines:
            text = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(b"(" + text.encode("latin-1") + b") Tj T*")
        ops.append(b"ET")
        stream = b"\n".join(ops)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font_id, page_id + 1))
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def docx_file(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("Travel policy", level=1)
    document.add_paragraph("Employees book flights through the travel desk.")
    document.add_heading("Hotels", level=2)
    document.add_paragraph("The nightly hotel limit in Jakarta is 1.2 million rupiah.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "City", "Per diem"
    table.cell(1, 0).text, table.cell(1, 1).text = "Surabaya", "450,000 rupiah"
    document.save(path)
    return path


def write_mixed_folder(folder: Path) -> dict[str, str]:
    """One file of each type; returns {file name: a phrase only that file holds}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("Backups run every night at two.\n\nThe backup server is called ferret.\n")
    (folder / "guide.md").write_text("# Guide\n\nIntro.\n\n## Printers\n\nThe third-floor printer is named Kestrel.\n")
    (folder / "page.html").write_text(
        "<html><head><title>x</title><style>p{}</style></head><body>\n<h1>Canteen</h1>\n"
        "<p>The canteen serves rendang on Fridays.</p>\n<script>var hidden = 'nope';</script></body></html>\n"
    )
    (folder / "manual.pdf").write_bytes(pdf_bytes([["Safety manual"], ["Fire exits are on the east side.", "Assemble in car park B."]]))
    docx_file(folder / "policy.docx")
    (folder / "staff.csv").write_text("name,room\nAyu,12B\nBudi,7C\n")
    (folder / "faq.json").write_text(json.dumps([{"q": "wifi password", "a": "ask the front desk"}, {"q": "parking", "a": "level minus two"}]))
    return {
        "notes.txt": "ferret", "guide.md": "Kestrel", "page.html": "rendang", "manual.pdf": "car park B",
        "policy.docx": "1.2 million rupiah", "staff.csv": "7C", "faq.json": "level minus two",
    }


def write_bad_folder(folder: Path, big_mb: int = 200) -> dict[str, str]:
    """Files ingest must skip, each with a word its reason must contain; plus one good file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "good.md").write_text("# Good\n\nThe good file mentions the zebra crossing.\n")
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\ngarbage garbage\n")
    (folder / "truncated.pdf").write_bytes(pdf_bytes([["cut short"]])[:120])
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (folder / "empty.md").write_bytes(b"")
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (folder / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    with open(folder / "huge.txt", "wb") as handle:  # sparse: 200 MB on paper, no disk used
        handle.truncate(big_mb * 1024 * 1024)
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # another type: left out, not an error
    return {
        "corrupt.pdf": "pdf", "truncated.pdf": "pdf", "binary.txt": "binary", "empty.md": "empty",
        "latin1.txt": "utf-8", "broken.docx": "docx", "huge.txt": "limit",
    }


def broken_xml_docx(path: Path) -> Path:
    """A .docx whose zip is sound but whose main XML part is not well-formed."""
    import zipfile

    good = docx_file(path.with_name(path.stem + "-source.docx"))
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            data = source.read(member)
            target.writestr(member, data[: len(data) // 2] if member.filename == "word/document.xml" else data)
    good.unlink()
    return path


def docx_bomb(path: Path, xml_mb: int = 100, claim_bytes: int | None = None) -> Path:
    """A small .docx whose word/document.xml inflates to `xml_mb` MB of empty paragraphs; with
    `claim_bytes`, its zip directory says the part is that small (a directory that lies)."""
    import struct
    import zlib
    import zipfile

    head = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
    tail = b"</w:body></w:document>"
    piece = b"<w:p/>" * (2**20 // 6)
    compressor, crc, size = zlib.compressobj(9, zlib.DEFLATED, -15), zlib.crc32(head), len(head)
    parts = [compressor.compress(head)]
    for _ in range(xml_mb):
        parts.append(compressor.compress(piece))
        crc, size = zlib.crc32(piece, crc), size + len(piece)
    parts += [compressor.compress(tail), compressor.flush()]
    crc, size = zlib.crc32(tail, crc), size + len(tail)
    deflated = b"".join(parts)
    docx_file(path)  # every other part of a real document
    with zipfile.ZipFile(path) as source:
        others = [(m, source.read(m)) for m in source.infolist() if m.filename != "word/document.xml"]
    shown = size if claim_bytes is None else claim_bytes
    with open(path, "wb") as out:  # written by hand: zipfile would compress 100 MB itself, slowly
        central, name = [], b"word/document.xml"
        entries = [(name, deflated, crc, shown, 8)] + [(m.filename.encode(), zlib.compress(d)[2:-4], zlib.crc32(d), len(d), 8) for m, d in others]
        for entry_name, body, entry_crc, entry_size, method in entries:
            offset = out.tell()
            fields = (20, 0, method, 0, 0, entry_crc, len(body), entry_size, len(entry_name), 0)
            out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + entry_name + body)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, offset) + entry_name)
        start = out.tell()
        out.write(b"".join(central))
        out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), out.tell() - start, start, 0))
    return path
