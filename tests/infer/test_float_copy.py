"""The float copy of a GGUF model: the second load reads it and gets exactly what transformers'
GGUF loader gives; a changed file gets a new copy; a large model, `0`, a full or unwritable home
and a killed writer never cost the user a load or leave a broken copy."""

from __future__ import annotations

import os
import time

import pytest

from kecil.errors import ConfigError
from kecil.infer.float_copy import MARKER, copy_folder, find_float_copy
from kecil.infer.torch_backend import load_transformers
from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf
from kecil.models.reference import resolve

TEXT = "The cat sat on the mat. Kucing itu duduk di atas tikar. 猫坐在垫子上。 แมวนั่งบนเสื่อ"


@pytest.fixture
def tiny_gguf(tiny_hf_model, tmp_path, monkeypatch):
    monkeypatch.setenv("KECIL_HOME", str(tmp_path / "home"))
    return convert_hf_to_gguf(tiny_hf_model("llama"), tmp_path / "tiny.gguf")


def same_model(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_embedded_model_loads_from_its_copy_with_the_weights_tokens_and_template_of_the_gguf(monkeypatch):
    import torch

    ref = resolve("smollm2-135m")
    monkeypatch.setenv("KECIL_FLOAT_COPY_MAX_GB", "0")  # straight from the GGUF, as before the copy existed
    direct, direct_tokenizer = load_transformers(ref)
    monkeypatch.delenv("KECIL_FLOAT_COPY_MAX_GB")
    load_transformers(ref)  # writes the copy unless an earlier test of this session did
    assert find_float_copy(ref) is not None
    copied, copied_tokenizer = load_transformers(ref)
    assert copied.dtype == torch.float32 and same_model(direct, copied)
    assert copied_tokenizer(TEXT)["input_ids"] == direct_tokenizer(TEXT)["input_ids"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}]
    assert (copied_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == direct_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert (copied_tokenizer.eos_token, copied_tokenizer.bos_token) == (direct_tokenizer.eos_token, direct_tokenizer.bos_token)
    ids = torch.tensor([direct_tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, copied(ids).logits)


def test_a_file_changed_in_place_gets_a_new_copy(tiny_gguf):
    ref = resolve(str(tiny_gguf))
    load_transformers(ref)
    first = find_float_copy(ref)
    assert first is not None and (first / MARKER).is_file() and (first / "model.safetensors").is_file()
    later = time.time() + 5
    os.utime(tiny_gguf, (later, later))
    changed = resolve(str(tiny_gguf))
    assert find_float_copy(changed) is None  # the old copy is not taken for the changed file
    load_transformers(changed)
    assert find_float_copy(changed) not in (None, first)


@pytest.mark.parametrize("limit", ["0", "0.000001"], ids=["off", "smaller-than-the-model"])
def test_no_copy_is_written_past_the_limit(tiny_gguf, monkeypatch, limit):
    monkeypatch.setenv("KECIL_FLOAT_COPY_MAX_GB", limit)
    ref = resolve(str(tiny_gguf))
    model, _ = load_transformers(ref)
    assert model is not None and not copy_folder(ref).exists()


def test_a_bad_limit_is_a_clear_error(tiny_gguf, monkeypatch):
    monkeypatch.setenv("KECIL_FLOAT_COPY_MAX_GB", "lots")
    with pytest.raises(ConfigError, match="KECIL_FLOAT_COPY_MAX_GB must be a number"):
        load_transformers(resolve(str(tiny_gguf)))


def test_an_unwritable_copy_folder_still_loads_the_model(tiny_gguf, tmp_path):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "float-copies").write_text("a file where the folder would go")
    ref = resolve(str(tiny_gguf))
    model, tokenizer = load_transformers(ref)
    assert model is not None and tokenizer("the cat")["input_ids"]
    assert find_float_copy(ref) is None


def test_a_killed_writers_half_copy_is_swept_and_a_live_writers_kept(tiny_gguf):
    """kill -9 mid-write leaves a staging folder named after the writer's pid (kecil.scratch): the
    next lookup removes it once that process is gone, even when the copy already exists."""
    import subprocess
    import sys

    from kecil.scratch import owned_prefix

    ref = resolve(str(tiny_gguf))
    load_transformers(ref)
    parent = copy_folder(ref).parent
    live = parent / (owned_prefix(f"{copy_folder(ref).name}.float-copy") + "writing")  # this process: alive
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    dead = parent / (owned_prefix(f"{copy_folder(ref).name}.float-copy").replace(f"-{os.getpid()}-", f"-{dead_pid}-") + "killed")
    for folder in (live, dead):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    assert find_float_copy(ref) is not None
    assert not dead.exists() and live.exists()
