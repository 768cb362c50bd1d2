"""The llama.cpp backend: GGUF models through llama-cpp-python, the fast path on a CPU."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter

from kecil.errors import BackendError
from kecil.infer.backend import Backend, shared_prefix_length
from kecil.infer.generation import Chunk, GenerationConfig
from kecil.infer.llamacpp_runtime import import_llama_cpp
from kecil.infer.speculative import SpeculativeConfig
from kecil.infer.streaming import stream_tokens
from kecil.models.info import ModelInfo
from kecil.models.reference import ModelRef


class LlamaCppBackend(Backend):
    name = "llamacpp"

    @staticmethod
    def unsupported_reason(ref: ModelRef) -> str | None:
        if ref.format != "gguf":
            return "the llamacpp backend runs GGUF files; use --backend torch for a Hugging Face folder"
        return None

    def __init__(self, ref: ModelRef, info: ModelInfo, *, context_length: int, threads: int, adapter: Path | None = None,
                 draft: str | None = None, speculative: SpeculativeConfig | None = None):
        super().__init__(ref, info, context_length)
        self._drafter = self._sequence = None
        llama_cpp = import_llama_cpp()
        self._llama_cpp = llama_cpp
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(ref.path),
                n_ctx=context_length,
                n_batch=min(512, context_length),
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=0,
                # On, as in llama.cpp's own tools; llama-cpp-python's constructor turns it off.
                # Measured here with llama-bench: prompt +7% (+16% after 512 tokens of context),
                # decode +3% from an empty context and -3% after 512 tokens.
                flash_attn=True,
                lora_path=str(adapter) if adapter is not None else None,  # a GGUF LoRA file
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(
                f"llama.cpp could not load {ref.path} ({exc}); check the file with `kecil info {ref.spec}`"
                " or try --backend torch"
            ) from None
        self._vocab = self._llm._model.vocab
        self._score_batch = None  # a llama_batch for logits(), made on first use
        self._scored_ids: list[int] = []  # what logits() left in the KV cache
        self.speculative = speculative or SpeculativeConfig()
        self.speculation: dict = {}  # rounds, drafted and accepted tokens of the last speculative generation
        if draft is not None:
            from kecil.infer.drafting import LlamaSequence, open_drafter

            self._drafter = open_drafter(draft, target_vocab=self._vocab, target_name=ref.name,
                                         context_length=context_length, threads=threads, spec=self.speculative)
            self._sequence = LlamaSequence(llama_cpp, self._llm._ctx.ctx, self._llm.n_vocab())

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def is_end(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def stream_ids(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[Chunk]:
        config = self.fit_to_context(prompt_ids, config)
        if self._drafter is not None:
            return self._stream_speculative(prompt_ids, config)
        # llama.cpp seeds its sampler when the sampler is built: a fresh seed per call unless
        # the caller fixed one, so unseeded runs differ and seeded runs repeat exactly.
        self._llm.set_seed(config.seed if config.seed is not None else random.getrandbits(32))
        if not config.reuse_prefix:
            self._llm.reset()  # generate() then evaluates the whole prompt as on a fresh model
        started = perf_counter()
        tokens = self._llm.generate(
            prompt_ids,
            top_k=config.top_k,
            top_p=config.top_p,
            min_p=0.0,  # llama-cpp-python defaults to 0.05; kecil's samplers match transformers'
            typical_p=1.0,
            temp=config.temperature,
            repeat_penalty=config.repetition_penalty,
        )
        return stream_tokens(
            tokens,
            prompt_tokens=len(prompt_ids),
            config=config,
            detokenize=self.detokenize,
            is_end=self.is_end,
            started=started,
        )

    def _stream_speculative(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[Chunk]:
        import numpy as np

        from kecil.infer.speculative import speculate

        sequence, started = self._sequence, perf_counter()
        if not config.reuse_prefix or self._llm.n_tokens != 0 or self._scored_ids:
            sequence.cut(0)  # evaluate the prompt afresh (generate() or logits() may have used the cache)
        self._llm.reset()
        self._scored_ids = []
        sequence.follow(prompt_ids[:-1], logits=False)
        self.speculation = {}
        tokens = speculate(sequence, self._drafter, prompt_ids, config, self.speculative,
                           np.random.default_rng(config.seed), is_end=self.is_end, stats=self.speculation)
        return stream_tokens(tokens, prompt_tokens=len(prompt_ids), config=config, detokenize=self.detokenize,
                             is_end=self.is_end, started=started)

    def logits(self, ids: Sequence[int], *, start: int = 0):
        """Logits for every position from `start` on, through llama.cpp's batch API on this
        model's own context (the high-level Llama keeps only the last row). The KV cache of the
        previous call is reused up to the prefix it shares with `ids`."""
        import numpy as np

        self.check_logits_request(ids, start)
        ids = [int(t) for t in ids]
        lib, llm = self._llama_cpp, self._llm
        ctx = llm._ctx.ctx
        memory = lib.llama_get_memory(ctx)
        # generate() leaves n_tokens > 0: then the cache holds its tokens, not the last scoring's.
        cached = self._scored_ids if llm.n_tokens == 0 else []
        keep = min(shared_prefix_length(cached, ids), start)
        if not lib.llama_memory_seq_rm(memory, -1, keep, -1):  # some caches cannot cut mid-way
            lib.llama_memory_clear(memory, True)
            keep = 0
        llm.reset()  # generate() must not trust its own record of the cache after this
        if self._sequence is not None:
            self._sequence.ids = []  # nor speculation
        self._scored_ids = ids[:keep]
        n_batch = lib.llama_n_batch(ctx)
        if self._score_batch is None:
            self._score_batch = lib.llama_batch_init(n_batch, 0, 1)
        batch = self._score_batch
        n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        out = np.empty((len(ids) - start, n_vocab), dtype=np.float32)
        for begin in range(keep, len(ids), n_batch):
            piece = ids[begin : begin + n_batch]
            for k, token in enumerate(piece):
                batch.token[k] = token
                batch.pos[k] = begin + k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = begin + k >= start
            batch.n_tokens = len(piece)
            status = lib.llama_decode(ctx, batch)
            if status != 0:
                self._scored_ids = []
                lib.llama_memory_clear(memory, True)
                raise BackendError(f"llama.cpp failed to evaluate {len(piece)} tokens (llama_decode returned {status})")
            for k in range(max(0, start - begin), len(piece)):
                row = lib.llama_get_logits_ith(ctx, k)
                out[begin + k - start] = np.ctypeslib.as_array(row, shape=(n_vocab,))
            self._scored_ids = ids[: begin + len(piece)]
        return out

    def close(self) -> None:
        for name in ("_drafter", "_sequence"):
            part = getattr(self, name, None)
            if part is not None:
                setattr(self, name, None)
                part.close()
        batch, self._score_batch = getattr(self, "_score_batch", None), None
        if batch is not None:
            self._llama_cpp.llama_batch_free(batch)
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()
