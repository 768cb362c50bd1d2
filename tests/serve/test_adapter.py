"""`kecil serve --adapter DIR`: a real server on loopback answers with the LoRA applied, on the
torch engine (PEFT folder, Hugging Face base) and on the batched llama.cpp engine (GGUF base,
the adapter.gguf `kecil tune` writes), and differently from the base model. The adapted model
has an id of its own, BASE+NAME, next to the plain base; several adapters can be served."""

from __future__ import annotations

import pytest

from kecil.infer.generation import GenerationConfig
from kecil.infer.load import load_model
from kecil.tune.lora import TuneConfig, tune
from tests.serve.test_server import Server
from tests.tune.helpers import memorisable_chat, write_jsonl

QUESTION = [{"role": "user", "content": "What is the cat?"}]
GREEDY = GenerationConfig(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def trained(tiny_hf_model, tmp_path_factory):
    """(base folder, adapter folder): a tiny llama trained hard enough that its answers change."""
    root = tmp_path_factory.mktemp("serve-adapter")
    data = write_jsonl(root / "d.jsonl", memorisable_chat(8))
    tune(TuneConfig(model=str(tiny_hf_model("llama")), data=data, output=root / "adapter", epochs=4, lr=3e-2,
                    batch_size=1, max_length=48, val_split=0, dropout=0.0))
    return tiny_hf_model("llama"), root / "adapter"


def served_answer(server: Server, model: str) -> str:
    reply = server.client().chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=GREEDY.max_tokens, extra_body={"ignore_eos": True})
    return reply.choices[0].message.content


def local_answer(spec: str, **kw) -> str:
    with load_model(spec, **kw) as model:
        return model.chat(QUESTION, GREEDY).text


@pytest.mark.parametrize("base_format", ["hf", "gguf"])
def test_the_served_model_answers_with_the_adapter(trained, tmp_path, base_format):
    base_dir, adapter = trained
    if base_format == "gguf":
        from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

        spec = str(convert_hf_to_gguf(base_dir, tmp_path / "tiny.gguf", out_type="f32"))
        name, backend = "tiny", "llamacpp"  # served by the batched llama.cpp engine with adapter.gguf
    else:
        spec, name, backend = str(base_dir), base_dir.name, "torch"  # served by the torch engine with the PEFT folder
    adapted = local_answer(spec, adapter=adapter, backend=backend)
    base = local_answer(spec, backend=backend)
    assert adapted != base  # the adapter changes what the model says
    server = Server(tmp_path, spec, "--adapter", str(adapter), "--no-embeddings", "--context", "256")
    try:
        chat = [m.id for m in server.client().models.list().data if m.model_extra.get("kind") == "chat"]
        assert chat == [name, f"{name}+adapter"]  # (knowledge bases other tests made are listed too)
        assert served_answer(server, f"{name}+adapter") == adapted
        assert served_answer(server, name) == base  # the base is still served as itself
    finally:
        server.stop()


def test_a_peft_only_adapter_moves_a_gguf_model_to_torch(trained, tmp_path):
    """Without adapter.gguf the GGUF base is served through transformers (dequantized) with the PEFT adapter."""
    import shutil

    from kecil.infer.load import ADAPTER_GGUF
    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

    base_dir, adapter = trained
    peft_only = tmp_path / "peft-only"
    shutil.copytree(adapter, peft_only, ignore=shutil.ignore_patterns(ADAPTER_GGUF, "checkpoints"))
    spec = str(convert_hf_to_gguf(base_dir, tmp_path / "tiny.gguf", out_type="f32"))
    adapted = local_answer(spec, adapter=peft_only)  # load_model picks torch for a PEFT-only folder
    server = Server(tmp_path, spec, "--adapter", str(peft_only), "--no-embeddings", "--context", "256")
    try:
        assert served_answer(server, "tiny+peft-only") == adapted
    finally:
        server.stop()


def test_several_adapters_are_served_each_under_its_own_id(trained, tmp_path):
    """`adapters` (what `--adapter NAME=PATH`, repeated, gives): each is a model of its own."""
    import shutil

    from fastapi.testclient import TestClient

    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf
    from kecil.serve.app import create_app
    from kecil.serve.config import ServeConfig

    base_dir, adapter = trained
    spec = str(convert_hf_to_gguf(base_dir, tmp_path / "tiny.gguf", out_type="f32"))
    second = tmp_path / "second.gguf"  # a GGUF LoRA file, named after the file
    shutil.copy(adapter / "adapter.gguf", second)
    config = ServeConfig(models=(spec,), adapters=(("support", adapter), ("billing", second)), embedding_model=None,
                         context_length=256, threads=1, parallel=1, audit_log=tmp_path / "audit.jsonl")
    adapted = local_answer(spec, adapter=adapter, backend="llamacpp")
    with TestClient(create_app(config)) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"] if m["kind"] == "chat"]
        assert ids == ["tiny", "tiny+support", "tiny+billing"]
        for model in ids[1:]:
            reply = client.post("/v1/chat/completions", json={"model": model, "messages": QUESTION, "temperature": 0,
                                                              "max_tokens": GREEDY.max_tokens, "ignore_eos": True})
            assert reply.json()["choices"][0]["message"]["content"] == adapted


def test_a_missing_adapter_stops_the_server_at_start(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kecil", "serve", "--adapter", str(tmp_path / "nope"), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "no such adapter" in done.stderr.strip().splitlines()[-1]
