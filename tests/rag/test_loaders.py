"""Every supported file type read into blocks with their positions, and chunked along headings."""

from __future__ import annotations

from pathlib import Path

import pytest

from kecil.rag.chunking import ChunkConfig, approx_tokens, chunk_blocks, sentence_windows
from kecil.rag.loaders import UnreadableFile, load, unit_of
from tests.rag.documents import broken_xml_docx, docx_bomb, write_bad_folder, write_mixed_folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    return folder, write_mixed_folder(folder)


def blocks_of(path: Path):
    return load(path, path.read_bytes())


def test_every_type_yields_its_text(mixed):
    folder, phrases = mixed
    for name, phrase in phrases.items():
        text = "\n".join(b.text for b in blocks_of(folder / name))
        assert phrase in text, name


def test_positions_and_sections(mixed):
    folder, _ = mixed
    md = [b for b in blocks_of(folder / "guide.md") if "Kestrel" in b.text][0]
    assert (md.start, md.end, md.section) == (7, 7, "Guide > Printers")
    pdf = [b for b in blocks_of(folder / "manual.pdf") if "car park B" in b.text][0]
    assert pdf.page == 2
    html = [b for b in blocks_of(folder / "page.html") if "rendang" in b.text][0]
    assert html.start == 3 and html.section == "Canteen"
    assert "hidden" not in " ".join(b.text for b in blocks_of(folder / "page.html"))  # scripts are not text
    docx = [b for b in blocks_of(folder / "policy.docx") if "rupiah" in b.text][0]
    assert docx.section == "Travel policy > Hotels" and unit_of("policy.docx") == "paragraphs"
    csv_row = [b for b in blocks_of(folder / "staff.csv") if "7C" in b.text][0]
    assert csv_row.text == "name: Budi; room: 7C" and csv_row.start == 3


def test_bad_files_raise_with_a_reason(tmp_path):
    reasons = write_bad_folder(tmp_path, big_mb=1)
    for name, word in reasons.items():
        if name == "huge.txt":
            continue  # the size limit is ingest's business (tested there)
        with pytest.raises(UnreadableFile, match=f"(?i){word}"):
            blocks_of(tmp_path / name)


def test_chunks_follow_headings_keep_lines_and_overlap():
    para = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(40))
    text = f"# Title\n\nShort intro.\n\n## Part A\n\n{para}\n\n## Part B\n\nThe end.\n"
    chunks = chunk_blocks(load(Path("x.md"), text.encode()), ChunkConfig(max_tokens=80, overlap_tokens=20))
    assert [c.section for c in chunks][0] == "Title" and chunks[-1].section == "Title > Part B"
    part_a = [c for c in chunks if c.section == "Title > Part A"]
    assert len(part_a) > 2 and all(approx_tokens(c.text) <= 80 for c in part_a)
    assert all(c.start == c.end == 7 for c in part_a)  # one long line: every piece is on line 7
    for before, after in zip(part_a, part_a[1:]):  # the last sentences of a chunk open the next
        first_of_after = after.text.split(". ")[0] + "."
        last_of_before = before.text.rsplit(". ", 1)[-1]
        assert first_of_after in before.text and last_of_before in after.text
    assert "Sentence number 39" in part_a[-1].text
    assert not any("Part B" in c.text or "The end" in c.text for c in part_a)  # no chunk spans two sections


def test_cjk_text_without_sentence_ends_is_cut_to_size():
    text = "中" * 1000
    chunks = chunk_blocks(load(Path("x.txt"), text.encode()), ChunkConfig(max_tokens=100, overlap_tokens=0))
    assert "".join(c.text for c in chunks) == text and max(len(c.text) for c in chunks) <= 100


def test_sentence_windows_cover_each_sentence_once_in_even_runs():
    sentences = [f"Sentence {i} is here." for i in range(11)]
    windows = sentence_windows(" ".join(sentences), 3)
    assert [w.count("Sentence") for w in windows] == [3, 3, 2, 3]  # 11 sentences: four runs, as even as can be
    assert " ".join(windows) == " ".join(sentences)  # in order, none left out or repeated
    assert [w.count("Sentence") for w in sentence_windows(" ".join(sentences[:7]), 2)] == [2, 3, 2]
    short = "One. Two. Three."  # 1.5 runs or fewer: the text is its own window, unchanged
    assert sentence_windows(short, 2) == [short] and sentence_windows(short, 0) == [short]
    # a paragraph break ends a sentence too (list items carry no full stop); CJK ends without spaces
    assert sentence_windows("- milk\n\n- eggs\n\n- flour\n\n- sugar", 2) == ["- milk - eggs", "- flour - sugar"]
    assert sentence_windows("一。二。三。四。", 2) == ["一。 二。", "三。 四。"]


def test_deep_json_is_kept_as_text_and_too_deep_json_is_refused():
    deep = ("[" * 600 + '"the otter sleeps deep"' + "]" * 600).encode()
    assert "the otter sleeps deep" in "\n".join(b.text for b in load(Path("deep.json"), deep))
    nested = ('{"a": ' * 600 + '"the stoat"' + "}" * 600).encode()
    assert "the stoat" in "\n".join(b.text for b in load(Path("nested.json"), nested))
    with pytest.raises(UnreadableFile, match="nested too deeply"):
        load(Path("deeper.json"), ("[" * 100_000 + "]" * 100_000).encode())


def test_a_lone_surrogate_in_json_becomes_a_replacement_character():
    blocks = load(Path("s.json"), b'{"note": "lone \\ud800 beside the walrus"}')
    assert blocks[0].text == "note: lone \ufffd beside the walrus"


def test_a_docx_with_broken_xml_is_unreadable_not_an_error(tmp_path):
    path = broken_xml_docx(tmp_path / "broken-xml.docx")
    with pytest.raises(UnreadableFile, match="not a readable .docx"):
        blocks_of(path)


BOMB_CHECK = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # keeps a failing run from taking the machine
from kecil.rag.loaders import UnreadableFile, load
for name in sys.argv[1:]:
    try:
        load(Path(name), Path(name).read_bytes())
        print("loaded")
    except UnreadableFile as exc:
        print(exc)
# VmHWM: this process's own peak (ru_maxrss carries the parent's over fork and exec)
print([int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def test_a_zip_bomb_docx_is_refused_with_its_reason_and_memory_stays_low(tmp_path):
    import subprocess
    import sys

    honest = docx_bomb(tmp_path / "honest.docx", xml_mb=300)  # the directory says 300 MB
    liar = docx_bomb(tmp_path / "liar.docx", xml_mb=300, claim_bytes=4096)  # ... says 4 KB
    many = docx_bomb(tmp_path / "many.docx", xml_mb=20)  # 20 MB: under the byte bounds, 3.5 million elements
    assert max(p.stat().st_size for p in (honest, liar, many)) < 1_000_000
    run = subprocess.run([sys.executable, "-c", BOMB_CHECK, str(honest), str(liar), str(many)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    *reasons, peak_mb = run.stdout.strip().splitlines()
    assert "expands to 301 MB, over the limit of 256 MB" in reasons[0] and "zip bomb" in reasons[0]
    assert "not a readable .docx" in reasons[1]  # inflating past what the directory says breaks the CRC
    assert "elements" in reasons[2] and "zip bomb" in reasons[2]
    assert int(peak_mb) < 250, f"peak RSS {peak_mb} MB"
