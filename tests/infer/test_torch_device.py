"""The torch backend on a chosen device: --device is checked, a decode step keeps every tensor on
the model's device (the model on PyTorch's meta device stands in for a GPU, tests/same_device.py),
and the decode loop's GPU look-ahead gives the tokens transformers' generate() gives."""

from __future__ import annotations

import pytest
import torch

from kecil.errors import ConfigError, DeviceError
from kecil.infer.generation import GenerationConfig
from kecil.infer.load import LoadOptions
from tests.cli_helpers import assert_clean_error, kecil
from tests.same_device import same_device

PROMPT = "the cat sat on the mat"


def _tiny(tiny_hf_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_hf_model("llama")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("config", [
    GenerationConfig(temperature=0, ignore_eos=True, repetition_penalty=1.3),
    GenerationConfig(temperature=0.8, top_k=20, top_p=0.9, seed=1),
], ids=["greedy-banned-penalty", "sampled"])
def test_a_decode_step_makes_no_tensor_off_the_models_device(tiny_hf_model, config):
    """The prompt, the banned end ids and the looked-back text are made on the model's device:
    made on the CPU, as they were, the first forward pass raises here as it would on a GPU."""
    from kecil.infer.torch_decode import DecodeSteps

    model, tokenizer = _tiny(tiny_hf_model)
    model.to("meta")
    with same_device(), torch.inference_mode():
        steps = DecodeSteps(model, tokenizer(PROMPT)["input_ids"], config, end_ids={tokenizer.eos_token_id})
        token = steps.first()
        for _ in range(3):
            token = steps.next(token)
    assert token.device.type == "meta" and token.shape == (1, 1)


@pytest.mark.parametrize("lookahead", [False, True])
def test_the_decode_loop_gives_generates_tokens_with_and_without_lookahead(tiny_hf_model, lookahead):
    from kecil.infer.torch_decode import decode_tokens

    model, tokenizer = _tiny(tiny_hf_model)
    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, len(ids):].tolist()
    tokens = decode_tokens(model, ids, GenerationConfig(temperature=0, ignore_eos=True), {tokenizer.eos_token_id}, lookahead=lookahead)
    assert [next(tokens) for _ in range(12)] == expected
    tokens.close()


def test_device_names_are_checked_before_anything_loads():
    for good in ("auto", "cpu", "cuda", "cuda:0", "CUDA:1"):
        assert LoadOptions(device=good).device == good
    for bad in ("gpu", "cuda:", "cuda:x", "mps:0"):
        with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
            LoadOptions(device=bad)


def test_every_command_that_loads_a_torch_model_takes_and_checks_device():
    from kecil.compress.quantize import QuantizeConfig
    from kecil.eval.run import EvalConfig
    from kecil.serve.config import ServeConfig
    from kecil.tune.lora import TuneConfig
    from kecil.tune.merge import MergeConfig

    made = {
        LoadOptions: {}, ServeConfig: {}, EvalConfig: dict(models=("m",), tasks=("mmlu",)),
        QuantizeConfig: dict(model="m", to="q4_k_m", output="o.gguf"), TuneConfig: dict(model="m", data="d", output="o"),
        MergeConfig: dict(model="m", adapter="a", output="o"),
    }
    for config, required in made.items():
        assert config(**required).device == "auto", config
        assert config(**required, device="cuda:1").device == "cuda:1", config
        with pytest.raises(ConfigError, match="unknown device"):
            config(**required, device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_asked_for_without_a_gpu_is_one_clear_error(tiny_hf_model):
    from kecil.infer.hardware import resolve_device

    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    done = kecil("generate", str(tiny_hf_model("llama")), "hello", "--device", "cuda", "--max-tokens", "2")
    assert_clean_error(done, "--device cuda", "no CUDA GPU", "--device cpu")
    done = kecil("generate", str(tiny_hf_model("llama")), "hello", "--device", "gpu")
    assert_clean_error(done, "unknown device", "cuda:N")


def test_device_cpu_generates(tiny_hf_model):
    done = kecil("generate", str(tiny_hf_model("llama")), "hello", "--device", "cpu", "--max-tokens", "3", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert "[torch]" in done.stderr and "3 generated" in done.stderr


@pytest.mark.gpu
def test_a_model_on_the_gpu_stays_half_precision_and_decodes_as_generate(tiny_hf_model):
    from kecil.infer.load import load_model
    from kecil.infer.torch_decode import decode_tokens, model_device

    with load_model(str(tiny_hf_model("llama")), device="cuda", context_length=256) as backend:
        model = backend._model
        assert model_device(model).type == "cuda"
        assert model.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        ids = backend.tokenize(PROMPT, add_bos=backend.adds_bos)
        with torch.inference_mode():
            expected = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=8, min_new_tokens=8,
                                      do_sample=False)[0, len(ids):].tolist()
        tokens = decode_tokens(model, ids, GenerationConfig(temperature=0, ignore_eos=True), backend._end_ids)
        assert [next(tokens) for _ in range(8)] == expected  # with the look-ahead, on by default on a GPU
        tokens.close()
        sampled = list(backend.stream_ids(ids, GenerationConfig(temperature=0.8, max_tokens=8, ignore_eos=True, seed=3)))
        assert sampled[-1].usage.completion_tokens == 8  # sampling draws from a CUDA generator
        assert backend.logits(ids).shape[0] == len(ids)
