"""kecil redact on private messages in seven languages: nothing raw survives, look-alikes stay, restore gives the text back, and failure never returns text."""

from __future__ import annotations

import pytest

from kecil.errors import RedactionError
from kecil.route import names as names_module
from kecil.route.redact import Placeholders, RedactConfig, redact, restore
from tests.route.private_messages import LANGUAGES, MESSAGES, leaks


@pytest.mark.parametrize(("text", "names", "private"), MESSAGES, ids=LANGUAGES)
def test_no_private_value_survives_and_restore_gives_the_text_back(text, names, private):
    result = redact(text, RedactConfig(names=names))
    assert leaks(result.text.encode(), private) == []  # not even with its separators taken out
    assert restore(result.text, result.mapping) == text


LOOK_ALIKES = [
    "Order 4111111111111111 shipped on 2024-05-12.",  # passes Luhn, but it is an order number
    "Invoice INV-2024-00123: RM 1,234.50, due 12/05/2024.",
    "Booking 234123412346 is confirmed for 5 March 2025.",  # a valid Aadhaar after "booking"
    "Total Rp 1.500.000, pesanan 83451234, kamar 1203.",
    "Upgraded to version 1.2.3.4 (v2.3.1 before) at 10:30.",
    "Đơn hàng 83451234 giá 1.299.000 đ, phòng 502.",
    "订单号83451234，金额¥3,280，房间1203。",
    "Room #12-34, flight SQ 321, tracking 123456789012.",
]


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_left_alone(text):
    assert redact(text).text == text


def test_a_technical_text_keeps_its_product_names_and_local_addresses():
    text = ("Serve it on 127.0.0.1 or 0.0.0.0 with llama.cpp; OpenAI clients work, MiniLM embeds, AdamW trains, "
            "and KECIL_HOME holds the files. The Llama models load too.")
    kept = redact(text)
    assert "OpenAI" in kept.text and "MiniLM" in kept.text and "AdamW" in kept.text and "KECIL_HOME" in kept.text
    assert "127.0.0.1" in kept.text and "0.0.0.0" in kept.text and "llama.cpp" in kept.text


def test_one_mapping_gives_a_value_one_placeholder_across_the_texts_of_a_request():
    mapping = Placeholders()
    first = redact("Customer Tan Wei Ming, NRIC S1234567D, called.", mapping=mapping)
    second = redact("Re: s1234567d. tan wei ming wants a refund to 4111-1111-1111-1111.", mapping=mapping)
    assert "<NRIC_1>" in first.text and "<NRIC_1>" in second.text
    assert "tan wei ming" not in second.text.lower()  # found in the first text, replaced in the second
    assert "<PERSON_1>" in second.text and "<CARD_1>" in second.text
    assert restore("Dear <PERSON_1>, your card <CARD_1> is refunded.", mapping) == \
        "Dear Tan Wei Ming, your card 4111-1111-1111-1111 is refunded."


def test_a_name_is_replaced_everywhere_in_a_text_once_found():
    result = redact("Mr Sanjay Pillai called. Sanjay Pillai will call again.")
    assert "Sanjay Pillai" not in result.text and result.text.count("<PERSON_1>") == 2


@pytest.mark.parametrize("written", [
    "<PERSON_1>", "PERSON_1", "[PERSON_1]", "{PERSON_1}", "<person_1>", "&lt;PERSON_1&gt;", "PERSON\\_1", "<PERSON 1>", "PERSON-1",
])
def test_restore_accepts_the_ways_a_model_writes_a_placeholder(written):
    result = redact("Ask Emily Carter.")
    assert restore(f"I asked {written} today.", result.mapping) == "I asked Emily Carter today."


def test_restore_never_takes_one_placeholder_for_another():
    mapping = Placeholders()
    people = [f"Person{chr(65 + i)} Name" for i in range(12)]
    redact(", ".join(people), RedactConfig(names=tuple(people)), mapping=mapping)
    assert restore("<PERSON_1> and <PERSON_12>; PERSON_2.", mapping) == f"{people[0]} and {people[11]}; {people[1]}."
    assert restore("<PERSON_13> and <NRIC_1> stay", mapping) == "<PERSON_13> and <NRIC_1> stay"


def test_only_the_kinds_asked_for_are_redacted():
    text = "Tan Wei Ming, S1234567D, tan@example.com"
    result = redact(text, RedactConfig(kinds=("EMAIL",)))
    assert result.text == "Tan Wei Ming, S1234567D, <EMAIL_1>"


def test_a_missing_spacy_model_fails_closed_without_quoting_the_text(monkeypatch):
    names_module.spacy_pipeline.cache_clear()
    monkeypatch.setattr(names_module, "SPACY_PACKAGE", "en_core_web_sm_not_installed")
    try:
        with pytest.raises(RedactionError, match="nothing was sent") as caught:
            redact("Secret person Tan Wei Ming, S1234567D")
        assert "Tan Wei Ming" not in str(caught.value) and "S1234567D" not in str(caught.value)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no traceback to quote it either
    finally:
        names_module.spacy_pipeline.cache_clear()


def test_a_failing_detector_fails_closed(monkeypatch):
    from kecil.route import identifiers

    def broken(text, regions):
        raise RuntimeError(f"detector crashed on {text}")
    monkeypatch.setattr(identifiers, "_phones", broken)
    with pytest.raises(RedactionError) as caught:
        redact("call 9123 4567")
    assert "9123" not in str(caught.value)


def test_text_that_is_not_text_is_refused():
    with pytest.raises(RedactionError, match="takes text"):
        redact(b"S1234567D")  # type: ignore[arg-type]
