"""How long a grammar takes to build from a JSON schema, and what it costs while decoding.

For schemas that grow along one axis (maxItems, minItems, maxLength, optional properties,
nesting depth, enum values), each size is converted once by llama.cpp's own JSON-schema converter
(llama-cpp-python's, as kecil shipped it before bounding schemas) in a child process capped at
4 GiB, and once through kecil's `json_grammar`, which now refuses what is past its bounds before
converting. For the schemas kecil accepts, the grammar is compiled by llama.cpp on the bundled
model's vocabulary and 32 tokens are decoded under it (1 thread, greedy) next to the same answer
without a grammar.

Results are JSON lines on stdout, a table on stderr. See docs/benchmarks.md ("bench/grammar.py").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common when run from anywhere

from _common.report import emit, table  # noqa: E402

BENCH = "grammar"
SIZES = {
    "maxItems": (100, 1000, 10_000, 1_000_000, 10_000_000),
    "minItems": (100, 1000, 1_000_000, 100_000_000),
    "maxLength": (100, 1000, 3900, 1_000_000),
    "optional properties": (10, 120, 300, 900),
    "depth": (8, 48, 200, 400),
    "enum values": (10, 120, 10_000, 100_000),
}
# One conversion in a child process: its time and peak memory, whatever it does to the process.
CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from llama_cpp import llama_grammar
schema = json.loads(sys.stdin.read())
started = time.perf_counter()
try:
    chars, error = len(llama_grammar.json_schema_to_gbnf(json.dumps(schema))), None
except BaseException as exc:
    chars, error = None, type(exc).__name__
print(json.dumps({"seconds": time.perf_counter() - started, "chars": chars, "error": error,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""


def schema(axis: str, n: int) -> dict:
    if axis in ("maxItems", "minItems"):
        return {"type": "array", "items": {"type": "integer"}, axis: n}
    if axis == "maxLength":
        return {"type": "string", "maxLength": n}
    if axis == "optional properties":
        return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(n)}}
    if axis == "enum values":
        return {"enum": [f"value {i}" for i in range(n)]}
    nested: dict = {"type": "integer"}
    for _ in range(n):
        nested = {"type": "object", "properties": {"a": nested}, "required": ["a"]}
    return nested


def llama_cpp_converter(body: dict) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(body), capture_output=True, text=True, timeout=300)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError):
        return {"seconds": None, "chars": None, "error": "timeout or crash", "peak_mb": None}


def main() -> None:
    from kecil.errors import KecilError
    from kecil.infer.engine import SamplingExtras, drain, open_engine
    from kecil.infer.generation import GenerationConfig, collect
    from kecil.infer.grammar import json_grammar
    from kecil.models.info import inspect_model
    from kecil.models.reference import resolve

    json_grammar({"type": "string"})  # import llama-cpp-python outside the timings
    ref = resolve(None)
    engine = open_engine(ref, inspect_model(ref), context_length=512, threads=1, parallel=1)
    ids = engine.chat_prompt_ids([{"role": "user", "content": "Give me some JSON data."}])
    config = GenerationConfig(max_tokens=32, temperature=0, ignore_eos=True)
    free = collect(drain(engine, ids, config))
    free_ms = free.timings.decode_seconds / max(free.timings.decode_tokens, 1) * 1000
    rows = []
    for axis, sizes in SIZES.items():
        for n in sizes:
            body = schema(axis, n)
            raw = llama_cpp_converter(body)
            started = time.perf_counter()
            try:
                gbnf, verdict = json_grammar(body), "built"
            except KecilError as exc:
                gbnf, verdict = None, "refused: " + str(exc).split(";")[0][:60]
            kecil_ms = (time.perf_counter() - started) * 1000
            compile_ms = decode_ms = None
            if gbnf is not None:
                started = time.perf_counter()
                try:
                    handle = engine._sampling.grammar(gbnf)
                    compile_ms = (time.perf_counter() - started) * 1000
                    engine._sampling.free_grammar(handle)
                    out = collect(drain(engine, ids, config, SamplingExtras(grammar=gbnf)))
                    decode_ms = out.timings.decode_seconds / max(out.timings.decode_tokens, 1) * 1000
                except KecilError:
                    verdict = "built, llama.cpp refused"
            record = emit(bench=BENCH, axis=axis, size=n, llama_cpp_convert_s=raw["seconds"], llama_cpp_chars=raw["chars"],
                          llama_cpp_peak_mb=raw["peak_mb"], llama_cpp_error=raw["error"], kecil=verdict, kecil_ms=kecil_ms,
                          compile_ms=compile_ms, decode_ms_per_token=decode_ms, free_decode_ms_per_token=free_ms)
            rows.append([axis, n, record["llama_cpp_convert_s"], raw["chars"] or raw["error"], raw["peak_mb"], verdict,
                         round(kecil_ms, 2), compile_ms and round(compile_ms, 2), decode_ms and round(decode_ms, 1)])
    engine.close()
    table(f"grammar building (decode without a grammar: {free_ms:.1f} ms/token)",
          ["axis", "size", "llama.cpp convert s", "chars", "peak MB", "kecil", "kecil ms", "compile ms", "decode ms/token"], rows)


if __name__ == "__main__":
    main()
