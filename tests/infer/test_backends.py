"""Both backends on the real bundled model, and the torch backend on tiny random models of
every supported architecture (built in-process, no downloads)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from kecil.errors import BackendError, ConfigError, PromptTooLongError
from kecil.infer.chat import ChatSession
from kecil.infer.generation import GenerationConfig
from kecil.infer.load import load_model

GREEDY = GenerationConfig(temperature=0, max_tokens=24)
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol_llamacpp():
    with load_model("smollm2-135m", backend="llamacpp", context_length=2048) as model:
        yield model


@pytest.fixture(scope="module")
def smol_torch():
    with load_model("smollm2-135m", backend="torch", context_length=2048) as model:
        yield model


# --- tiny random models: every architecture loads and generates through the torch backend ---
def generates_with_usage_and_finish_reason(arch, tiny_hf_model, tmp_path):  # a row of tests/test_architectures.py
    with load_model(str(tiny_hf_model(arch)), context_length=256) as model:
        assert model.name == "torch"
        prompt = "the cat sat on the mat"
        result = model.generate(prompt, GenerationConfig(temperature=0, max_tokens=8))
        assert result.usage.prompt_tokens == len(model.tokenize(prompt, add_bos=model.adds_bos))
        assert 1 <= result.usage.completion_tokens <= 8
        assert result.finish_reason in ("stop", "length")
        if result.finish_reason == "length":
            assert result.usage.completion_tokens == 8
        again = model.generate(prompt, GenerationConfig(temperature=0, max_tokens=8))
        assert again.text == result.text  # greedy is deterministic


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_seed_repeats_sampling(arch, tiny_hf_model):
    with load_model(str(tiny_hf_model(arch)), context_length=256) as model:
        runs = {seed: model.generate("hello", GenerationConfig(temperature=1.0, top_k=0, max_tokens=12, seed=seed)).text for seed in range(4)}
        assert model.generate("hello", GenerationConfig(temperature=1.0, top_k=0, max_tokens=12, seed=2)).text == runs[2]
        assert len(set(runs.values())) > 1, "different seeds should not all give the same sample"


def test_tiny_model_chat_uses_its_template(tiny_hf_model):
    with load_model(str(tiny_hf_model("qwen2")), context_length=256) as model:
        prompt = model.format_chat([{"role": "user", "content": "hi"}])
        assert prompt.startswith("<|im_start|>user\nhi<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
        ids = model.chat_prompt_ids([{"role": "user", "content": "hi"}])
        assert model.tokenize("<|im_start|>", add_bos=False)[0] == ids[0 + int(model.adds_bos)]
        assert model.chat(FRANCE, GenerationConfig(temperature=0, max_tokens=4)).finish_reason in ("stop", "length")


def test_llamacpp_refuses_a_hugging_face_folder(tiny_hf_model):
    with pytest.raises(BackendError, match="--backend torch"):
        load_model(str(tiny_hf_model("llama")), backend="llamacpp")


def test_unknown_backend_and_bad_context_are_config_errors():
    with pytest.raises(ConfigError, match="llamacpp, torch"):
        load_model(None, backend="onnx")
    with pytest.raises(ConfigError, match="trained for a context of 8192"):
        load_model(None, context_length=100_000)


# --- the real bundled model -----------------------------------------------------------------
def test_llamacpp_answers_paris(smol_llamacpp):
    reply = smol_llamacpp.chat(FRANCE, GREEDY)
    assert "Paris" in reply.text
    assert reply.usage.prompt_tokens > 1 and reply.usage.completion_tokens > 0
    assert reply.timings.decode_tokens_per_second > 0


def test_torch_answers_paris(smol_torch):
    reply = smol_torch.chat(FRANCE, GREEDY)
    assert "Paris" in reply.text


def test_backends_agree_on_the_first_tokens(smol_llamacpp, smol_torch):
    # Same GGUF weights (torch dequantizes them): the same prompt ids and the same greedy start.
    messages = [{"role": "user", "content": "List three fruits that are yellow."}]
    assert smol_llamacpp.chat_prompt_ids(messages) == smol_torch.chat_prompt_ids(messages)
    a = smol_llamacpp.chat(messages, GenerationConfig(temperature=0, max_tokens=12)).text
    b = smol_torch.chat(messages, GenerationConfig(temperature=0, max_tokens=12)).text
    first_a = smol_llamacpp.tokenize(a, add_bos=False)[:6]
    first_b = smol_llamacpp.tokenize(b, add_bos=False)[:6]
    assert first_a == first_b, (a, b)


@pytest.mark.parametrize("backend", ["smol_llamacpp", "smol_torch"])
def test_seed_sampling_and_limits(backend, request):
    model = request.getfixturevalue(backend)
    sample = GenerationConfig(temperature=1.0, max_tokens=24, seed=1234)
    first = model.chat(FRANCE, sample).text
    assert model.chat(FRANCE, sample).text == first
    others = {model.chat(FRANCE, GenerationConfig(temperature=1.0, max_tokens=24, seed=s)).text for s in (1, 2, 3)}
    assert len(others | {first}) > 1
    short = model.generate("Once upon a time", GenerationConfig(temperature=0, max_tokens=5))
    assert short.finish_reason == "length" and short.usage.completion_tokens == 5


@pytest.mark.parametrize("backend", ["smol_llamacpp", "smol_torch"])
def test_stop_sequence(backend, request):
    model = request.getfixturevalue(backend)
    full = model.chat(FRANCE, GREEDY).text
    assert "Paris" in full
    cut = model.chat(FRANCE, GenerationConfig(temperature=0, max_tokens=24, stop=("Paris",))).text
    assert cut == full[: full.index("Paris")]


def test_repetition_penalty_changes_greedy_output(smol_llamacpp):
    prompt = "one one one one one one one one"
    plain = smol_llamacpp.generate(prompt, GenerationConfig(temperature=0, max_tokens=16)).text
    penalised = smol_llamacpp.generate(prompt, GenerationConfig(temperature=0, max_tokens=16, repetition_penalty=1.8)).text
    assert plain != penalised


@pytest.mark.parametrize("backend", ["smol_llamacpp", "smol_torch"])
def test_prompt_longer_than_context_is_refused_with_both_numbers(backend, request):
    model = request.getfixturevalue(backend)
    with pytest.raises(PromptTooLongError) as info:
        model.generate("word " * 3000)
    assert info.value.context_length == 2048 and info.value.prompt_tokens > 2048
    assert "2048" in str(info.value) and str(info.value.prompt_tokens) in str(info.value)


def test_chat_session_drops_old_turns_with_notice():
    with load_model("smollm2-135m", context_length=160) as model:
        session = ChatSession(model, GenerationConfig(temperature=0, max_tokens=24))
        dropped = []
        for question in ["Tell me about cats.", "Tell me about dogs.", "Tell me about birds.", "And fish?"]:
            turn = session.send(question)
            dropped.append(turn.dropped)
            "".join(c.text for c in turn.chunks)
        assert sum(dropped) > 0
        assert session.messages[-2] == {"role": "user", "content": "And fish?"}
        assert len(model.chat_prompt_ids(session.messages)) <= 160


def test_multi_token_prompt_on_the_runtime_cpu_variant():
    # In a subprocess: the crash this guards against (a -march=native build on this CPU) was a
    # segfault in decode on any prompt longer than one token, which would kill pytest itself.
    code = textwrap.dedent(
        """
        from kecil.infer.load import load_model
        from kecil.infer.generation import GenerationConfig
        from kecil.infer.llamacpp_runtime import loaded_cpu_variant
        with load_model("smollm2-135m", context_length=1024) as m:
            r = m.generate("The quick brown fox jumps over the lazy dog. " * 40, GenerationConfig(temperature=0, max_tokens=8))
            assert r.usage.prompt_tokens > 300, r.usage
            print(loaded_cpu_variant(), r.usage.completion_tokens)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    variant, produced = done.stdout.split()
    assert variant and int(produced) == 8


@pytest.mark.parametrize("backend", ["llamacpp", "torch"])
def test_generation_stops_at_the_edge_of_the_context(backend):
    with load_model("smollm2-135m", backend=backend, context_length=64) as model:
        prompt = "one two three four five six seven eight nine ten " * 4
        n_prompt = len(model.tokenize(prompt, add_bos=model.adds_bos))
        assert n_prompt < 64
        result = model.generate(prompt, GenerationConfig(temperature=0, max_tokens=500, ignore_eos=True))
        assert result.finish_reason == "length"
        assert result.usage.prompt_tokens + result.usage.completion_tokens == 64
