"""Every identifier rule against known valid and invalid numbers, through `redact` as a user meets it.

Valid numbers are published examples (python-stdnum's documentation, Singapore's NRIC/FIN and
M-series FIN examples, GB 11643's 11010519491231002X, the test card numbers of the networks,
the IBAN registry's examples); each invalid one differs by a check digit or a component.
"""

from __future__ import annotations

import pytest

from kecil.route.identifiers import valid_cccd, valid_cn_id, valid_hkid, valid_nric
from kecil.route.redact import RedactConfig, redact

VALID = [
    ("NRIC", "S1234567D"), ("NRIC", "T1234567J"), ("NRIC", "F1234567N"), ("NRIC", "G1234567X"), ("NRIC", "M1234567K"),
    ("HKID", "A123456(3)"), ("HKID", "G123456(A)"), ("HKID", "AB987654(3)"),
    ("MYKAD", "770305-02-1234"), ("MYKAD", "850101-14-5678"),
    ("NIK", "3171011708450001"), ("NIK", "3171015708450001"),
    ("AADHAAR", "2341 2341 2346"), ("AADHAAR", "234123412346"),
    ("PAN", "ACUPA7085R"),
    ("CN_ID", "360426199101010071"), ("CN_ID", "11010519491231002X"),
    ("THAI_ID", "3100600445635"), ("THAI_ID", "1-2345-45678-78-1"),
    ("CCCD", "001099012345"), ("CCCD", "079203001234"),
    ("CARD", "4111 1111 1111 1111"), ("CARD", "5555-5555-5555-4444"), ("CARD", "378282246310005"), ("CARD", "6011111111111117"),
    ("IBAN", "GB82 WEST 1234 5698 7654 32"), ("IBAN", "DE89370400440532013000"),
    ("EMAIL", "siti.aminah+bank@example.com.my"),
    ("IP", "192.168.10.24"), ("IP", "2001:db8::8a2e:370:7334"),
    ("PHONE", "+65 9123 4567"), ("PHONE", "+62 812-3456-7890"), ("PHONE", "+84 912 345 678"),
]
INVALID = [
    "S1234567A", "T1234567D", "F1234567X", "G1234567N", "M1234567X",  # wrong check letter
    "A123456(4)", "G123456(0)",  # wrong HKID check digit
    "771305-02-1234", "770305-00-1234",  # month 13; no state code 00
    "9971011708450001", "3171013002001234",  # no province 99; 30 February
    "2341 2341 2347",  # Verhoeff fails
    "ACUZA7085R",  # no holder type Z
    "360426199101010072", "360426199113010071",  # check digit; month 13
    "3100600445636", "9100600445639",  # check digit; no Thai ID starts with 9
    "003099012345", "001499012345", "001299012345",  # no province 003; century digit 4; born in 2099
    "4111 1111 1111 1112", "1234 5678 9012 3452",  # Luhn fails; Luhn holds but no card network starts with 1
    "GB82 WEST 1234 5698 7654 33",  # mod 97 fails
    "999.168.10.24",  # not an address
]


@pytest.mark.parametrize(("kind", "number"), VALID)
def test_a_valid_number_is_redacted_as_its_kind(kind, number):
    text = f"Here it is: {number} — thanks"
    result = redact(text, RedactConfig(spacy=False))
    assert [(s.kind, s.original) for s in result.spans] == [(kind, number)]
    assert number not in result.text and f"<{kind}_1>" in result.text


@pytest.mark.parametrize("number", INVALID)
def test_an_invalid_number_is_left_alone(number):
    text = f"Here it is: {number} — thanks"
    assert redact(text, RedactConfig(spacy=False)).text == text


def test_the_hand_written_checks_agree_with_their_definitions():
    # the M series reads its table backwards (FormSG's published algorithm): M1234567K, not M1234567X
    assert valid_nric("m1234567k") and not valid_nric("M1234567X")
    assert valid_hkid("A1234563") and valid_hkid("A123456 (3)") and not valid_hkid("A1234564")
    assert valid_cccd("001 099 012 345") and not valid_cccd("00109901234")
    # a county code newer than the holder's birth: real, though python-stdnum's cn.ric rejects it
    assert valid_cn_id("51010719601203998X")
