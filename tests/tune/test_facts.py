"""The bundled SmolLM2-135M learns a made-up organisation's handbook with a short LoRA run.

tests/tune/data/velmora_facts.jsonl: 12 facts about the fictional Velmora Cooperative, each asked
four ways; velmora_heldout.jsonl asks each fact two other ways. The base model cannot know any of
them; after training it should answer most held-out questions, through the torch backend with
the PEFT adapter, through llama.cpp with the GGUF LoRA on the original Q4_1 file, and as a
merged model exported to GGUF by `kecil merge --export-gguf`. 2m41s on 2 cores at nice -15
(training ~80 s of it); in a trial run with these settings the adapter answered 24/24 through
torch and 23/24 through llama.cpp's LoRA (the tests ask for 18/24, and at most 2/24 from the base).
With kecil tune's default settings instead (the plan chosen from the data: 192 one-example steps
at lr 1e-3) it answered 24/24 through torch.

oskar_facts.jsonl: 12 facts of a made-up foundry's safety handbook, three phrasings each (the
size of the set in issue 16, on which the old fixed recipe made about one optimizer step per
epoch and learned nothing), and oskar_heldout.jsonl, one differently worded question per fact.
Trained with nothing but model, data and output (180 one-example steps at lr 1e-3), the adapter
answered 9/12 through llama.cpp (also 9/12 at lr 2e-3, and with 258 steps); the test asks for 8/12.

`make test` trains once, with the default settings on the foundry set, and checks that adapter
through all three paths (torch, llama.cpp's LoRA, the merged GGUF). The Velmora adapter, trained
with an explicit recipe, is checked the same three ways by `make test-heavy`: a second training
run added about 3.5 minutes to a CI budget of 30.
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
OSKAR_HELD_OUT = [json.loads(line) for line in (DATA / "oskar_heldout.jsonl").read_text().splitlines()]
ANSWER = GenerationConfig(temperature=0, max_tokens=24)
# The default-settings adapter answered 9/12 held-out questions through each of torch, llama.cpp's
# LoRA and the merged q8_0 GGUF (measured 2026-12-06); the tests leave one answer of margin.
TORCH_SHARE = MERGED_SHARE = 2 / 3

pytestmark = pytest.mark.slow


def share_correct(model, system: str | None = None, held_out: list[dict] = HELD_OUT) -> float:
    hits = 0
    for item in held_out:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": item["question"]}]
        reply = model.chat(messages, ANSWER).text
        hits += item["answer"].lower() in reply.lower()
    return hits / len(held_out)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from kecil.tune.lora import TuneConfig, tune

    output = tmp_path_factory.mktemp("velmora") / "adapter"
    result = tune(TuneConfig(model="smollm2-135m", data=DATA / "velmora_facts.jsonl", output=output,
                             epochs=4, lr=3e-3, batch_size=1, max_length=256, val_split=0))
    assert result.gguf_adapter is not None
    return output


def test_the_base_model_does_not_know_the_facts():
    with load_model("smollm2-135m") as model:
        share = share_correct(model)
        oskar = share_correct(model, held_out=OSKAR_HELD_OUT)
    assert share <= 0.1, share
    assert oskar <= 0.1, oskar


@pytest.fixture(scope="module")
def taught_with_defaults(tmp_path_factory):
    """36 lines, 12 facts x 3 phrasings, and no settings given: kecil tune's own plan."""
    from kecil.tune.lora import TuneConfig, tune

    output = tmp_path_factory.mktemp("oskar") / "adapter"
    return tune(TuneConfig(model="smollm2-135m", data=DATA / "oskar_facts.jsonl", output=output)), output


def test_default_settings_plan_enough_steps_and_keep_the_general_answers(taught_with_defaults):
    from kecil.tune.plan import MIN_STEPS

    result, _ = taught_with_defaults
    plan = result.plan
    # 36 of the model's own answers to general prompts are mixed in by default (--mix-general 1).
    assert plan.examples == 72 and result.replay_examples == 36 and plan.val_examples == 0
    assert plan.total_steps == result.steps >= MIN_STEPS
    assert not plan.warnings and "72 training examples, 36 of them general replay" in plan.describe()[0]
    assert sum(a.right_before and a.right_after for a in result.general) >= 5  # the general check ran, little forgotten


def test_default_settings_teach_a_small_handbook_through_llama_cpp(taught_with_defaults):
    _, adapter = taught_with_defaults
    with load_model("smollm2-135m", adapter=adapter) as model:
        assert model.name == "llamacpp"
        share = share_correct(model, held_out=OSKAR_HELD_OUT)
    assert share >= 2 / 3, share  # 9/12 measured; one answer of margin for other thread counts


def test_default_settings_teach_a_small_handbook_through_torch(taught_with_defaults):
    _, adapter = taught_with_defaults
    with load_model("smollm2-135m", backend="torch", adapter=adapter) as model:
        share = share_correct(model, held_out=OSKAR_HELD_OUT)
    assert share >= TORCH_SHARE, share


def test_default_settings_merged_and_exported_as_gguf_know_the_handbook(taught_with_defaults, tmp_path):
    _, adapter = taught_with_defaults
    share = merged_share(adapter, tmp_path, OSKAR_HELD_OUT)
    assert share >= MERGED_SHARE, share


def merged_share(adapter: Path, tmp_path: Path, held_out: list[dict]) -> float:
    """`kecil merge --export-gguf q8_0` as a user runs it, then the share the merged file answers."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kecil", "merge", "smollm2-135m", str(adapter), "-o", str(tmp_path / "merged"),
                           "--export-gguf", "q8_0"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    gguf = Path(done.stdout.split()[-1])
    assert gguf.suffix == ".gguf" and gguf.parent == tmp_path / "merged"
    with load_model(str(gguf)) as model:
        assert model.name == "llamacpp"
        # A merged folder is no longer the built-in, so it has no system preset: give the one it was trained with.
        return share_correct(model, system=get_builtin("smollm2-135m").system_prompt, held_out=held_out)


@pytest.mark.heavy
def test_the_adapter_teaches_them_through_torch(adapter):
    with load_model("smollm2-135m", backend="torch", adapter=adapter) as model:
        share = share_correct(model)
    assert share >= 0.75, share


@pytest.mark.heavy
def test_the_gguf_lora_teaches_them_through_llama_cpp(adapter):
    with load_model("smollm2-135m", adapter=adapter) as model:
        assert model.name == "llamacpp"
        share = share_correct(model)
    assert share >= 0.75, share


@pytest.mark.heavy
def test_the_merged_model_exported_as_gguf_knows_them(adapter, tmp_path):
    assert merged_share(adapter, tmp_path, HELD_OUT) >= 0.75
