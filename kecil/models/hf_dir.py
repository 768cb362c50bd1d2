"""Check that a folder is a usable Hugging Face model: config, intact weights and a tokenizer.

Everything here reads JSON and safetensors headers by hand, so checking a folder costs a few
small reads and never imports torch or transformers.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kecil.errors import InvalidModelError
from kecil.models.architectures import normalise_architecture

# The safetensors format caps its JSON header at 100 MB; a bigger length prefix is garbage.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# Any of these makes a folder's tokenizer loadable (fast tokenizer, SentencePiece, BPE/WordPiece vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


@dataclass(frozen=True)
class SafetensorsTensor:
    """One entry of a safetensors header."""

    name: str
    dtype: str  # safetensors spelling: "F32", "BF16", ...
    shape: tuple[int, ...]
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """The tensor table of one .safetensors file."""

    path: Path
    tensors: tuple[SafetensorsTensor, ...]
    metadata: Mapping[str, str]
    data_start: int  # 8 + the JSON header's length
    data_end: int  # where the last tensor's bytes end: the smallest size a whole file has


@dataclass(frozen=True)
class HFModelDir:
    """A checked Hugging Face model folder."""

    path: Path
    config: Mapping[str, Any]
    architecture: str  # normalised
    weight_files: tuple[Path, ...]
    safetensors: tuple[SafetensorsHeader, ...]  # empty when the weights are pytorch_model*.bin
    tokenizer_files: tuple[Path, ...]

    @property
    def text_config(self) -> Mapping[str, Any]:
        """The language model's settings: `text_config` of a multimodal wrapper, else the config."""
        inner = self.config.get("text_config")
        return inner if isinstance(inner, Mapping) else self.config


def check_hf_dir(path: Path) -> HFModelDir:
    """Check the folder at `path` is a complete HF causal LM kecil supports, or raise saying why."""
    config = _read_config(path)
    model_type = config.get("model_type")
    if not model_type or not isinstance(model_type, str):
        raise InvalidModelError(
            f"{path / 'config.json'} has no model_type, so kecil cannot tell the architecture: "
            "re-download config.json from the model's original repository"
        )
    architecture = normalise_architecture(model_type, "hf")
    weight_files = _weight_files(path)
    headers = tuple(read_safetensors_header(f) for f in weight_files if f.suffix == ".safetensors")
    tokenizer_files = tuple(p for p in sorted(path.iterdir()) if _is_tokenizer_file(p.name))
    if not tokenizer_files:
        raise InvalidModelError(
            f"{path} has no tokenizer files (tokenizer.json, tokenizer.model or vocab files): "
            "copy them from the original model into the folder"
        )
    return HFModelDir(path, MappingProxyType(config), architecture, weight_files, headers, tokenizer_files)


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse a .safetensors header and check the file holds every byte it promises."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise _truncated(path, 8, size)
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_SAFETENSORS_HEADER:
            raise _unreadable(path, f"it claims a {length}-byte header")
        raw = file.read(length)
    if len(raw) < length:
        raise _truncated(path, 8 + length, size)
    try:
        table = json.loads(raw)
        if not isinstance(table, dict):
            raise ValueError("the header is not a JSON object")
        metadata = table.pop("__metadata__", None) or {}
        tensors, data_end = [], 0
        for name, entry in table.items():
            begin, end = (int(offset) for offset in entry["data_offsets"])
            if not 0 <= begin <= end:
                raise ValueError(f"tensor {name} has data_offsets [{begin}, {end}]")
            shape = tuple(int(dim) for dim in entry["shape"])
            tensors.append(SafetensorsTensor(name, str(entry["dtype"]), shape, end - begin))
            data_end = max(data_end, end)
    except KeyError as error:
        raise _unreadable(path, f"an entry has no {error}") from None
    except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise _unreadable(path, str(error).splitlines()[0]) from None
    data_start = 8 + length
    header = SafetensorsHeader(path, tuple(tensors), MappingProxyType(metadata), data_start, data_start + data_end)
    if header.data_end > size:
        raise _truncated(path, header.data_end, size)
    return header


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if ggufs:
            raise InvalidModelError(
                f"{path} has no config.json but contains {ggufs[0]}: pass the .gguf file instead "
                f"(e.g. {path / ggufs[0]})"
            )
        raise InvalidModelError(
            f"{path} has no config.json, so it is not a Hugging Face model folder: pass a folder with "
            "config.json, weights and tokenizer files, or a .gguf file"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidModelError(
            f"{config_path} is not valid JSON ({str(error).splitlines()[0]}): "
            "re-download it from the model's original repository"
        ) from None
    if not isinstance(config, dict):
        raise InvalidModelError(
            f"{config_path} is not a JSON object: re-download it from the model's original repository"
        )
    return config


def _weight_files(path: Path) -> tuple[Path, ...]:
    """The files transformers would load, refusing a folder with none or with missing shards."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index_name).is_file():
            return _sharded(path, path / index_name)
    if (path / "model.safetensors").is_file():
        return (path / "model.safetensors",)
    # consolidated*.safetensors is Mistral's original-format copy of the same weights, not for transformers.
    safetensors = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("consolidated"))
    if safetensors:
        return tuple(safetensors)
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        return tuple(bins)
    raise InvalidModelError(
        f"{path} has no weight files (*.safetensors or pytorch_model*.bin): "
        "copy the model's weights into the folder, or re-download the whole model"
    )


def _sharded(path: Path, index: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidModelError(
            f"{index} is not a valid shard index: re-download it from the model's original repository"
        ) from None
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise InvalidModelError(
            f"{path} is missing {len(missing)} of {len(names)} weight shards listed in {index.name} "
            f"(first: {missing[0]}): finish the download or re-download the model"
        )
    return tuple(path / name for name in names)


def _is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or name.startswith("tokenizer.model") or name.endswith(".tiktoken")


def _truncated(path: Path, expected: int, present: int) -> InvalidModelError:
    return InvalidModelError(
        f"{path} is truncated: it should hold {expected} bytes but has {present} "
        f"({expected - present} missing): re-download the file"
    )


def _unreadable(path: Path, detail: str) -> InvalidModelError:
    return InvalidModelError(
        f"{path} has an unreadable safetensors header ({detail}): re-download the file"
    )
