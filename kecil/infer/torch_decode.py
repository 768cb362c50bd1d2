"""The torch backend's decode loop: one forward pass per token over transformers' KV cache, with
every per-token tensor made on the model's device and one device-to-host copy per token.

Not generate(): streaming out of generate() needs a worker thread whose fight for the GIL with
the consumer cost ~6% on a CPU. The sampling steps are transformers' own logits processors in
generate()'s order, so greedy output matches generate() token for token.

What a token costs beyond its forward pass is kept to that one copy (issue 18: on a GPU kecil's
loop ran at a third of generate()'s speed): the prompt, the random generator and the banned ids
live on the model's device, made once, so no step builds a tensor on the CPU and waits for it to
cross over. On a GPU the next forward pass is queued before the host reads the current token
(`lookahead`): the GPU computes while Python detokenizes and streams. On a CPU, where every
operation finishes before the next starts, that would only compute one token nobody may ask for,
so there it is off and a forward pass runs only when the consumer asks for the next token.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from kecil.infer.generation import GenerationConfig


def model_device(model):
    """The device of a model's weights (a transformers model, a PEFT-merged one, kecil's weight-only one)."""
    return next(model.parameters()).device


class DecodeSteps:
    """One sequence's forward passes and sampling, every tensor on the model's device.

    `first()` runs the prompt and picks the first token; `next(token)` feeds a token (a (1, 1) id
    tensor on the device) and picks the one after it. Both return device tensors, never host values,
    so the caller decides when to wait for the GPU."""

    def __init__(self, model, prompt_ids: list[int], config: GenerationConfig, end_ids: Iterable[int]):
        import torch
        from transformers import (
            DynamicCache,
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self._torch, self._model, self._config = torch, model, config
        device = model_device(model)
        self._steps = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            self._steps.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if not config.greedy:
            self._steps.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                self._steps.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                self._steps.append(TopPLogitsWarper(config.top_p))
        banned = sorted(end_ids) if config.ignore_eos else []
        self._banned = torch.tensor(banned, device=device) if banned else None
        seed = config.seed if config.seed is not None else random.getrandbits(32)
        # A CUDA tensor samples only with a CUDA generator; meta (the device tests) has none.
        self._generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
        self._seen = torch.tensor([prompt_ids], device=device)  # only the repetition penalty looks back at it
        self._cache = DynamicCache(config=model.config)

    def first(self):
        return self._pick(self._seen)

    def next(self, token):
        if self._config.repetition_penalty != 1.0:
            self._seen = self._torch.cat([self._seen, token], dim=1)
        return self._pick(token)

    def _pick(self, input_ids):
        torch = self._torch
        out = self._model(input_ids=input_ids, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        scores = self._steps(self._seen, out.logits[:, -1, :].float())
        if self._banned is not None:
            scores.index_fill_(1, self._banned, -float("inf"))
        if self._config.greedy:
            return scores.argmax(dim=-1, keepdim=True)
        return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self._generator)


def decode_tokens(model, prompt_ids: list[int], config: GenerationConfig, end_ids: Iterable[int], *,
                  lookahead: bool | None = None) -> Iterator[int]:
    """Yield new token ids, in this thread, until the consumer stops asking (closing it stops at once).

    `lookahead` (default: on for a GPU) queues the next forward pass before reading each token."""
    import torch

    on_gpu = model_device(model).type == "cuda"
    lookahead = on_gpu if lookahead is None else lookahead

    def to_host(token):
        if not on_gpu:
            return token, None
        # Into pinned memory without waiting; the event marks when this copy (not later work) is done.
        host = token.to("cpu", non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done

    def read(pending) -> int:
        host, done = pending
        if done is not None:
            done.synchronize()
        return int(host)

    steps = DecodeSteps(model, prompt_ids, config, end_ids)
    with torch.inference_mode():
        token = steps.first()
        pending = to_host(token)
        while True:
            ahead = steps.next(token) if lookahead else None
            yield read(pending)
            token = ahead if lookahead else steps.next(token)
            pending = to_host(token)
