"""bench/quantize.py's summary: added perplexity per corpus and calibration set, the mean and its
range against llama.cpp's imatrix anchor, and the noise of drawing another calibration sample.

Rows are (variant, calibration): a kecil-bundled set (scored on every corpus) or "same domain"
(each corpus calibrated on its own same-domain text). "less" is 1 - increase / the anchor's
increase with the same calibration on the same corpus; the mean's compares mean increases.
"both" pools the kecil set's cells with the same-domain cells. Tables are Markdown, on stderr.
"""

from __future__ import annotations

import statistics
import sys

from _common.text_corpora import REPORT, TUNE

ANCHOR = "llama-imatrix+quantize"
NOISE = ("gutenberg", "gutenberg-b")  # two disjoint Shakespeare samples calibrating for the same held-out text
TYPE_ORDER = ("q4_k_m", "q3_k_m", "q2_k")


def summarize(results: list[dict], ppl_chunks: int) -> None:
    rows = [r for r in results if "corpus" in r and r.get("ppl_chunks") == ppl_chunks]
    reference = {r["corpus"]: r["perplexity"] for r in rows if r["variant"] == "reference-f16"}
    increase: dict[tuple, float] = {}
    for r in rows:
        if r["variant"] != "reference-f16" and r["corpus"] in reference:
            increase[(r["type"], r["variant"], r["calib"], r["corpus"])] = r["perplexity"] - reference[r["corpus"]]

    def value(qtype: str, variant: str, calib: str, corpus: str) -> float | None:
        calib = corpus if calib == "same" else calib
        return increase.get((qtype, variant, "-", corpus), increase.get((qtype, variant, calib, corpus)))

    out = [f"f16 reference perplexity ({ppl_chunks} chunks of 512 tokens): " + ", ".join(f"{c} {p:.2f}" for c, p in sorted(reference.items()))]
    types = sorted({k[0] for k in increase}, key=lambda t: TYPE_ORDER.index(t) if t in TYPE_ORDER else 9)
    variants = sorted({k[1] for k in increase})
    sets = sorted({k[2] for k in increase if k[2].startswith("kecil")})
    for qtype in types:
        out.append(f"\n{qtype}: added perplexity on the reporting corpora; less = how much less than {ANCHOR} adds, same calibration")
        out.append("| variant | calibration | " + " | ".join(REPORT) + " | mean | less (mean) | less, range | worse than anchor |")
        out.append("|---|---|" + "---:|" * (len(REPORT) + 4))
        for calibs in [[s] for s in sets] + [["same"]] + [[s, "same"] for s in sets]:
            for variant in variants:
                cells = [(c, k) for k in calibs for c in REPORT]
                got = {ck: value(qtype, variant, ck[1], ck[0]) for ck in cells}
                anchor = {ck: value(qtype, ANCHOR, ck[1], ck[0]) for ck in cells}
                if all(v is None for v in got.values()) or (len(calibs) > 1 and None in got.values()):
                    continue
                shown = " | ".join(" / ".join("-" if got[(c, k)] is None else f"{got[(c, k)]:+.3f}" for k in calibs) for c in REPORT)
                if None in got.values() or None in anchor.values():
                    tail = "- | - | - | - |"
                else:
                    mean, mean_anchor = statistics.mean(got.values()), statistics.mean(anchor.values())
                    less = [1 - got[ck] / anchor[ck] for ck in cells]
                    worse = sum(got[ck] > anchor[ck] for ck in cells)
                    tail = f"{mean:+.3f} | {100 * (1 - mean / mean_anchor):.0f}% | {100 * min(less):.0f}% .. {100 * max(less):.0f}% | {worse} of {len(cells)} |"
                out.append(f"| {variant} | {' + '.join(calibs)} | {shown} | {tail}")
    noise = sorted((k[0], k[1]) for k in increase if k[2] == NOISE[1])
    if noise:
        out.append(f"\nnoise: {NOISE[0]}'s held-out text after calibrating on two disjoint samples of one source")
        out.append(f"| type | variant | {NOISE[0]} | {NOISE[1]} | difference |")
        out.append("|---|---|---:|---:|---:|")
        for qtype, variant in noise:
            a, b = increase.get((qtype, variant, NOISE[0], NOISE[0])), increase[(qtype, variant, NOISE[1], NOISE[0])]
            out.append(f"| {qtype} | {variant} | {'-' if a is None else f'{a:+.3f}'} | {b:+.3f} | {'-' if a is None else f'{abs(a - b):.3f}'} |")
    tune = [c for c in TUNE if c in reference]
    if tune:
        out.append("\ntuning corpora (for choosing hyperparameters, never reported as results): added perplexity")
        out.append("| type | variant | calibration | " + " | ".join(tune) + " | mean |")
        out.append("|---|---|---|" + "---:|" * (len(tune) + 1))
        for qtype in types:
            for calib in sets:
                for variant in variants:
                    got = [value(qtype, variant, calib, c) for c in tune]
                    if all(v is None for v in got):
                        continue
                    mean = "-" if None in got else f"{statistics.mean(got):+.3f}"
                    out.append(f"| {qtype} | {variant} | {calib} | " + " | ".join("-" if v is None else f"{v:+.3f}" for v in got) + f" | {mean} |")
    print("\n".join(out), file=sys.stderr, flush=True)
