"""Adapters at inference: merged model == base + adapter, through load_model, merge and llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from kecil.cli.tune import MERGE_STAGES
from kecil.errors import ConfigError
from kecil.infer.generation import GenerationConfig
from kecil.infer.load import ADAPTER_GGUF, load_model
from kecil.tune.lora import TuneConfig, tune
from kecil.tune.merge import MergeConfig, merge
from tests.tune.helpers import memorisable_chat, write_jsonl

PROMPT_IDS = [5, 40, 77, 120, 33, 250, 18, 99, 301, 64]


@pytest.fixture(scope="module")
def trained(tiny_hf_model, tmp_path_factory):
    """(base folder, adapter folder) for each of a llama and a qwen2 tiny model, trained hard enough
    that the adapter visibly changes the outputs."""
    made = {}

    def get(arch):
        if arch not in made:
            root = tmp_path_factory.mktemp(f"adapter-{arch}")
            data = write_jsonl(root / "d.jsonl", memorisable_chat(8))
            tune(TuneConfig(model=str(tiny_hf_model(arch)), data=data, output=root / "adapter", epochs=4, lr=3e-2,
                            batch_size=1, max_length=48, val_split=0, dropout=0.0, mix_general=0, check_general=False))
            made[arch] = (tiny_hf_model(arch), root / "adapter")
        return made[arch]

    return get


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_merged_model_equals_base_plus_adapter(trained, tmp_path, arch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, adapter = trained(arch)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    plain = _logits(base, PROMPT_IDS)
    with_adapter = _logits(PeftModel.from_pretrained(base, str(adapter)).eval(), PROMPT_IDS)
    assert not torch.allclose(plain, with_adapter, atol=1e-2)  # the adapter does something
    result = merge(MergeConfig(model=str(base_dir), adapter=adapter, output=tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(result.output).eval()
    assert torch.allclose(_logits(merged, PROMPT_IDS), with_adapter, atol=1e-4)
    assert (result.output / "tokenizer.json").is_file() and result.gguf is None
    with pytest.raises(ConfigError, match="not empty"):
        merge(MergeConfig(model=str(base_dir), adapter=adapter, output=tmp_path / "merged"))


def test_load_model_with_adapter_generates_as_the_merged_model(trained, tmp_path):
    base_dir, adapter = trained("llama")
    merged = merge(MergeConfig(model=str(base_dir), adapter=adapter, output=tmp_path / "merged")).output
    config = GenerationConfig(temperature=0, max_tokens=12, ignore_eos=True)
    with load_model(str(base_dir), adapter=adapter) as model:
        assert model.name == "torch"
        adapted = model.generate("The cat", config).text
    with load_model(str(merged)) as model:
        assert model.generate("The cat", config).text == adapted
    with load_model(str(base_dir)) as model:
        assert model.generate("The cat", config).text != adapted


def test_bad_adapters_are_refused_clearly(tiny_hf_model, tmp_path):
    with pytest.raises(ConfigError, match="no such adapter"):
        load_model(str(tiny_hf_model("llama")), adapter=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="adapter_config.json"):
        load_model(str(tiny_hf_model("llama")), adapter=tmp_path / "empty", backend="torch")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_lora_in_llama_cpp_matches_the_peft_adapter(trained, tmp_path, arch):
    """The adapter.gguf `kecil tune` writes, applied by llama.cpp to the base model as GGUF, gives
    the logits transformers gives with the PEFT adapter (Q/K row order included for llama)."""
    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kecil.infer.llamacpp_runtime import import_llama_cpp
    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

    base_dir, adapter = trained(arch)
    assert (adapter / ADAPTER_GGUF).is_file()
    base_gguf = convert_hf_to_gguf(base_dir, tmp_path / "base.gguf", out_type="f32")
    expected = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter)).eval(), PROMPT_IDS).numpy()
    llama_cpp = import_llama_cpp()
    results = {}
    for name, lora in (("base", None), ("adapted", str(adapter / ADAPTER_GGUF))):
        llm = llama_cpp.Llama(model_path=str(base_gguf), lora_path=lora, n_ctx=64, logits_all=True, verbose=False, n_threads=1)
        llm.eval(PROMPT_IDS)
        results[name] = np.array(llm.scores[: len(PROMPT_IDS)])
        llm.close()
    assert np.abs(results["adapted"] - expected).max() < 1e-3
    assert np.abs(results["base"] - expected).max() > 1e-2


def test_generate_and_chat_commands_take_the_adapter(trained, tmp_path):
    import subprocess
    import sys

    base_dir, adapter = trained("llama")
    merged = merge(MergeConfig(model=str(base_dir), adapter=adapter, output=tmp_path / "merged")).output

    def kecil(*args, stdin=None):
        done = subprocess.run([sys.executable, "-m", "kecil", *args], input=stdin, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    greedy = ["--temperature", "0", "--max-tokens", "8"]
    adapted = kecil("generate", str(base_dir), "What is the cat?", *greedy, "--adapter", str(adapter))
    assert adapted == kecil("generate", str(merged), "What is the cat?", *greedy)
    assert adapted != kecil("generate", str(base_dir), "What is the cat?", *greedy)
    chatted = kecil("chat", str(base_dir), *greedy, "--adapter", str(adapter), stdin="What is the cat?\n/exit\n")
    assert chatted.strip() == adapted.strip()


def test_merge_exports_q4_k_m_that_llama_cpp_runs_like_the_merged_model(tiny_hf_model, tmp_path):
    """`kecil merge --export-gguf q4_k_m`: rows of 256 columns, so the k-quant really applies (the
    shared tiny models are 64 wide); llama.cpp's logits from the GGUF follow the merged HF model's."""
    import subprocess
    import sys

    import numpy as np
    import torch
    import transformers
    from gguf import GGMLQuantizationType, GGUFReader

    from kecil.infer.llamacpp_runtime import import_llama_cpp

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_hf_model("llama"))
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    base = tmp_path / "wide"
    transformers.LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = write_jsonl(tmp_path / "d.jsonl", memorisable_chat(8))
    tune(TuneConfig(model=str(base), data=data, output=tmp_path / "adapter", epochs=2, lr=3e-2, batch_size=1, max_length=48,
                    val_split=0, dropout=0.0, threads=1, precision="float32", mix_general=0, check_general=False))  # the thresholds below were set on this adapter
    done = subprocess.run([sys.executable, "-m", "kecil", "merge", str(base), str(tmp_path / "adapter"), "-o", str(tmp_path / "merged"),
                           "--export-gguf", "q4_k_m"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    # Each phase says when it starts and ends (stderr is not a terminal here: lines, not bars), and
    # nothing else reaches the user: no library warnings, no transformers progress bars.
    for stage in ("loading the base model", "merging the adapter", "writing the merged model", "converting to GGUF", "quantizing"):
        assert f"{stage}: 0/" in done.stderr or f"{stage}: 1/" in done.stderr, (stage, done.stderr)
    assert all(line.split(": ")[0] in MERGE_STAGES.values() for line in done.stderr.splitlines()), done.stderr
    merged, gguf = (Path(line) for line in done.stdout.split())
    assert gguf.name == "merged-q4_k_m.gguf" and gguf.parent == merged
    assert GGMLQuantizationType.Q4_K in {t.tensor_type for t in GGUFReader(gguf).tensors}

    from transformers import AutoModelForCausalLM

    expected = _logits(AutoModelForCausalLM.from_pretrained(merged).eval(), PROMPT_IDS).numpy()
    llm = import_llama_cpp().Llama(model_path=str(gguf), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    llm.eval(PROMPT_IDS)
    got = np.array(llm.scores[: len(PROMPT_IDS)])
    llm.close()
    for row, want in zip(got, expected):  # 4-bit weights move the logits a little, not their shape
        assert np.corrcoef(row, want)[0, 1] > 0.95
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.8
