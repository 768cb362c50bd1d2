"""The torch backend: Hugging Face folders and GGUF files (dequantized to float) through transformers.

Slower than llama.cpp on a CPU, but it runs anything transformers can load and is where
fine-tuning, adapters and torch-side quantized weights plug in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter

from kecil.errors import BackendError
from kecil.infer.backend import Backend, shared_prefix_length
from kecil.infer.generation import Chunk, GenerationConfig
from kecil.infer.streaming import stream_tokens
from kecil.models.info import ModelInfo
from kecil.models.reference import ModelRef

def load_transformers(ref: ModelRef, device=None):
    """(model, tokenizer) for `ref` through transformers; GGUF weights are dequantized.

    On the CPU (`device` None or cpu) the model computes in float32: half-precision matmuls are
    slow or missing on most CPUs. On a CUDA device (a torch.device from hardware.resolve_device)
    it is loaded straight onto the GPU in bfloat16 (float16 where the GPU lacks bfloat16), never
    widened to float32 on the way.

    The model comes back as a plain float model: a GGUF source's quantization config is dropped,
    since the weights are now ordinary float tensors and transformers would otherwise refuse to
    train or save them (fine-tuning and merging start from here too).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kecil.infer.float_copy import keep_float_copy
    from kecil.infer.hardware import half_dtype

    quiet_transformers()
    on_gpu = device is not None and torch.device(device).type == "cuda"
    placed = dict(dtype=half_dtype(device), device_map=str(device)) if on_gpu else {}
    where, copy = pretrained_source(ref)
    # GGUF weights (or their float copy) are float32: exact weights, float speed.
    dtype = torch.float32 if ref.format == "gguf" else "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        if ref.format == "hf" and (ref.path / "kecil_weight_only.json").is_file():
            from kecil.infer.quantized_linear import load_weight_only

            model = load_weight_only(ref.path)  # int8/int4 weights from `kecil quantize --to int4`
            return (model.to(device) if on_gpu else model), tokenizer
        model = AutoModelForCausalLM.from_pretrained(**where, **{"dtype": dtype, **placed}, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"transformers could not load {ref.path} ({first_line}); check it with `kecil info {ref.spec}`") from None
    if not on_gpu and (model.dtype == torch.bfloat16 or model.dtype == torch.float16):
        # Half-precision matmuls are slow or missing on most CPUs; compute in float32.
        model = model.float()
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.__dict__.pop("quantization_config", None)
    if ref.format == "gguf" and copy is None and not on_gpu:
        keep_float_copy(ref, model, tokenizer)  # the next load of this file takes a second
    return model, tokenizer


def pretrained_source(ref: ModelRef, use_copy: bool = True) -> tuple[dict, Path | None]:
    """transformers' from_pretrained arguments for `ref`'s weights, and the float copy they name if
    any: a GGUF file's float copy when one is kept (kecil/infer/float_copy.py) and `use_copy`, else
    the GGUF file (transformers dequantizes it, slowly) or the Hugging Face folder."""
    from kecil.infer.float_copy import find_float_copy

    copy = find_float_copy(ref) if use_copy else None
    if copy is not None:
        return {"pretrained_model_name_or_path": str(copy)}, copy
    if ref.format == "gguf":
        return {"pretrained_model_name_or_path": str(ref.path.parent), "gguf_file": ref.path.name}, None
    return {"pretrained_model_name_or_path": str(ref.path)}, None


def apply_peft_adapter(model, adapter: Path):
    """`model` with the PEFT LoRA adapter in folder `adapter` merged into its weights.

    Merged rather than kept as side branches: the same outputs (to float rounding) at the base
    model's speed, since every decode step would otherwise pay for the extra low-rank matmuls.
    """
    import warnings

    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise BackendError(
            f"{adapter} is not a PEFT adapter folder (no adapter_config.json): pass the -o folder of `kecil tune`"
        )
    try:
        with warnings.catch_warnings():
            # peft asks transformers a deprecated question (is_gradient_checkpointing) on every wrap:
            # a FutureWarning about library internals, not something the user can act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(
            f"the adapter in {adapter} does not fit {model.config.model_type} model ({first_line}): "
            "use the base model it was trained on"
        ) from None


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda")

    @staticmethod
    def unsupported_reason(ref: ModelRef) -> str | None:
        return None  # transformers reads both Hugging Face folders and GGUF files

    def __init__(self, ref: ModelRef, info: ModelInfo, *, context_length: int, threads: int, adapter: Path | None = None,
                 device: str = "auto"):
        super().__init__(ref, info, context_length)
        import torch

        from kecil.infer.hardware import resolve_device

        torch.set_num_threads(threads)
        self._torch = torch
        self._model, self._tokenizer = load_transformers(ref, resolve_device(device))
        if adapter is not None:
            self._model = apply_peft_adapter(self._model, adapter)
        self._model.eval()
        eos = self._model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self._tokenizer.eos_token_id is not None:
            eos.append(self._tokenizer.eos_token_id)
        self._end_ids = frozenset(eos)
        self._score_cache = None  # the KV cache logits() left, for the ids in _scored_ids
        self._scored_ids: list[int] = []

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self._tokenizer.bos_token_id
        return [bos, *ids] if add_bos and bos is not None else list(ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def is_end(self, token: int) -> bool:
        return token in self._end_ids

    def stream_ids(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[Chunk]:
        config = self.fit_to_context(prompt_ids, config)
        started = perf_counter()
        return stream_tokens(
            self._decode(prompt_ids, config),
            prompt_tokens=len(prompt_ids),
            config=config,
            detokenize=self.detokenize,
            is_end=self.is_end,
            started=started,
        )

    def _decode(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        """New token ids, one forward pass over transformers' KV cache each (kecil/infer/torch_decode.py)."""
        from kecil.infer.torch_decode import decode_tokens

        return decode_tokens(self._model, prompt_ids, config, self._end_ids)

    def logits(self, ids: Sequence[int], *, start: int = 0):
        """Logits for every position from `start` on; the previous call's KV cache is cropped to
        the prefix it shares with `ids` and only the rest is run through the model."""
        torch = self._torch
        from transformers import DynamicCache

        from kecil.infer.torch_decode import model_device

        self.check_logits_request(ids, start)
        ids = [int(t) for t in ids]
        keep = min(shared_prefix_length(self._scored_ids, ids), start)
        cache = self._score_cache
        if cache is not None and keep > 0 and keep < len(self._scored_ids):
            try:
                cache.crop(keep - len(self._scored_ids))
            except (RuntimeError, ValueError):  # a sliding-window layer past its window cannot roll back
                keep = 0
        if cache is None or keep == 0:
            cache, keep = DynamicCache(config=self._model.config), 0
        self._score_cache, self._scored_ids = None, []
        with torch.inference_mode():
            out = self._model(
                input_ids=torch.tensor([ids[keep:]], device=model_device(self._model)),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=len(ids) - start,
            )
        self._score_cache, self._scored_ids = cache, ids
        return out.logits[0].float().cpu().numpy()

    def close(self) -> None:
        self._score_cache = None
        self._model = None
        self._tokenizer = None


def quiet_transformers() -> None:
    """Keep transformers' own logging and progress bars off kecil's output, for this process.

    Its "Converting and de-quantizing GGUF tensors" bar is plain tqdm, past disable_progress_bar():
    it stacked one bar per GGUF load above kecil's own progress (quantize, tune, eval, merge).
    """
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not isinstance(getattr(gguf_loading, "tqdm", None), functools.partial):
        gguf_loading.tqdm = functools.partial(gguf_loading.tqdm, disable=True)
