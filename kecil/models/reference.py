"""Turn what the user typed as MODEL into a checked reference: a built-in, a GGUF file or an HF folder."""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kecil.errors import InvalidModelError, ModelNotFoundError
from kecil.models.architectures import normalise_architecture
from kecil.models.builtins import DEFAULT_MODEL, builtin_names, builtin_path, get_builtin
from kecil.models.hf_dir import check_hf_dir

ModelFormat = Literal["gguf", "hf"]

# org/name with Hugging Face's allowed characters, and the URL spellings of a hub repository.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_URL = re.compile(r"^(hf://|https?://(www\.)?(huggingface\.co|hf\.co)/)", re.IGNORECASE)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin")
# GGUF metadata key of the preset system prompt kecil carries into files it writes from a built-in
# (a quantized copy of smollm2-135m answers as the built-in does); read back when a file is resolved.
SYSTEM_PROMPT_KEY = "kecil.system_prompt"


@dataclass(frozen=True)
class ModelRef:
    """A model kecil has found and checked; every command starts from one."""

    spec: str  # what the user typed ("smollm2-135m", "./x.gguf", "/models/qwen")
    name: str  # short display name: the built-in name, or the file or folder name
    path: Path  # absolute: the .gguf file, or the HF model folder
    format: ModelFormat
    architecture: str  # normalised, see kecil.models.architectures
    builtin: bool = False
    system_prompt: str | None = None  # a built-in's preset (or a GGUF's SYSTEM_PROMPT_KEY), used when a conversation has none


def resolve(spec: str | None = None) -> ModelRef:
    """Find and check the model `spec` names (None means the default built-in), or raise why not.

    A built-in name wins over a file of the same name; then an existing path is checked as a
    GGUF file (by its magic bytes, whatever its extension) or a Hugging Face folder.
    """
    spec = DEFAULT_MODEL if spec is None or not spec.strip() else spec.strip()
    try:
        return _resolve(spec)
    except OSError as error:  # unreadable file, permission denied, I/O error
        raise InvalidModelError(
            f"cannot read {error.filename or spec} ({error.strerror or error}): "
            "check the file's permissions, or copy the model somewhere readable and pass that path"
        ) from None


def _resolve(spec: str) -> ModelRef:
    if spec in builtin_names():
        path = builtin_path(spec)
        preset = get_builtin(spec).system_prompt
        return ModelRef(spec, spec, path, "gguf", _gguf_architecture(path)[0], builtin=True, system_prompt=preset)
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            return ModelRef(spec, path.name, path, "hf", check_hf_dir(path).architecture)
        if path.is_file():
            architecture, preset = _gguf_architecture(path)
            return ModelRef(spec, path.name, path, "gguf", architecture, system_prompt=preset)
        raise InvalidModelError(
            f"{spec} is neither a file nor a folder: pass a .gguf file or a Hugging Face model folder"
        )
    raise ModelNotFoundError(_not_found_message(spec))


def _gguf_architecture(path: Path) -> tuple[str, str | None]:
    """The file's normalised architecture, and the preset system prompt kecil stored in it (if any)."""
    # gguf and numpy cost ~0.15 s to import; only pay it when a GGUF is actually opened.
    from gguf.constants import Keys

    from kecil.models.gguf_header import read_gguf_header

    header = read_gguf_header(path)
    architecture = header.get(Keys.General.ARCHITECTURE)
    if not isinstance(architecture, str) or not architecture:
        raise InvalidModelError(
            f"{path} has no general.architecture in its GGUF metadata, so kecil cannot tell what model it is: "
            "re-convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    name = normalise_architecture(architecture, "gguf")
    if not header.tensors:
        raise InvalidModelError(
            f"{path} has no tensors (a vocabulary-only GGUF?): pass a GGUF file that contains model weights"
        )
    preset = header.get(SYSTEM_PROMPT_KEY)
    return name, preset if isinstance(preset, str) and preset.strip() else None


def _not_found_message(spec: str) -> str:
    """Say why nothing was found, in the words that fit what the user seems to have meant."""
    if _HUB_URL.match(spec) or _HUB_ID.match(spec):
        repo = _HUB_URL.sub("", spec).strip("/")
        repo = "/".join(repo.split("/")[:2]) if "/" in repo else "ORG/NAME"
        return (
            f"'{spec}' looks like a Hugging Face hub id and is not a local folder; kecil runs offline and "
            f"downloads no model but its built-ins (`kecil pull`): on a connected machine run `huggingface-cli download {repo} --local-dir DIR`, "
            f"copy DIR here and pass it, or use a built-in ({', '.join(builtin_names())})"
        )
    if _URL.match(spec):
        return (
            f"'{spec}' is a URL; kecil runs offline and downloads no model but its built-ins (`kecil pull`): download the file on a "
            f"connected machine and pass its local path, or use a built-in ({', '.join(builtin_names())})"
        )
    if "/" in spec or "\\" in spec or spec.startswith(("~", ".")) or spec.endswith(_MODEL_SUFFIXES):
        return (
            f"no such file or directory: {spec}; check the path, or use a built-in model "
            f"({', '.join(builtin_names())}; see `kecil models`)"
        )
    close = difflib.get_close_matches(spec, builtin_names(), n=1, cutoff=0.5)
    suggestion = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"unknown model '{spec}'{suggestion}; built-in models: {', '.join(builtin_names())}; "
        "or give a path to a .gguf file or a Hugging Face model folder"
    )


def model_fingerprint(path: Path) -> str:
    """Identity of a model on disk: path, size and modification time of its file(s). What is
    cached about a model (evaluation results, tune's replay answers) is keyed by it, so a file
    changed in place is a new model."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts = [str(path.resolve())] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
