"""`kecil redact` as a user runs it: standard input, a file, --json, --names, and clean errors."""

from __future__ import annotations

import json

from tests.cli_helpers import assert_clean_error, kecil


def test_stdin_is_printed_redacted():
    done = kecil("redact", stdin="My NRIC is S1234567D\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "My NRIC is <NRIC_1>\n"


def test_json_spans_and_a_names_file(tmp_path):
    (tmp_path / "names.txt").write_text("# my family\n王伟\n", encoding="utf-8")
    message = tmp_path / "message.txt"
    message.write_text("王伟的电话是+86 138 1234 5678，邮箱wang.wei@example.cn", encoding="utf-8")
    # --no-spacy: the name comes from the list, and the test spares loading spaCy a second time
    done = kecil("redact", str(message), "--json", "--names", str(tmp_path / "names.txt"), "--no-spacy")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["text"] == "<PERSON_1>的电话是<PHONE_1>，邮箱<EMAIL_1>"
    assert [(s["kind"], s["original"]) for s in out["spans"]] == [
        ("PERSON", "王伟"), ("PHONE", "+86 138 1234 5678"), ("EMAIL", "wang.wei@example.cn")]
    assert out["counts"] == {"PERSON": 1, "PHONE": 1, "EMAIL": 1}


def test_bad_input_gets_one_clean_line(tmp_path):
    assert_clean_error(kecil("redact", str(tmp_path / "missing.txt")), "does not exist")
    assert_clean_error(kecil("redact", "--kind", "PASSPORT"), "unknown kind", "NRIC")
