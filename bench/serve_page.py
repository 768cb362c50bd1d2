"""What kecil's web page costs: time to first token seen in the page (from pressing Send to the first
text drawn) against the same request through the official openai client, at 1 and 8 concurrent
users (8 browser pages, each its own browser context), and the total tokens/s of each.

One `kecil serve` (the embedded model, --parallel 8) on loopback; Debian's Chromium through
Playwright, as the browser tests drive it, one browser per user: pages of one browser share its
HTTP/1.1 limit of 6 connections to a host (browser contexts included), so 8 pages in one browser
measure that limit (the 7th and 8th answers wait for a connection), not 8 people. Each user sends the same short questions back to back
for a fixed time, each in a new conversation (so every prompt has the same length), 64-token
answers at temperature 0.7. Page and client take turns within each round; values are medians over
--rounds. Target (issue 22): the page adds under 50 ms to time to first token and loses no
throughput. The browser shares the machine's cores with the server: on a 2-core machine that is
part of what is measured.

Results are JSON lines on stdout, a table on stderr. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common and serve when run from anywhere

from _common.machine import cpu_model, physical_cores  # noqa: E402
from _common.model import MODEL_NAME, default_gguf  # noqa: E402
from _common.report import emit, table  # noqa: E402
from serve import QUESTIONS, free_port, percentile, stop, wait_ready  # noqa: E402

BENCH = "serve_page"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Runs inside each page: new chat, type, Send; the time to the first reply text in the page, then
# to the end of the reply; the token count the page shows (from the stream's usage).
PAGE_LOOP = """async ({seconds, questions, offset, stride}) => {
  const $ = (id) => document.getElementById(id);
  const results = [];
  const deadline = performance.now() + seconds * 1000;
  for (let n = offset; performance.now() < deadline; n += stride) {
    $("new-chat").click();
    $("prompt").value = questions[n % questions.length];
    const firstText = new Promise((resolve) => {
      const seen = new MutationObserver(() => {
        const body = document.querySelector(".msg.assistant .body");
        if (body && body.textContent.length) { seen.disconnect(); resolve(performance.now()); }
      });
      seen.observe($("messages"), { subtree: true, childList: true, characterData: true });
    });
    const sent = performance.now();
    $("composer").requestSubmit();
    const first = await firstText;
    await new Promise((resolve) => {  // no polling: the measuring must not take the CPU it measures
      if (document.body.dataset.busy === "false") return resolve();
      const done = new MutationObserver(() => { if (document.body.dataset.busy === "false") { done.disconnect(); resolve(); } });
      done.observe(document.body, { attributes: true, attributeFilter: ["data-busy"] });
    });
    const stored = JSON.parse(localStorage.getItem("kecil.conversations"));
    const reply = stored.conversations.find((c) => c.id === stored.current).messages.at(-1);
    results.push({ ttft: (first - sent) / 1000, tokens: reply.meta.usage?.completion_tokens ?? 0, error: reply.meta.error || null });
  }
  return results;
}"""


def start_kecil(gguf: Path, threads: int, log_dir: Path):
    import subprocess

    port = free_port()
    cmd = [sys.executable, "-m", "kecil", "serve", str(gguf), "--port", str(port), "--parallel", "8", "--context", "1024",
           "--threads", str(threads), "--no-embeddings", "--audit-log", str(log_dir / "kecil-audit.jsonl")]
    log = open(log_dir / "kecil-page.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), f"http://127.0.0.1:{port}"


def summarise(results: list[dict], elapsed: float) -> dict:
    ok = [r for r in results if not r["error"]]
    ttfts = sorted(r["ttft"] for r in ok)
    return {"tokens_per_s": sum(r["tokens"] for r in ok) / elapsed, "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p95_s": percentile(ttfts, 95), "completed": len(ok), "failed": len(results) - len(ok)}


async def through_pages(browsers, url: str, users: int, seconds: float, max_tokens: int) -> dict:
    contexts = [await browser.new_context() for browser in browsers[:users]]
    try:
        pages = []
        for context in contexts:
            page = await context.new_page()
            await page.goto(url + "/")
            await page.wait_for_selector("body[data-ready=true]")
            # A selector, not a JS expression: polling an expression string needs eval, which the page's CSP refuses.
            await page.wait_for_selector("#model option", state="attached")
            await page.evaluate(f"() => {{ document.getElementById('temperature').value = '0.7'; "
                                f"document.getElementById('max-tokens').value = '{max_tokens}'; }}")
            pages.append(page)
        await asyncio.sleep(1)  # the browsers' start-up work done before the clock starts, as the client's is
        started = time.perf_counter()
        runs = await asyncio.gather(*(page.evaluate(PAGE_LOOP, {"seconds": seconds, "questions": list(QUESTIONS), "offset": i,
                                                                 "stride": users}) for i, page in enumerate(pages)))
        elapsed = time.perf_counter() - started
    finally:
        for context in contexts:
            await context.close()
    return summarise([r for run in runs for r in run], elapsed)


async def through_openai(url: str, model: str, users: int, seconds: float, max_tokens: int, offset: int = 0) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    results: list[dict] = []
    deadline = time.perf_counter() + seconds

    async def user(start: int) -> None:
        n = start
        while True:  # at least one request, then until the deadline
            sent, first, tokens, error = time.perf_counter(), None, 0, None
            try:
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}], temperature=0.7,
                    max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
                async for event in stream:
                    if event.choices and event.choices[0].delta.content and first is None:
                        first = time.perf_counter()
                    if event.usage:
                        tokens = event.usage.completion_tokens
            except openai.OpenAIError as exc:
                error = str(exc)
            results.append({"ttft": (first or time.perf_counter()) - sent, "tokens": tokens, "error": error})
            n += users
            if time.perf_counter() >= deadline:
                break

    started = time.perf_counter()
    await asyncio.gather(*(user(offset + i) for i in range(users)))
    elapsed = time.perf_counter() - started
    await client.close()
    return summarise(results, elapsed)


async def run(args, url: str, model: str) -> dict:
    from playwright.async_api import async_playwright

    raw: dict[tuple[str, int], list[dict]] = {}
    async with async_playwright() as p:
        browsers = [await p.chromium.launch(executable_path=CHROMIUM) for _ in range(max(args.users))]
        try:
            await through_pages(browsers, url, 1, 2, args.max_tokens)  # warm-up: the page's files
            # Every question once first: kecil's slots reuse a cached prompt prefix, and whichever way
            # asked a question first would pay its whole prefill while the other found it cached.
            for n in range(len(QUESTIONS)):
                await through_openai(url, model, 1, 0, 1, offset=n)
            for round_no in range(1, args.rounds + 1):
                for users in args.users:
                    for way in ("page", "openai") if round_no % 2 else ("openai", "page"):  # neither always goes first
                        if way == "page":
                            result = await through_pages(browsers, url, users, args.seconds, args.max_tokens)
                        else:
                            result = await through_openai(url, model, users, args.seconds, args.max_tokens)
                        raw.setdefault((way, users), []).append(result)
                        print(f"  round {round_no} {way:6s} {users} users: TTFT p50 {result['ttft_p50_s']}, "
                              f"{result['tokens_per_s']:.1f} tok/s, {result['completed']} done, {result['failed']} failed",
                              file=sys.stderr, flush=True)
        finally:
            for browser in browsers:
                await browser.close()
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1,8", help="concurrent users (browser pages, or openai clients)")
    parser.add_argument("--seconds", type=float, default=20, help="load time per (way, users) per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    args.users = [int(u) for u in args.users.split(",")]
    threads = args.threads or physical_cores()
    gguf = default_gguf()
    log_dir = Path(os.environ.get("KECIL_HOME") or Path.home() / ".cache" / "kecil") / "bench-serve"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"{BENCH}: {MODEL_NAME} on {cpu_model()}, {threads} threads, {args.seconds:g} s per run, {args.rounds} rounds",
          file=sys.stderr, flush=True)
    proc, url = start_kecil(gguf, threads, log_dir)
    model = gguf.name[:-5]
    try:
        asyncio.run(wait_ready(url, proc, model))
        raw = asyncio.run(run(args, url, model))
    finally:
        stop(proc)

    common = {"bench": BENCH, "model": MODEL_NAME, "threads": threads, "max_tokens": args.max_tokens,
              "seconds": args.seconds, "rounds": args.rounds}
    summary = {}
    for (way, users), results in raw.items():
        med = {k: statistics.median([r[k] for r in results if r[k] is not None] or [0]) for k in ("tokens_per_s", "ttft_p50_s", "ttft_p95_s")}
        med.update(completed=sum(r["completed"] for r in results), failed=sum(r["failed"] for r in results))
        summary[(way, users)] = med
        emit(**common, way=way, users=users, **med)
    rows = []
    for users in args.users:
        page, client = summary[("page", users)], summary[("openai", users)]
        added_ms = (page["ttft_p50_s"] - client["ttft_p50_s"]) * 1000
        ratio = page["tokens_per_s"] / client["tokens_per_s"] if client["tokens_per_s"] else None
        emit(**common, metric="page_minus_openai_ttft_p50_ms", users=users, value=round(added_ms, 1))
        emit(**common, metric="page_vs_openai_tokens_per_s", users=users, ratio=None if ratio is None else round(ratio, 3))
        for way, m in (("page", page), ("openai", client)):
            rows.append((way, users, m["ttft_p50_s"], m["ttft_p95_s"], m["tokens_per_s"], m["completed"], m["failed"]))
        rows.append(("page - openai", users, added_ms / 1000, None, None if ratio is None else ratio, None, None))
    table(f"{BENCH}: {args.max_tokens}-token answers, medians of {args.rounds} rounds (last row per users: TTFT added, s; tok/s ratio)",
          ("way", "users", "TTFT p50 s", "TTFT p95 s", "tok/s", "requests", "failed"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
