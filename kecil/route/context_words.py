"""The words around a number that say what it is: "NIK", "kad kredit", "身份证" name an identifier; "order", "đơn hàng", "订单" a harmless look-alike.

A number that passes a check digit can still be an invoice number (one in ten random numbers
passes Luhn), and a 12-digit number is an Aadhaar, a MyKad or a CCCD depending on who wrote it.
The nearest such word before a candidate decides; the lists cover the languages kecil is tested
in (English, Malay, Indonesian, Thai, Vietnamese, Chinese, Hindi and Hinglish).
"""

from __future__ import annotations

import re
from functools import lru_cache

# kind -> words that announce it. Lower case; matched case-insensitively.
POSITIVE: dict[str, tuple[str, ...]] = {
    "CARD": ("card", "credit", "debit", "visa", "mastercard", "amex", "kad kredit", "kad debit", "kartu kredit",
             "kartu debit", "kartu", "บัตรเครดิต", "บัตรเดบิต", "บัตร", "thẻ tín dụng", "thẻ ghi nợ", "số thẻ", "thẻ",
             "信用卡", "银行卡", "借记卡", "卡号", "कार्ड", "क्रेडिट"),
    "NIK": ("nik", "ktp", "e-ktp", "nomor induk", "no. induk"),
    "MYKAD": ("mykad", "ic", "i/c", "no. kp", "k/p", "kad pengenalan", "nric", "ic no", "no ic", "no. ic"),
    "AADHAAR": ("aadhaar", "aadhar", "adhaar", "uid", "uidai", "आधार"),
    "THAI_ID": ("บัตรประชาชน", "เลขประจำตัวประชาชน", "เลขบัตร", "thai id", "citizen id", "national id"),
    "CN_ID": ("身份证", "身份证号", "身份证号码", "居民身份证", "resident id", "prc id"),
    "PAN": ("pan", "pan card", "pan no", "पैन"),
    "HKID": ("hkid", "香港身份證", "身份證", "hk id"),
    "NRIC": ("fin", "fin no"),
    "CCCD": ("cccd", "căn cước", "cmnd", "định danh", "chứng minh"),
    "PHONE": ("phone", "call", "tel", "mobile", "cell", "hp", "whatsapp", "sms", "text me", "telefon", "telepon", "nombor",
              "nomor hp", "no hp", "no. hp", "hubungi", "โทร", "เบอร์", "มือถือ", "điện thoại", "sđt", "gọi", "电话",
              "手机", "联系", "फोन", "फ़ोन", "मोबाइल", "contact"),
}

# Words before a harmless number: order, invoice, receipt, tracking, booking, version, room.
NEGATIVE: tuple[str, ...] = (
    "order", "order no", "order #", "invoice", "inv", "receipt", "ref", "reference", "tracking", "booking",
    "reservation", "confirmation", "ticket", "sku", "item", "product", "model", "serial", "version", "ver", "room",
    "flight", "policy", "case", "po", "parcel", "shipment", "transaction", "txn", "tag", "asset", "batch", "lot",
    "pesanan", "tempahan", "invois", "resit", "faktur", "resi", "kamar", "bilik", "versi", "tiket", "pesanan no",
    "kiriman", "nomor pesanan", "no. pesanan", "nombor pesanan",
    "คำสั่งซื้อ", "ใบแจ้งหนี้", "ใบเสร็จ", "เลขพัสดุ", "พัสดุ", "ห้อง", "เวอร์ชัน", "การจอง", "ออเดอร์",
    "đơn hàng", "hóa đơn", "hoá đơn", "vận đơn", "phòng", "phiên bản", "mã đặt chỗ", "đặt phòng",
    "订单", "订单号", "发票", "单号", "快递", "房间", "版本", "预订", "运单",
    "ऑर्डर", "बिल", "चालान", "रसीद", "कमरा", "संस्करण",
)

WINDOW = 32  # characters before a candidate searched for a context word


def _boundary(word: str) -> str:
    """A word of a spaced script matches only whole (so "ic" is not found in "music"); Thai and
    Chinese are written without spaces, so their words match anywhere."""
    pattern = re.escape(word)
    if word[0].isascii() and word[0].isalnum():
        pattern = r"(?<![^\W_])" + pattern
    if word[-1].isascii() and word[-1].isalnum():
        pattern += r"(?![^\W_])"
    return pattern


@lru_cache(maxsize=1)
def _pattern() -> re.Pattern:
    labelled = [(w, k) for k, words in POSITIVE.items() for w in words] + [(w, "") for w in NEGATIVE]
    labelled.sort(key=lambda wk: -len(wk[0]))  # longest first: "kad kredit" before "kad"
    groups = "|".join(f"(?P<w{i}>{_boundary(w)})" for i, (w, _) in enumerate(labelled))
    _pattern.labels = [k for _, k in labelled]
    return re.compile(groups, re.IGNORECASE)


def cue_before(text: str, start: int, window: int = WINDOW) -> str | None:
    """The kind the nearest context word in the `window` characters before `start` announces:
    a kind name, "" for a look-alike's word (order, invoice …), or None when there is none."""
    pattern = _pattern()
    last = None
    for match in pattern.finditer(text, max(0, start - window), start):
        last = match
    if last is None:
        return None
    return _pattern.labels[int(last.lastgroup[1:])]


# A currency before or after a number makes it a price ("Rp 1.500.000", "1.299.000 đ").
_CURRENCY_BEFORE = re.compile(r"(?:Rp|RM|S\$|US\$|HK\$|\$|USD|SGD|MYR|IDR|THB|VND|INR|HKD|CNY|RMB|PHP|EUR|GBP|¥|₹|฿|€|£|₱|₫)\s?$")
_CURRENCY_AFTER = re.compile(r"^\s?(?:đ|₫|VND|vnđ|baht|บาท|元|块|rupees|ringgit|rupiah|dollars?)(?![A-Za-z])", re.IGNORECASE)


def is_price(text: str, start: int, end: int) -> bool:
    return bool(_CURRENCY_BEFORE.search(text[max(0, start - 5):start]) or _CURRENCY_AFTER.match(text[end:end + 8]))
