"""bench/quantize.py's summary: added perplexity per corpus and calibration set, the mean and its
range against llama.cpp's imatrix anchor, and the noise of drawing another calibration sample.

A "cell" is one reporting corpus scored after calibrating on one set: kecil's bundled set, or
the corpus's own same-domain set. "less" is 1 - increase / anchor's increase, in the same cell;
the mean's "less" compares mean increases. Tables are Markdown, printed to stderr.
"""

from __future__ import annotations

import statistics
import sys

ANCHOR = "llama-imatrix+quantize"
NOISE = ("gutenberg", "gutenberg-b")  # two disjoint Shakespeare samples calibrating for the same held-out text


def summarize(results: list[dict], ppl_chunks: int) -> None:
    rows = [r for r in results if "corpus" in r and r.get("ppl_chunks") == ppl_chunks]
    reference = {r["corpus"]: r["perplexity"] for r in rows if r["variant"] == "reference-f16"}
    report = sorted({r["corpus"] for r in rows if r["calib"] == r["corpus"]})  # corpora with a same-domain set
    tune = sorted(set(reference) - set(report))
    increase: dict[tuple, float] = {}
    for r in rows:
        if r["variant"] != "reference-f16" and r["corpus"] in reference:
            increase[(r["type"], r["variant"], r["calib"], r["corpus"])] = r["perplexity"] - reference[r["corpus"]]

    def cell(qtype: str, variant: str, calib: str, corpus: str) -> float | None:
        return increase.get((qtype, variant, "-", corpus), increase.get((qtype, variant, calib, corpus)))

    out = [f"held-out perplexity of the f16 reference ({ppl_chunks} chunks of 512 tokens): "
           + ", ".join(f"{c} {p:.2f}" for c, p in sorted(reference.items()))]  # fmt: skip
    types = sorted({k[0] for k in increase}, key=lambda t: ("q4_k_m", "q3_k_m", "q2_k").index(t) if t in ("q4_k_m", "q3_k_m", "q2_k") else 9)
    variants = sorted({k[1] for k in increase})
    cells = [(c, k) for c in report for k in ("kecil", c)]
    for qtype in types:
        out.append(f"\n{qtype}: added perplexity per corpus (calibrated on kecil's set / on the same domain), mean over the "
                   f"{len(cells)} cells, and how much less than {ANCHOR} adds")  # fmt: skip
        out.append("| variant | " + " | ".join(report) + " | mean | less than anchor (mean) | range over cells | worse cells |")
        out.append("|---|" + "---:|" * (len(report) + 4))
        anchor = {ck: cell(qtype, ANCHOR, ck[1], ck[0]) for ck in cells}
        for variant in variants:
            values = {ck: cell(qtype, variant, ck[1], ck[0]) for ck in cells}
            complete = all(v is not None for v in values.values()) and all(a is not None for a in anchor.values())
            per_corpus = [" / ".join("-" if values[(c, k)] is None else f"{values[(c, k)]:+.3f}" for k in ("kecil", c)) for c in report]
            if complete:
                mean, mean_anchor = statistics.mean(values.values()), statistics.mean(anchor.values())
                less = [1 - values[ck] / anchor[ck] for ck in cells]
                worse = sum(values[ck] > anchor[ck] for ck in cells)
                tail = f"{mean:+.3f} | {100 * (1 - mean / mean_anchor):.0f}% | {100 * min(less):.0f}% .. {100 * max(less):.0f}% | {worse} |"
            else:
                tail = "- | - | - | - |"
            out.append(f"| {variant} | " + " | ".join(per_corpus) + " | " + tail)
    noise = [(k[0], k[1]) for k in increase if k[2] == NOISE[1]]
    if noise:
        out.append(f"\nnoise: the same held-out text ({NOISE[0]}) after calibrating on two disjoint samples of one source")
        out.append(f"| type | variant | {NOISE[0]} | {NOISE[1]} | difference |")
        out.append("|---|---|---:|---:|---:|")
        for qtype, variant in sorted(noise):
            a, b = increase.get((qtype, variant, NOISE[0], NOISE[0])), increase[(qtype, variant, NOISE[1], NOISE[0])]
            out.append(f"| {qtype} | {variant} | {'-' if a is None else f'{a:+.3f}'} | {b:+.3f} | {'-' if a is None else f'{abs(a - b):.3f}'} |")
    if tune:
        out.append("\ntuning corpora (for choosing hyperparameters; not results): added perplexity, kecil's calibration set")
        out.append("| type | variant | " + " | ".join(tune) + " | mean |")
        out.append("|---|---|" + "---:|" * (len(tune) + 1))
        for qtype in types:
            for variant in variants:
                values = [cell(qtype, variant, "kecil", c) for c in tune]
                if all(v is None for v in values):
                    continue
                mean = statistics.mean(values) if all(v is not None for v in values) else None
                out.append(f"| {qtype} | {variant} | " + " | ".join("-" if v is None else f"{v:+.3f}" for v in values)
                           + f" | {'-' if mean is None else f'{mean:+.3f}'} |")  # fmt: skip
    print("\n".join(out), file=sys.stderr, flush=True)
