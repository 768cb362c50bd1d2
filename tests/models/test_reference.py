"""resolve(): built-ins, GGUF files and HF folders that work, and a clear error for every way one can't."""

from __future__ import annotations

import json
import random
import shutil
import struct

import pytest

from kecil.errors import InvalidModelError, ModelNotFoundError, UnsupportedArchitectureError
from kecil.models import builtins as builtins_module
from kecil.models.architectures import normalise_architecture, supported_architectures
from kecil.models.builtins import DEFAULT_MODEL, builtin_path
from kecil.models.reference import resolve
from tests.models.helpers import assert_helpful, write_gguf

SUPPORTED = "gemma2, gemma3, llama, mistral, phi3, qwen2, qwen3"


@pytest.fixture(scope="module")
def smol_path():
    return builtin_path(DEFAULT_MODEL)


@pytest.fixture
def in_empty_dir(tmp_path, monkeypatch):
    """Run from an empty folder so relative specs cannot accidentally exist."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- what works ----------------------------------------------------------------------------
def test_default_is_the_builtin_smollm2_gguf():
    ref = resolve()
    assert ref == resolve(DEFAULT_MODEL)
    assert (ref.name, ref.format, ref.architecture, ref.builtin) == ("smollm2-135m", "gguf", "llama", True)
    assert ref.path.is_absolute() and ref.path.is_file()


def test_a_gguf_path_resolves_directly(smol_path, tmp_path, monkeypatch):
    ref = resolve(str(smol_path))
    assert (ref.format, ref.architecture, ref.builtin, ref.path) == ("gguf", "llama", False, smol_path)
    assert ref.name == smol_path.name and ref.spec == str(smol_path)
    monkeypatch.chdir(smol_path.parent)
    assert resolve(f"./{smol_path.name}").path == smol_path


def test_gguf_is_recognised_by_magic_not_extension(tmp_path):
    ref = resolve(str(write_gguf(tmp_path / "weights.bin")))
    assert (ref.format, ref.architecture) == ("gguf", "llama")


def resolves_to_its_architecture(arch, tiny_hf_model, tmp_path):  # a row of tests/test_architectures.py
    ref = resolve(str(tiny_hf_model(arch)))
    assert (ref.format, ref.architecture, ref.builtin) == ("hf", arch, False)
    assert ref.name == arch and ref.path == tiny_hf_model(arch)


@pytest.mark.parametrize(
    ("value", "source", "expected"),
    [
        ("llama", "gguf", "llama"),
        ("llama", "hf", "llama"),
        ("mistral", "hf", "mistral"),
        ("qwen2", "gguf", "qwen2"),
        ("qwen3", "hf", "qwen3"),
        ("gemma2", "gguf", "gemma2"),
        ("gemma3", "gguf", "gemma3"),
        ("gemma3_text", "hf", "gemma3"),
        ("gemma3", "hf", "gemma3"),
        ("phi3", "hf", "phi3"),
    ],
)
def test_architecture_names_normalise(value, source, expected):
    assert normalise_architecture(value, source) == expected


def test_unsupported_architecture_lists_the_supported_ones():
    assert ", ".join(supported_architectures()) == SUPPORTED
    with pytest.raises(UnsupportedArchitectureError) as caught:
        normalise_architecture("bert", "hf")
    assert_helpful(caught.value, "'bert'", SUPPORTED, "pick")


# --- names that point at nothing -----------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "repo"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("hf://Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
        ("https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/tree/main", "Qwen/Qwen2.5-0.5B-Instruct"),
    ],
)
def test_hub_id_says_offline_and_how_to_get_the_folder(spec, repo, in_empty_dir):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve(spec)
    assert_helpful(caught.value, "offline", "downloads no model but its built-ins (`kecil pull`)", f"huggingface-cli download {repo} --local-dir", "smollm2-135m")


@pytest.mark.parametrize("spec", ["./missing.gguf", "/no/such/folder/model.gguf", "models/", "~/nowhere.gguf"])
def test_missing_path(spec, in_empty_dir):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve(spec)
    assert_helpful(caught.value, f"no such file or directory: {spec}", "smollm2-135m", "gemma3-270m", "kecil models")


def test_unknown_bare_name_lists_builtins_and_suggests(in_empty_dir):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve("smollm")
    message = assert_helpful(caught.value, "unknown model 'smollm'", "smollm2-135m", "gemma3-270m", ".gguf", "hugging face")
    assert "did you mean smollm2-135m" in message


def test_uninstalled_builtin_gives_the_pull_command(monkeypatch):
    monkeypatch.setattr(builtins_module, "_module_dir", lambda module, search=None: None)
    with pytest.raises(ModelNotFoundError) as caught:
        resolve("smollm2-135m")
    assert_helpful(caught.value, "not installed", "run `kecil pull smollm2-135m`")


# --- files that are not (whole) GGUF models -------------------------------------------------
def test_text_file(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("hello, this is not a model\n")
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "not a GGUF file", "'hello, this '", ".gguf")


def test_png_file(tmp_path):
    path = tmp_path / "picture.gguf"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "not a GGUF file", "PNG image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.touch()
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "empty", "0 bytes")


def test_gguf_cut_after_its_header_says_how_many_bytes_are_missing(smol_path, tmp_path):
    path = tmp_path / "first-2mb.gguf"
    with open(smol_path, "rb") as source:
        path.write_bytes(source.read(2 * 1024 * 1024))
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    expected = smol_path.stat().st_size
    assert_helpful(caught.value, "truncated", f"{expected} bytes", f"has {2 * 1024 * 1024}", "re-download or re-install")


def test_gguf_missing_its_last_byte(smol_path, tmp_path):
    path = tmp_path / "almost.gguf"
    shutil.copyfile(smol_path, path)
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size - 1)
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "truncated", "(1 missing)")


def test_gguf_cut_inside_its_header(smol_path, tmp_path):
    path = tmp_path / "first-100kb.gguf"
    with open(smol_path, "rb") as source:
        path.write_bytes(source.read(100_000))
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "truncated", "inside its header")


def test_corrupt_header(tmp_path):
    path = tmp_path / "garbage.gguf"
    noise = random.Random(0).randbytes(4096)
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + noise)
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "corrupt GGUF header")


def test_unsupported_gguf_version(tmp_path):
    path = tmp_path / "future.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 99) + bytes(64))
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "version 99", "re-convert")


def test_gguf_of_an_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "mamba.gguf", arch="mamba")
    with pytest.raises(UnsupportedArchitectureError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "'mamba'", SUPPORTED)


def test_gguf_without_an_architecture(tmp_path):
    path = write_gguf(tmp_path / "anonymous.gguf", with_architecture=False)
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "general.architecture", "re-convert")


def test_gguf_without_tensors(tmp_path):
    path = write_gguf(tmp_path / "vocab-only.gguf", tensors=0)
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "no tensors")


# --- folders that are not (whole) Hugging Face models ---------------------------------------
@pytest.fixture
def hf_copy(tiny_hf_model, tmp_path):
    """A private copy of the tiny llama folder that a test may break."""
    return shutil.copytree(tiny_hf_model("llama"), tmp_path / "model")


def _resolve_error(path, error_type=InvalidModelError):
    with pytest.raises(error_type) as caught:
        resolve(str(path))
    return caught.value


def test_folder_without_config(hf_copy):
    (hf_copy / "config.json").unlink()
    assert_helpful(_resolve_error(hf_copy), "no config.json", "not a Hugging Face model folder")


def test_folder_with_only_a_gguf_says_pass_the_file(smol_path, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    write_gguf(folder / "model-q4.gguf")
    assert_helpful(_resolve_error(folder), "no config.json", "model-q4.gguf", "pass the .gguf file instead")


def test_config_that_is_not_json(hf_copy):
    (hf_copy / "config.json").write_text('{"model_type": "llama",')
    assert_helpful(_resolve_error(hf_copy), "config.json is not valid JSON", "re-download")


def test_config_without_model_type(hf_copy):
    config = json.loads((hf_copy / "config.json").read_text())
    del config["model_type"]
    (hf_copy / "config.json").write_text(json.dumps(config))
    assert_helpful(_resolve_error(hf_copy), "no model_type")


def test_config_of_an_unsupported_model_type(hf_copy):
    config = json.loads((hf_copy / "config.json").read_text())
    (hf_copy / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert_helpful(_resolve_error(hf_copy, UnsupportedArchitectureError), "'bert'", SUPPORTED)


def test_folder_without_weights(hf_copy):
    (hf_copy / "model.safetensors").unlink()
    assert_helpful(_resolve_error(hf_copy), "no weight files", "*.safetensors", "pytorch_model*.bin")


def test_truncated_safetensors(hf_copy):
    weights = hf_copy / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as file:
        file.truncate(size - 100)
    assert_helpful(_resolve_error(hf_copy), "model.safetensors is truncated", f"{size} bytes", "(100 missing)")


@pytest.mark.parametrize(
    "start", [struct.pack("<Q", 2**60), struct.pack("<Q", 12) + b"not json at all"], ids=["huge-length", "not-json"]
)
def test_unreadable_safetensors_header(hf_copy, start):
    weights = hf_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(start + data[len(start):])
    assert_helpful(_resolve_error(hf_copy), "unreadable safetensors header")


def test_missing_shard(hf_copy):
    (hf_copy / "model.safetensors").rename(hf_copy / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (hf_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_helpful(_resolve_error(hf_copy), "missing 1 of 2 weight shards", "model-00002-of-00002.safetensors")


def test_folder_without_tokenizer(hf_copy):
    (hf_copy / "tokenizer.json").unlink()
    assert_helpful(_resolve_error(hf_copy), "no tokenizer files", "tokenizer.json")


def test_binary_file_shows_its_first_bytes(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes([0x00, 0xFF, 0x10, 0x80]) * 8)
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "not a GGUF file", "00 ff 10 80")


def test_gguf_magic_alone_is_truncated(tmp_path):
    path = tmp_path / "stub.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(InvalidModelError) as caught:
        resolve(str(path))
    assert_helpful(caught.value, "truncated", "4 bytes")
