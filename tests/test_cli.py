"""The `kecil` command end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json

import subprocess
import sys
from pathlib import Path  # noqa: F401 (a field type below, resolved in this module)

import pytest

from tests.cli_helpers import assert_clean_error, kecil


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
    default = json.loads(done.stdout.splitlines()[0])
    assert "MMLU" in default["limits"]  # the model's limits, where a user first looks


def test_models_reads_in_an_80_column_pipe():
    # A six-column table folded the limits a word per line and cut the names one has to type.
    from kecil.models.builtins import builtins

    done = kecil("models", env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, done.stdout
    for builtin in builtins():
        assert any(line.startswith(builtin.name + " ") for line in lines), (builtin.name, done.stdout)
        assert builtin.limits in " ".join(" ".join(lines).split()), builtin.name  # whole, only rewrapped


def test_chat_banner_states_the_embedded_models_limits():
    done = kecil("chat", "--max-tokens", "4", stdin="/exit\n")
    assert done.returncode == 0, done.stderr
    assert "smollm2-135m: 135M parameters" in done.stderr and "MMLU" in done.stderr


def test_info_of_the_default_model():
    done = kecil("info", "--context", "8192")
    assert done.returncode == 0, done.stderr
    for word in ("llama", "Q4_1", "8192", "134.5M"):
        assert word in done.stdout, (word, done.stdout)


def test_info_in_a_pipe_keeps_each_fact_on_one_line():
    # rich folded the built-in's path across three lines at 80 columns, so it could not be copied.
    from kecil.models.builtins import builtin_path

    done = kecil("info", "--no-fertility", env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("Path ") and line.endswith(str(builtin_path("smollm2-135m")))
               for line in done.stdout.splitlines()), done.stdout


def test_demo_answers_three_questions_with_speed():
    done = kecil("demo", "--quick")
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


# --- options come from the config dataclasses ------------------------------------------------
def test_options_are_made_from_a_configs_fields():
    import inspect
    from dataclasses import dataclass, field

    from kecil.cli.options import field_options

    @dataclass(frozen=True)
    class Settings:
        name: str = field(metadata={"help": "Who."})
        steps: int = field(default=3, metadata={"help": "How many.", "flag": ("--steps", "-s")})
        words: tuple[str, ...] = ()
        out: Path | None = None
        fast: bool = False
        safe: bool = field(default=True, metadata={"help": "Stay safe."})
        internal: int = field(default=1, metadata={"hidden": True})
        nested: dict = field(default_factory=dict)  # the command line cannot express it: left out

    params = {p.name: (p, convert) for p, convert in field_options(Settings, help={"fast": "Go fast."}, defaults={"steps": 5})}
    assert list(params) == ["name", "steps", "words", "out", "fast", "safe"]

    def option(name):
        return params[name][0].annotation.__metadata__[0]

    def flags(name):  # in Annotated, typer keeps the first name where a default would go
        return (option(name).default, *option(name).param_decls)

    assert params["name"][0].default is inspect.Parameter.empty and option("name").help == "Who."
    assert params["steps"][0].default == 5 and flags("steps") == ("--steps", "-s")
    assert option("words").help is None  # no help declared: none, not an error
    assert params["words"][1](None) == () and params["words"][1](["a", "b"]) == ("a", "b")
    assert option("fast").help == "Go fast." and flags("fast") == ("--fast",)
    assert flags("safe") == ("--safe/--no-safe",)
    with pytest.raises(TypeError, match="nested"):
        field_options(Settings, only=("nested",))


def test_sampling_defaults_and_help_come_from_generation_config():
    from kecil.infer.generation import GenerationConfig

    help_text = kecil("generate", "--help", env={"COLUMNS": "200"}).stdout
    defaults = GenerationConfig()
    for flag, value in (("--temperature", defaults.temperature), ("--top-p", defaults.top_p), ("--top-k", defaults.top_k), ("--max-tokens", defaults.max_tokens)):
        line = next(line for line in help_text.splitlines() if flag in line)
        assert f"[default: {value}]" in line, line
    assert "Nucleus sampling" in help_text and "--ignore-eos" not in help_text  # hidden fields stay off


def test_every_tune_config_field_is_an_option_of_kecil_tune():
    from dataclasses import fields

    from kecil.tune.lora import TuneConfig

    help_text = kecil("tune", "--help", env={"COLUMNS": "200"}).stdout
    for f in fields(TuneConfig):
        if f.name not in ("model", "data") and not f.metadata.get("hidden"):
            assert "--" + f.name.replace("_", "-") in help_text, f.name


def test_python_dash_m_and_the_console_script_are_the_same_command():
    import importlib
    import tomllib

    from kecil.cli import main

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["kecil"].partition(":")
    assert getattr(importlib.import_module(module), name) is main
    assert kecil("--version").stdout.startswith("kecil ")


# --- deleting user data asks first ----------------------------------------------------------
def test_rag_remove_refuses_without_a_terminal_and_removes_with_yes(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "leave.txt").write_text("New staff get 18 days of annual leave.\n")
    assert kecil("rag", "ingest", str(tmp_path / "docs"), "--kb", "handbook").returncode == 0
    # what a pasted `kecil rag list | kecil rag remove handbook` amounts to: input that is not a terminal
    refused = kecil("rag", "remove", "handbook", stdin="y\n")
    assert_clean_error(refused, "--yes")
    def listed() -> set[str]:  # other tests' knowledge bases share the session's KECIL_HOME ("web-handbook")
        return {line.split(":", 1)[0] for line in kecil("rag", "list").stdout.splitlines()}

    assert "handbook" in listed()
    done = kecil("rag", "remove", "handbook", "--yes")
    assert done.returncode == 0 and "removed" in done.stdout, done.stderr
    assert "handbook" not in listed()
    assert_clean_error(kecil("rag", "remove", "handbook", "--yes"), "no knowledge base")


def test_rag_remove_asks_on_a_terminal_and_keeps_the_kb_unless_told_yes(tmp_path):
    import os
    import pty

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "leave.txt").write_text("New staff get 18 days of annual leave.\n")
    assert kecil("rag", "ingest", str(tmp_path / "docs"), "--kb", "asked").returncode == 0

    def remove_answering(answer: str) -> subprocess.CompletedProcess:
        leader, follower = pty.openpty()  # stdin is a terminal, as when a user types the command
        try:
            os.write(leader, answer.encode() + b"\n")
            return subprocess.run([sys.executable, "-m", "kecil", "rag", "remove", "asked"], stdin=follower,
                                  capture_output=True, text=True, timeout=120, env={**os.environ, "KECIL_DEBUG": ""})
        finally:
            os.close(leader)
            os.close(follower)

    kept = remove_answering("n")
    assert kept.returncode == 1 and "Remove the knowledge base 'asked'" in kept.stderr, kept.stderr
    assert "asked" in kecil("rag", "list").stdout
    removed = remove_answering("y")
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    assert "asked" not in kecil("rag", "list").stdout


# --- chat's own commands ------------------------------------------------------------------------
def test_chat_help_lists_commands_and_an_unknown_command_is_not_sent_to_the_model():
    done = kecil("chat", "--temperature", "0", "--max-tokens", "16", stdin="/help\n/frobnicate the answer\n/exit\n")
    assert done.returncode == 0, done.stderr
    for command in ("/help", "/reset", "/exit"):
        assert command in done.stderr
    assert "unknown command /frobnicate" in done.stderr
    assert done.stdout.strip() == ""  # the model was never asked
