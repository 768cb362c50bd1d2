"""Writing a finished LoRA run: the PEFT adapter folder, its summary, and the GGUF LoRA for llama.cpp."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kecil.errors import ConfigError

SUMMARY_FILE = "kecil_tune.json"


def write_adapter(model, output: Path, summary: dict) -> None:
    """Write the PEFT adapter files into `output`, each renamed into place whole."""
    output.mkdir(parents=True, exist_ok=True)
    temporary = output / f".tmp-adapter-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(str(temporary), state_dict=_float32_saved_state(model), save_embedding_layers=saves_embeddings(model))
    (temporary / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    # adapter_config.json last: it is what marks the folder as an adapter.
    names = sorted(p.name for p in temporary.iterdir())
    names.sort(key=lambda n: n == "adapter_config.json")
    for name in names:
        os.replace(temporary / name, output / name)
    shutil.rmtree(temporary, ignore_errors=True)


def saves_embeddings(model) -> bool:
    """Whether peft saves the embedding layers (the input embedding, lm_head) along with the LoRA
    weights: when LoRA adapts one of them. peft decides the same by itself when asked "auto", but
    then warns on every save (a UserWarning per checkpoint that users read as a fault) and, for a
    base without a config.json, also warns that it could not find one. Deciding here says nothing."""
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    config = model.peft_config[getattr(model, "active_adapter", "default")]
    targets = config.target_modules or ()
    return any(name in targets for name in EMBEDDING_LAYER_NAMES) if not isinstance(targets, str) else False


def _float32_saved_state(model) -> dict:
    """The model's state with the tensors peft will save in float32. The LoRA matrices are float32
    already; a base layer peft saves along (a tied embedding under an lm_head adapter) of a
    bfloat16 base is cast, so the files match a float32 run. Casting only those, not the whole
    model, spared the end of a run a float32 copy of the base (+300 MiB of peak for SmolLM2-135M)."""
    import torch
    from peft.utils import get_peft_model_state_dict

    state = model.state_dict()
    saved = {id(t) for t in get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=saves_embeddings(model)).values()}
    return {k: v.float() if id(v) in saved and v.is_floating_point() and v.dtype != torch.float32 else v for k, v in state.items()}


def write_gguf_adapter(output: Path, architecture: str, model_config) -> Path | None:
    """Also write the adapter as a GGUF LoRA (for --backend llamacpp), when llama.cpp has a place for it."""
    from kecil.infer.load import ADAPTER_GGUF
    from kecil.tune.gguf_adapter import export_adapter_gguf

    text = getattr(model_config, "text_config", None) or model_config
    try:
        return export_adapter_gguf(
            output, output / ADAPTER_GGUF, architecture=architecture, n_layers=text.num_hidden_layers,
            n_head=text.num_attention_heads, n_kv_head=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        )
    except ConfigError:
        return None  # e.g. a LoRA on lm_head: the PEFT adapter still works with the torch backend
