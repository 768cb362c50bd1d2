"""Baking a LoRA adapter into its base model: `merge(MergeConfig(...))` writes a standalone model.

The merged weights are W + (alpha / r) · B·A for every adapted layer, so the merged model gives
the base-plus-adapter outputs (to float rounding) with no adapter at run time. The output is a
Hugging Face folder; `export_gguf` also writes it as a GGUF file of any quantization type for
llama.cpp, through kecil's own converter and quantizer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kecil.errors import ConfigError
from kecil.infer.hardware import check_device_name, device_field

GGUF_TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")


@dataclass(frozen=True)
class MergeConfig:
    model: str = field(metadata={"help": "The base model the adapter was trained on."})
    adapter: Path = field(metadata={"help": "The adapter folder written by `kecil tune`."})
    # written whole, then renamed into place
    output: Path = field(metadata={"help": "Folder for the merged Hugging Face model."})
    export_gguf: str | None = field(default=None, metadata={
        "help": "Also write the merged model as GGUF of this type (f16, q8_0, q4_k_m, ...) into the output folder, as model-TYPE.gguf."})
    # On a GPU the merge runs (and the merged weights are saved) in bfloat16; on the CPU in float32.
    device: str = device_field()

    def __post_init__(self) -> None:
        check_device_name(self.device)
        if self.export_gguf is not None and self.export_gguf.lower() not in GGUF_TYPES:
            raise ConfigError(f"unknown GGUF type {self.export_gguf!r}; choose one of: {', '.join(GGUF_TYPES)}")


@dataclass(frozen=True)
class MergeResult:
    output: Path
    gguf: Path | None


# Quantizing to k-quants lives in kecil.compress, a sibling floor tune must not import: the caller
# (the CLI) passes kecil.compress.quantize in as (merged HF folder, type, target, progress) -> written GGUF.
Quantizer = Callable[[Path, str, Path, "Progress | None"], Path]
CONVERTER_TYPES = ("f16", "q8_0")  # written by the converter itself, no quantizer needed


# progress(stage, done, total): kecil's stage callback (kecil/cli/common.py stage_bars draws it).
# Merging reports "load", "merge" and "save"; the GGUF export "convert" (f16/q8_0: tensors written)
# or the quantizer's own stages. Before, `--export-gguf` sat silent for minutes.
Progress = Callable[[str, int, int], None]


def merge(config: MergeConfig, *, quantizer: Quantizer | None = None, progress: Progress | None = None) -> MergeResult:
    """Merge `config.adapter` into `config.model` and save the result to `config.output`, reporting
    each stage to `progress` (see Progress); `quantizer` gets the same callback."""
    from kecil.infer.hardware import resolve_device
    from kecil.infer.load import adapter_for_backend
    from kecil.infer.torch_backend import apply_peft_adapter, load_transformers
    from kecil.models.reference import resolve

    output = Path(config.output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output} already exists and is not empty: choose another -o folder or remove it")
    out_type = config.export_gguf.lower() if config.export_gguf else None
    if out_type and out_type not in CONVERTER_TYPES and quantizer is None:
        raise ConfigError(f"GGUF type {out_type} needs kecil's quantizer: use `kecil merge ... --export-gguf {out_type}`")
    adapter = adapter_for_backend(Path(config.adapter).expanduser(), "torch")
    ref = resolve(config.model)
    report = progress or (lambda stage, done, total: None)
    report("load", 0, 1)
    model, tokenizer = load_transformers(ref, resolve_device(config.device))
    report("load", 1, 1)
    report("merge", 0, 1)
    model = apply_peft_adapter(model, adapter)
    report("merge", 1, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.parent / f".tmp-{output.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    report("save", 0, 1)
    model.save_pretrained(str(temporary), safe_serialization=True)
    tokenizer.save_pretrained(str(temporary))
    report("save", 1, 1)
    del model
    gguf_name = None
    if out_type:
        gguf_name = f"{output.name}-{out_type}.gguf"
        export_gguf(temporary, temporary / gguf_name, out_type, quantizer, progress)
    if output.exists():
        output.rmdir()  # empty, checked above
    os.replace(temporary, output)
    return MergeResult(output, output / gguf_name if gguf_name else None)


def export_gguf(hf_dir: Path, target: Path, out_type: str, quantizer: Quantizer | None = None, progress: Progress | None = None) -> Path:
    """Write the Hugging Face model in `hf_dir` as a GGUF of `out_type` at `target`."""
    from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf

    if out_type in CONVERTER_TYPES:
        converted = (lambda done, total: progress("convert", done, total)) if progress else None
        return Path(convert_hf_to_gguf(hf_dir, target, out_type=out_type, progress=converted))
    return Path(quantizer(hf_dir, out_type, target, progress))
