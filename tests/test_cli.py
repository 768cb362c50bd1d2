"""The `kecil` command end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def kecil(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kecil", *args], input=stdin, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "KECIL_DEBUG": ""},
    )


def assert_clean_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kecil: error:"), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def test_help_does_not_import_heavy_libraries():
    code = "import sys; sys.argv=['kecil','--help']\nfrom kecil.cli import main\ntry: main()\nexcept SystemExit: pass\n" \
           "heavy=[m for m in ('torch','transformers','llama_cpp','numpy') if m in sys.modules]\nprint('HEAVY', heavy)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "generate" in done.stdout and "HEAVY []" in done.stdout, done.stdout + done.stderr


def test_generate_says_paris():
    done = kecil("generate", "What is the capital of France?", "--temperature", "0", "--max-tokens", "32")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "tok/s" in done.stderr  # the speed line goes to stderr, not into the answer


def test_generate_with_explicit_model_backend_and_stop():
    done = kecil("generate", "smollm2-135m", "Count from 1 to 10, separated by commas.", "--temperature", "0", "--max-tokens", "40", "--stop", "6", "--backend", "torch")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1, 2, 3, 4, 5,"
    assert "[torch]" in done.stderr and "finish: stop" in done.stderr


def test_generate_raw_skips_the_chat_template():
    # An instruct model given a bare question as plain text ends it at once; through its
    # template it answers. --raw must really send the text untemplated.
    templated = kecil("generate", "What is the capital of France?", "--temperature", "0", "--max-tokens", "16")
    raw = kecil("generate", "What is the capital of France?", "--temperature", "0", "--max-tokens", "16", "--raw")
    assert raw.returncode == 0 and templated.returncode == 0
    assert raw.stdout != templated.stdout
    prompt_tokens = [int(d.stderr.split(" prompt tokens")[0].rsplit("] ", 1)[1]) for d in (raw, templated)]
    assert prompt_tokens[0] < prompt_tokens[1]


def test_generate_reads_prompt_from_stdin():
    done = kecil("generate", "-", "--temperature", "0", "--max-tokens", "16", stdin="What is the capital of France?")
    assert done.returncode == 0 and "Paris" in done.stdout


def test_chat_keeps_history_resets_and_exits():
    script = "My name is Ayu.\nWhat is my name?\n/reset\nWhat is the capital of France?\n/exit\nnever sent\n"
    done = kecil("chat", "--temperature", "0", "--max-tokens", "32", stdin=script)
    assert done.returncode == 0, done.stderr
    assert "Ayu" in done.stdout
    assert "Paris" in done.stdout
    assert "[history cleared]" in done.stderr


def test_chat_tells_when_old_turns_are_dropped():
    script = "".join(f"Tell me a fact about the number {i}.\n" for i in range(6))
    done = kecil("chat", "--temperature", "0", "--max-tokens", "24", "--context", "160", stdin=script)
    assert done.returncode == 0, done.stderr
    assert "[notice] dropped" in done.stderr


def test_models_lists_builtins():
    done = kecil("models", "--json")
    assert done.returncode == 0, done.stderr
    assert '"name": "smollm2-135m", "installed": true' in done.stdout
    assert "gemma3-270m" in done.stdout


def test_info_of_the_default_model():
    done = kecil("info", "--context", "8192")
    assert done.returncode == 0, done.stderr
    for word in ("llama", "Q4_1", "8192", "134.5M"):
        assert word in done.stdout, (word, done.stdout)


def test_demo_answers_three_questions_with_speed():
    done = kecil("demo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(">>> ") == 3
    assert done.stdout.count("tok/s decode") == 3
    assert "Paris" in done.stdout


# --- every model-reference error is one line, exit code != 0, no traceback --------------------
def test_hub_id_is_refused_with_a_next_step():
    assert_clean_error(kecil("info", "HuggingFaceTB/SmolLM2-135M-Instruct"), "offline", "download")


def test_missing_path(tmp_path):
    assert_clean_error(kecil("generate", str(tmp_path / "nope.gguf"), "hi"), "no such")


def test_unknown_name():
    assert_clean_error(kecil("info", "llama-9000"), "smollm2-135m")


def test_text_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("these are my notes, not a model\n")
    assert_clean_error(kecil("info", str(path)), "not a GGUF")


def test_truncated_gguf(tmp_path):
    from kecil.models.builtins import builtin_path

    source = builtin_path("smollm2-135m")
    path = tmp_path / "cut.gguf"
    with source.open("rb") as f:
        path.write_bytes(f.read(3_000_000))
    assert_clean_error(kecil("generate", str(path), "hi"), "truncated")


def test_unsupported_architecture(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "bert.gguf"
    writer = GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_clean_error(kecil("info", str(path)), "bert", "supported")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    assert_clean_error(kecil("info", str(tmp_path)), "config.json")


def test_bad_flag_value_is_a_clean_error():
    assert_clean_error(kecil("generate", "hi", "--top-p", "2"), "top_p")


def test_base_model_generates_plain_text_and_refuses_chat():
    done = kecil("generate", "gemma3-270m", "The capital of France is", "--temperature", "0", "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    # llama.cpp's own log lines (Gemma 3's cache notes) stay out of the user's terminal
    assert done.stderr.strip().splitlines() == [line for line in done.stderr.strip().splitlines() if line.startswith("[llamacpp]")]
    assert_clean_error(kecil("chat", "gemma3-270m", stdin="hi\n"), "no chat template", "kecil generate")
