"""The one table of model architectures kecil supports, and how file formats name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kecil.errors import UnsupportedArchitectureError

Source = Literal["gguf", "hf"]


@dataclass(frozen=True)
class Architecture:
    """A supported architecture and the names it goes by in each format."""

    name: str  # kecil's normalised name
    gguf_names: tuple[str, ...]  # values of GGUF `general.architecture`
    hf_model_types: tuple[str, ...]  # values of `model_type` in a Hugging Face config.json


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", gguf_names=("llama",), hf_model_types=("llama",)),
    # llama.cpp converts Mistral 7B-style models to the "llama" graph, so a Mistral GGUF
    # normalises to llama; only a Hugging Face folder still says "mistral".
    Architecture("mistral", gguf_names=(), hf_model_types=("mistral",)),
    Architecture("qwen2", gguf_names=("qwen2",), hf_model_types=("qwen2",)),
    Architecture("qwen3", gguf_names=("qwen3",), hf_model_types=("qwen3",)),
    Architecture("gemma2", gguf_names=("gemma2",), hf_model_types=("gemma2",)),
    # "gemma3" is the multimodal wrapper config (text_config inside); "gemma3_text" the text-only one.
    Architecture("gemma3", gguf_names=("gemma3",), hf_model_types=("gemma3_text", "gemma3")),
    Architecture("phi3", gguf_names=("phi3",), hf_model_types=("phi3",)),
)

_BY_SOURCE: dict[Source, dict[str, str]] = {
    "gguf": {alias: a.name for a in ARCHITECTURES for alias in a.gguf_names},
    "hf": {alias: a.name for a in ARCHITECTURES for alias in a.hf_model_types},
}


def supported_architectures() -> list[str]:
    """The normalised names of every supported architecture, sorted."""
    return sorted(a.name for a in ARCHITECTURES)


def normalise_architecture(value: str, source: Source) -> str:
    """kecil's name for a GGUF `general.architecture` or HF `model_type` value, or an error."""
    name = _BY_SOURCE[source].get(str(value).strip().lower())
    if name is None:
        raise UnsupportedArchitectureError(
            f"architecture '{value}' is not supported by kecil; supported: "
            f"{', '.join(supported_architectures())}. Pick a model of one of these"
        )
    return name
