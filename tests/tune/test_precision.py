"""The frozen base in bfloat16: the adapter still trains, saves and loads in float32."""

from __future__ import annotations

import json

import pytest

from kecil.errors import ConfigError
from kecil.tune.lora import TuneConfig, base_precision, tune
from tests.tune.helpers import memorisable_chat, write_jsonl


def test_a_bfloat16_base_trains_a_float32_adapter_like_a_float32_base(tiny_hf_model, tmp_path):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(8))
    common = dict(model=str(tiny_hf_model("llama")), data=data, epochs=2, max_length=32, val_split=0, dropout=0.0, lr=1e-3)
    runs = {p: tune(TuneConfig(output=tmp_path / p, precision=p, **common)) for p in ("float32", "bfloat16")}
    for precision in runs:
        assert json.loads((tmp_path / precision / "kecil_tune.json").read_text())["precision"] == precision
        weights = load_file(tmp_path / precision / "adapter_model.safetensors")
        assert weights and all(str(w.dtype) == "torch.float32" for w in weights.values())
    # Same start, same data: the losses follow each other up to bfloat16 rounding of the base.
    first = [[h["loss"] for h in r.history if "loss" in h] for r in runs.values()]
    assert first[0][0] == pytest.approx(first[1][0], rel=0.02)


def cpu_flags() -> set[str]:
    """This machine's CPU flags, read here rather than through kecil (the thing under test)."""
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
        return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())


def test_precision_is_checked_and_auto_resolves_to_what_the_hardware_computes():
    import torch

    with pytest.raises(ConfigError, match="precision"):
        TuneConfig(model="m", data="d.jsonl", output="o", precision="float16")
    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported()
    else:  # AVX512-BF16 or AMX multiply bfloat16 in hardware; elsewhere it is emulated, slower than float32
        native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert base_precision("auto") == ("bfloat16" if native else "float32")
    assert base_precision("float32") == "float32"


def test_a_bfloat16_base_layer_that_peft_saves_along_is_written_in_float32(tiny_hf_model, tmp_path):
    """A LoRA on the embedding makes peft save the embedding's own weight too: float32 on disk,
    as from a float32 run, though only the saved tensors are cast (not the whole base)."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(4))
    tune(TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=tmp_path / "a", epochs=1, max_length=32,
                    val_split=0, precision="bfloat16", target_modules=("q_proj", "embed_tokens")))
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert any("embed_tokens.base_layer" in name or name.endswith("embed_tokens.weight") for name in weights), sorted(weights)
    assert all(str(w.dtype) == "torch.float32" for w in weights.values())
