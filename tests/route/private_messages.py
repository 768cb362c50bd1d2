"""Private messages in seven languages with every private value listed, and the check that none of them reached a server.

Shared by the redaction tests and the route tests (a loopback server stands in for the remote
model and records every byte it receives).
"""

from __future__ import annotations

import json
import re

# (message, the user's names list, every private value in it)
MESSAGES = [
    ("Hi, I'm Rachel Goh. My NRIC is S1234567D and my mobile is 9123 4567; email rachel.goh@example.sg.",
     (), ["Rachel Goh", "S1234567D", "9123 4567", "rachel.goh@example.sg"]),
    ("Nama saya Ahmad Faizal bin Ismail, IC 850101-14-5678, telefon 012-345 6789, kad kredit 4111 1111 1111 1111.",
     (), ["Ahmad Faizal bin Ismail", "850101-14-5678", "012-345 6789", "4111 1111 1111 1111"]),
    ("Pak Budi Santoso minta dikirim ke budi.s@example.co.id; NIK 3171011708450001, HP 0812-3456-7890.",
     (), ["Budi Santoso", "budi.s@example.co.id", "3171011708450001", "0812-3456-7890"]),
    ("สวัสดีครับ ผมชื่อสมชาย ใจดี เลขบัตรประชาชน 3100600445635 โทร 081-234-5678",
     ("สมชาย ใจดี",), ["สมชาย ใจดี", "3100600445635", "081-234-5678"]),
    ("Tôi là Nguyễn Văn An, số CCCD 001099012345, điện thoại 0912 345 678, thẻ 5555 5555 5555 4444.",
     (), ["Nguyễn Văn An", "001099012345", "0912 345 678", "5555 5555 5555 4444"]),
    ("我叫王伟，身份证号11010519491231002X，手机13812345678，邮箱wang.wei@example.cn。",
     ("王伟",), ["王伟", "11010519491231002X", "13812345678", "wang.wei@example.cn"]),
    ("Mera naam Rahul Sharma hai, Aadhaar 2341 2341 2346, PAN ACUPA7085R, phone +91 98765 43210.",
     (), ["Rahul Sharma", "2341 2341 2346", "ACUPA7085R", "+91 98765 43210"]),
    ("Please wire the refund to GB82 WEST 1234 5698 7654 32 for Emily Carter; her HKID is A123456(3), login from 10.2.3.4.",
     (), ["GB82 WEST 1234 5698 7654 32", "Emily Carter", "A123456(3)", "10.2.3.4"]),
]


LANGUAGES = ["en", "ms", "id", "th", "vi", "zh", "hi-en", "en-bank"]


def leaks(received: bytes, private: list[str]) -> list[str]:
    """The private values that can be read in `received` (bytes a server got): as they are, as
    JSON writes them (\\uXXXX escapes), or as their digits with the separators taken out."""
    raw = received.decode("utf-8", errors="replace")
    escaped = [json.dumps(v)[1:-1] for v in private]
    digits_received = re.sub(r"\D", "", raw)
    found = []
    for value, value_escaped in zip(private, escaped):
        digits = re.sub(r"\D", "", value)
        if value in raw or value_escaped in raw or (len(digits) >= 7 and digits in digits_received):
            found.append(value)
    return found
