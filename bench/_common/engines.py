"""The in-process engines the generate benchmark times, each loaded and measured the same way.

Every engine has the same shape: loading it is constructing it; `tokenize` turns text into ids
the way that engine would; `run` processes one prompt and decodes a fixed number of tokens,
returning its own prompt and decode speeds. `measure` drives one engine inside a worker
process and returns plain numbers for the parent to report.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common.llama_tools import cpu_variant
from _common.model import MODEL_NAME, benchmark_text, default_gguf, digest, prompt_windows

CONTEXT_LENGTH = 2048
WARMUP_NEW_TOKENS = 8
REPO_ROOT = Path(__file__).resolve().parents[2]


class Skipped(Exception):
    """The engine cannot run here (a package is missing); reported as skipped, not failed."""


@dataclass(frozen=True)
class RunTiming:
    prompt_tokens: int
    prompt_tokens_per_s: float
    new_tokens: int  # tokens actually produced
    decode_tokens_per_s: float  # over the tokens after the first, whose cost is the prompt's


class KecilEngine:
    """kecil's own backend, driven through its public API exactly as `kecil generate` does.
    kecil finds the model by its name (the same embedded GGUF), so `gguf` is not used."""

    def __init__(self, backend: str, gguf: Path, threads: int):
        if backend == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
            raise Skipped("llama_cpp is not installed, so kecil's llamacpp backend cannot run")
        if str(REPO_ROOT) not in sys.path:  # benchmark this checkout even when not pip-installed
            sys.path.insert(0, str(REPO_ROOT))
        try:
            from kecil.infer.generation import GenerationConfig
            from kecil.infer.load import load_model
        except ImportError as exc:
            raise Skipped(f"kecil.infer.load is not importable yet ({exc})") from None
        self._config = GenerationConfig
        self.backend = load_model(MODEL_NAME, backend=backend, context_length=CONTEXT_LENGTH, threads=threads)

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        return self.backend.tokenize(text, add_bos=add_bos and self.backend.adds_bos)

    def run(self, ids: list[int], new_tokens: int) -> RunTiming:
        config = self._config(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        final = None
        for final in self.backend.stream_ids(ids, config):
            pass
        t = final.timings
        return RunTiming(t.prompt_tokens, t.prompt_tokens_per_second, final.usage.completion_tokens,
                         t.decode_tokens_per_second)  # fmt: skip


class LlamaCppPython:
    """llama-cpp-python used directly: the engine under kecil's llamacpp backend, minus kecil."""

    def __init__(self, gguf: Path, threads: int):
        if importlib.util.find_spec("llama_cpp") is None:
            raise Skipped("llama_cpp is not installed")
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        # kecil's build keeps ggml's CPU variants where ggml does not look, so a bare Llama()
        # finds no backend: register the same variant kecil would (setup only, not the hot path).
        from kecil.infer.llamacpp_runtime import import_llama_cpp

        llama_cpp = import_llama_cpp()
        # n_threads_batch is given too: its default is every logical CPU, n_threads' is half.
        self.llm = llama_cpp.Llama(
            model_path=str(gguf), n_ctx=CONTEXT_LENGTH, n_threads=threads, n_threads_batch=threads,
            n_batch=512, verbose=False,
        )  # fmt: skip

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        # llama.cpp adds a BOS only when the model's vocabulary asks for one.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def run(self, ids: list[int], new_tokens: int) -> RunTiming:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        prompt_done = time.perf_counter()
        # The prompt is now exactly what is cached, so create_completion samples straight from its
        # logits: this call's time is the decode alone (one forward pass per token after the first).
        out = self.llm.create_completion(ids, max_tokens=new_tokens, temperature=0.0)
        done = time.perf_counter()
        produced = out["usage"]["completion_tokens"]
        return RunTiming(len(ids), len(ids) / (prompt_done - start), produced,
                         (produced - 1) / (done - prompt_done))  # fmt: skip


class Transformers:
    """Plain transformers: the GGUF dequantized to float32, then `generate`."""

    def __init__(self, gguf: Path, threads: int):
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise Skipped(f"torch/transformers are not installed ({exc})") from None
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity_error()  # generation-flag warnings would flood stderr
        self.torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        ).eval()

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_bos).input_ids

    def _generate(self, ids: list[int], new_tokens: int) -> tuple[float, int]:
        torch = self.torch
        input_ids = torch.tensor([ids])
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens,  # no early end-of-sequence
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )  # fmt: skip
        return time.perf_counter() - start, out.shape[1] - len(ids)

    def run(self, ids: list[int], new_tokens: int) -> RunTiming:
        # generate() has no timing split, so the prompt is timed as a one-token generate and the
        # decode as the difference to a full one.
        prompt_seconds, _ = self._generate(ids, 1)
        total_seconds, produced = self._generate(ids, new_tokens)
        return RunTiming(len(ids), len(ids) / prompt_seconds, produced,
                         (produced - 1) / (total_seconds - prompt_seconds))  # fmt: skip


ENGINES = {
    "kecil-llamacpp": lambda gguf, threads: KecilEngine("llamacpp", gguf, threads),
    "kecil-torch": lambda gguf, threads: KecilEngine("torch", gguf, threads),
    "llama-cpp-python": LlamaCppPython,
    "transformers": Transformers,
}


def measure(engine: str, *, threads: int, prompt_tokens: int, new_tokens: int, runs: int) -> dict:
    """Load `engine` (timed from before its imports), then time one warm-up and
    `runs` measured generations, each on a different window of the same text."""
    gguf = default_gguf()
    start = time.perf_counter()
    try:
        session = ENGINES[engine](gguf, threads)
    except Skipped as exc:
        return {"engine": engine, "status": "skipped", "reason": str(exc)}
    result = {"engine": engine, "status": "ok", "load_seconds": time.perf_counter() - start}

    text = benchmark_text()
    with_bos, body = session.tokenize(text, True), session.tokenize(text, False)
    bos = with_bos[: len(with_bos) - len(body)]
    warmup, *windows = prompt_windows(bos, body, prompt_tokens, runs + 1)
    session.run(warmup, WARMUP_NEW_TOKENS)
    timings = [session.run(ids, new_tokens) for ids in windows]
    # The same decode from a one-token prompt: llama-bench's tg test starts from an empty context.
    from_empty = [session.run(ids[:1], new_tokens) for ids in windows]
    result.update(
        decode_d0_tokens_per_s=[t.decode_tokens_per_s for t in from_empty],
        prompt_digest=digest(windows),
        prompt_tokens=[t.prompt_tokens for t in timings],
        prompt_tokens_per_s=[t.prompt_tokens_per_s for t in timings],
        new_tokens=[t.new_tokens for t in timings],
        decode_tokens_per_s=[t.decode_tokens_per_s for t in timings],
        cpu_variant=_loaded_ggml_variant(),
    )
    return result


def _loaded_ggml_variant() -> str | None:
    """Which libggml-cpu-<variant>.so this process mapped, if it uses ggml at all."""
    try:
        with open("/proc/self/maps") as f:
            return cpu_variant(f.read())
    except OSError:
        return None
