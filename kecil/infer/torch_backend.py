"""The torch backend: Hugging Face folders and GGUF files (dequantized to float) through transformers.

Slower than llama.cpp on a CPU, but it runs anything transformers can load and is where
fine-tuning, adapters and torch-side quantized weights plug in.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator, Sequence
from time import perf_counter

from kecil.errors import BackendError
from kecil.infer.backend import Backend
from kecil.infer.chat_template import ChatTemplate
from kecil.infer.generation import Chunk, GenerationConfig
from kecil.infer.streaming import stream_tokens
from kecil.models.info import ModelInfo
from kecil.models.reference import ModelRef

_DONE = object()


class TorchBackend(Backend):
    name = "torch"

    @staticmethod
    def unsupported_reason(ref: ModelRef) -> str | None:
        return None  # transformers reads both Hugging Face folders and GGUF files

    def __init__(self, ref: ModelRef, info: ModelInfo, *, context_length: int, threads: int):
        super().__init__(ref, context_length)
        self.info = info
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self._torch = torch
        if ref.format == "gguf":
            # transformers dequantizes GGUF weights to float32: exact weights, float speed.
            where = dict(pretrained_model_name_or_path=str(ref.path.parent), gguf_file=ref.path.name)
            dtype = torch.float32
        else:
            where = dict(pretrained_model_name_or_path=str(ref.path))
            dtype = "auto"
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(**where)
            self._model = AutoModelForCausalLM.from_pretrained(**where, dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"transformers could not load {ref.path} ({first_line}); check it with `kecil info {ref.spec}`") from None
        self._model.eval()
        if self._model.dtype == torch.bfloat16 or self._model.dtype == torch.float16:
            # Half-precision matmuls are slow or missing on most CPUs; compute in float32.
            self._model = self._model.float()
        self._template = (
            ChatTemplate(info.chat_template, info.bos_token, info.eos_token) if info.chat_template else None
        )
        eos = self._model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self._tokenizer.eos_token_id is not None:
            eos.append(self._tokenizer.eos_token_id)
        self._end_ids = frozenset(eos)

    @property
    def chat_template(self) -> ChatTemplate | None:
        return self._template

    @property
    def adds_bos(self) -> bool:
        return self.info.add_bos

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
            self._generate_thread(prompt_ids, config),
            prompt_tokens=len(prompt_ids),
            config=config,
            detokenize=self.detokenize,
            is_end=self.is_end,
            started=started,
        )

    def _generate_thread(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        """Runs transformers' generate() in a worker thread and yields each new token id.

        Closing this iterator (the consumer hit a stop sequence, or went away) stops generate()
        at its next step through a stopping criterion.
        """
        torch = self._torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        out: queue.Queue = queue.Queue()
        cancelled = threading.Event()

        class Streamer(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # generate() first hands over the prompt itself
                    self.first = False
                    return
                for token in value.reshape(-1).tolist():
                    out.put(token)

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        kwargs = dict(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=config.max_tokens,
            repetition_penalty=config.repetition_penalty,
            streamer=Streamer(),
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            pad_token_id=self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else min(self._end_ids, default=0),
        )
        if config.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or None)
        if config.ignore_eos:
            kwargs["min_new_tokens"] = config.max_tokens
        seed = config.seed if config.seed is not None else random.getrandbits(32)

        def work():
            try:
                with torch.inference_mode():
                    torch.manual_seed(seed)
                    self._model.generate(**kwargs)
            except Exception as exc:  # handed to the consumer thread, raised there
                out.put(exc)
            finally:
                out.put(_DONE)

        worker = threading.Thread(target=work, name="kecil-torch-generate", daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise BackendError(f"generation failed in transformers: {item}") from item
                yield item
        finally:
            cancelled.set()
            worker.join()

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
