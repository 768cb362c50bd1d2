"""The bundled SmolLM2-135M learns a made-up organisation's handbook with a short LoRA run.

tests/tune/data/velmora_facts.jsonl: 12 facts about the fictional Velmora Cooperative, each asked
four ways; velmora_heldout.jsonl asks each fact two other ways. The base model cannot know any of
them; after training it should answer most held-out questions, through the torch backend with
the PEFT adapter, through llama.cpp with the GGUF LoRA on the original Q4_1 file, and as a
merged model exported to GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kecil.infer.generation import GenerationConfig
from kecil.infer.load import load_model
from kecil.models.builtins import get_builtin

DATA = Path(__file__).parent / "data"
HELD_OUT = [json.loads(line) for line in (DATA / "velmora_heldout.jsonl").read_text().splitlines()]
ANSWER = GenerationConfig(temperature=0, max_tokens=24)

# Heavy: minutes of CPU training. Written at stop 9 but never run to the end there (the machine
# was overloaded); `make test-heavy` runs it.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def share_correct(model, system: str | None = None) -> float:
    hits = 0
    for item in HELD_OUT:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": item["question"]}]
        reply = model.chat(messages, ANSWER).text
        hits += item["answer"].lower() in reply.lower()
    return hits / len(HELD_OUT)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from kecil.tune.lora import TuneConfig, tune

    output = tmp_path_factory.mktemp("velmora") / "adapter"
    result = tune(TuneConfig(model="smollm2-135m", data=DATA / "velmora_facts.jsonl", output=output,
                             epochs=6, lr=2e-3, batch_size=1, max_length=256, val_split=0))
    assert result.gguf_adapter is not None
    return output


def test_the_base_model_does_not_know_the_facts():
    with load_model("smollm2-135m") as model:
        assert share_correct(model) <= 0.1


def test_the_adapter_teaches_them_through_torch(adapter):
    with load_model("smollm2-135m", backend="torch", adapter=adapter) as model:
        assert share_correct(model) >= 0.6


def test_the_gguf_lora_teaches_them_through_llama_cpp(adapter):
    with load_model("smollm2-135m", adapter=adapter) as model:
        assert model.name == "llamacpp"
        assert share_correct(model) >= 0.6


def test_the_merged_model_exported_as_gguf_knows_them(adapter, tmp_path):
    from kecil.tune.merge import MergeConfig, merge

    result = merge(MergeConfig(model="smollm2-135m", adapter=adapter, output=tmp_path / "merged", export_gguf="q8_0"))
    with load_model(str(result.gguf)) as model:
        assert model.name == "llamacpp"
        # A merged folder is no longer the built-in, so it has no system preset: give the one it was trained with.
        assert share_correct(model, system=get_builtin("smollm2-135m").system_prompt) >= 0.6
