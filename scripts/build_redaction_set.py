"""Writes bench/data/redaction.jsonl: the multilingual redaction test set of bench/route_redaction.py.

Private messages in English, Malay, Indonesian, Thai, Vietnamese, Chinese and Hindi-English,
written for kecil as templates (below) and filled with generated values: identity numbers with
valid check digits or structure (made with python-stdnum's own check-digit functions where it has
them), valid phone numbers of the nine countries (checked by phonenumbers), Luhn-valid cards,
mod-97 IBANs, and names from hand-written lists. Each record has the entities that must be
redacted (kind, start, end) and the look-alikes that must stay (orders, invoices, prices, dates,
versions, rooms, times). Names written in Thai or Chinese script are given as the user's list
(`names`), as a user of `kecil redact --names` would. Seeded: the same file every run.

    .venv/bin/python scripts/build_redaction_set.py   # rewrites bench/data/redaction.jsonl
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import phonenumbers
from stdnum import luhn, verhoeff
from stdnum.cn import ric
from stdnum.iso7064 import mod_97_10
from stdnum.th import pin

OUT = Path(__file__).resolve().parents[1] / "bench" / "data" / "redaction.jsonl"
R = random.Random(20)

NAMES = {
    "en": ["Emily Carter", "James O'Neill", "Tan Wei Ming", "Priya Raman", "Ahmad Faizal", "Sarah Lim", "Michael Wong",
           "Rachel Goh", "David Chen", "Aisha Rahman", "Kevin Ng", "Olivia Brown", "Daniel Lee", "Grace Teo",
           "Arjun Mehta", "Nurul Huda", "Jessica Tan", "Benjamin Koh", "Hannah Schmidt", "Lucas Pereira",
           "Mei Ling Chua", "Rohan Kapoor", "Siti Aminah", "Thomas Müller", "Chloe Martin", "Vikram Singh"],
    "ms": ["Ahmad Faizal bin Ismail", "Siti Nurhaliza binti Tarudin", "Muhammad Hafiz", "Nur Aisyah", "Lim Chee Keong",
           "Kumar a/l Subramaniam", "Farah Nadia", "Azman Hashim"],
    "id": ["Budi Santoso", "Dewi Lestari", "Agus Wijaya", "Siti Rahayu", "Rina Kurniawati", "Hendra Gunawan",
           "Putri Maharani", "Joko Susilo"],
    "vi": ["Nguyễn Văn An", "Trần Thị Bích", "Lê Minh Tuấn", "Phạm Thu Hà", "Hoàng Đức Anh", "Vũ Thị Mai"],
    "hi": ["Rahul Sharma", "Priya Patel", "Amit Verma", "Sunita Iyer", "Ravi Kumar", "Neha Gupta", "Anil Desai"],
    "th": ["สมชาย ใจดี", "สุดา รักไทย", "วิชัย ศรีสุข", "มาลี แก้วมณี"],
    "zh": ["王伟", "李娜", "张敏", "陈静", "刘洋"],
    "th_latin": ["Somchai Jaidee", "Suda Rakthai", "Wichai Srisuk"],
    "zh_latin": ["Wang Wei", "Li Na", "Zhang Min", "Chen Jing"],
}
DOMAINS = ["gmail.com", "yahoo.com.sg", "outlook.com", "example.co.id", "mail.vn", "company.com.my", "qq.com", "hotmail.co.th", "rediffmail.com"]


def nric(prefix: str | None = None) -> str:
    prefix = prefix or R.choice("STFGM")
    digits = "".join(R.choice("0123456789") for _ in range(7))
    total = sum(int(d) * w for d, w in zip(digits, (2, 7, 6, 5, 4, 3, 2))) + {"T": 4, "G": 4, "M": 3}.get(prefix, 0)
    r = total % 11
    letter = "KLJNPQRTUWX"[10 - r] if prefix == "M" else ("JZIHGFEDCBA" if prefix in "ST" else "XWUTRQPNMLK")[r]
    return prefix + digits + letter


def mykad(dashed: bool = True) -> str:
    y, m, d = R.randint(50, 99), R.randint(1, 12), R.randint(1, 28)
    state = R.choice(["01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14", "15", "16"])
    tail = f"{R.randint(0, 9999):04d}"
    return f"{y:02d}{m:02d}{d:02d}-{state}-{tail}" if dashed else f"{y:02d}{m:02d}{d:02d}{state}{tail}"


def nik() -> str:
    region = R.choice(["317101", "327301", "357801", "337401", "517101", "127101", "737101", "647201"])
    day = R.randint(1, 28) + R.choice([0, 40])
    return f"{region}{day:02d}{R.randint(1, 12):02d}{R.randint(60, 99):02d}{R.randint(1, 9999):04d}"


def aadhaar(spaced: bool = True) -> str:
    while True:
        body = str(R.randint(2, 9)) + "".join(R.choice("0123456789") for _ in range(10))
        number = body + verhoeff.calc_check_digit(body)
        if number != number[::-1]:
            break
    return f"{number[:4]} {number[4:8]} {number[8:]}" if spaced else number


def pan() -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(R.choice(letters) for _ in range(3)) + "P" + R.choice(letters) + f"{R.randint(1, 9999):04d}" + R.choice(letters)


def hkid() -> str:
    letters = R.choice(["A", "C", "E", "K", "Y", "Z", "XA"])
    digits = "".join(R.choice("0123456789") for _ in range(6))
    values = ([36] if len(letters) == 1 else []) + [ord(c) - 55 for c in letters] + [int(d) for d in digits]
    check = (11 - sum(v * w for v, w in zip(values, range(9, 1, -1))) % 11) % 11
    return f"{letters}{digits}({'A' if check == 10 else check})"


def cn_id() -> str:
    body = R.choice(["110101", "310104", "440305", "360426", "510107", "330106"]) + f"{R.randint(1960, 2005)}{R.randint(1, 12):02d}{R.randint(1, 28):02d}{R.randint(0, 999):03d}"
    return body + ric.calc_check_digit(body + "0")  # stdnum's function takes the number with a check digit in place


def thai_id(dashed: bool = False) -> str:
    body = str(R.randint(1, 8)) + "".join(R.choice("0123456789") for _ in range(11))
    n = body + pin.calc_check_digit(body)
    return f"{n[0]}-{n[1:5]}-{n[5:10]}-{n[10:12]}-{n[12]}" if dashed else n


def cccd() -> str:
    century = R.choice("0123")
    year = R.randint(0, 25) if century in "23" else R.randint(40, 99)
    return R.choice(["001", "079", "048", "031", "092", "036"]) + century + f"{year:02d}{R.randint(0, 999999):06d}"


def card(kind: str | None = None) -> str:
    kind = kind or R.choice(["visa", "mc", "amex", "unionpay", "jcb"])
    prefix, length = {"visa": ("4", 16), "mc": (R.choice(["51", "53", "55", "2221"]), 16), "amex": (R.choice(["34", "37"]), 15),
                      "unionpay": ("62", 16), "jcb": ("3530", 16)}[kind]
    body = prefix + "".join(R.choice("0123456789") for _ in range(length - len(prefix) - 1))
    number = body + luhn.calc_check_digit(body)
    style = R.choice(["space", "plain", "dash"])
    if kind == "amex":
        groups = [number[:4], number[4:10], number[10:]]
    else:
        groups = [number[i:i + 4] for i in range(0, length, 4)]
    return {"space": " ".join(groups), "plain": number, "dash": "-".join(groups)}[style]


def iban() -> str:
    country, bban = R.choice([
        ("GB", "WEST" + "".join(R.choice("0123456789") for _ in range(14))),
        ("DE", "".join(R.choice("0123456789") for _ in range(18))),
        ("NL", "ABNA" + "".join(R.choice("0123456789") for _ in range(10))),
    ])
    check = mod_97_10.calc_check_digits(bban + country)
    number = country + check + bban
    from stdnum import iban as iban_module

    if not iban_module.is_valid(number):
        return iban()
    return " ".join(number[i:i + 4] for i in range(0, len(number), 4)) if R.random() < 0.6 else number


def phone(region: str, style: str | None = None) -> str:
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    national = str(example.national_number)
    while True:
        digits = national[:3] + "".join(R.choice("0123456789") for _ in range(len(national) - 3))
        number = phonenumbers.parse(digits, region)
        if phonenumbers.is_valid_number(number):
            break
    style = style or R.choice(["national", "international", "e164"])
    fmt = {"national": phonenumbers.PhoneNumberFormat.NATIONAL, "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
           "e164": phonenumbers.PhoneNumberFormat.E164}[style]
    return phonenumbers.format_number(number, fmt)


def email(name: str) -> str:
    ascii_name = re.sub(r"[^a-z ]", "", name.lower().replace("'", "")).split() or ["user"]
    local = R.choice([".".join(ascii_name[:2]), ascii_name[0] + str(R.randint(1, 99)), "_".join(ascii_name[:2])])
    return f"{local}@{R.choice(DOMAINS)}"


def ipv4() -> str:
    return R.choice([f"192.168.{R.randint(0, 255)}.{R.randint(1, 254)}", f"10.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}",
                     f"{R.randint(11, 223)}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"])


def ipv6() -> str:
    return R.choice([f"2001:db8::{R.randint(1, 0xffff):x}", f"fe80::{R.randint(1, 0xffff):x}:{R.randint(1, 0xffff):x}",
                     ":".join(f"{R.randint(0, 0xffff):x}" for _ in range(8))])


def luhn_order() -> str:
    """A 16-digit order number that happens to pass Luhn: the hardest look-alike of a card."""
    body = "".join(R.choice("0123456789") for _ in range(15))
    return body + luhn.calc_check_digit(body)


KEEP = {
    "ORDER": lambda: str(R.randint(10_000_000, 99_999_999)),
    "ORDER16": luhn_order,
    "ORDER12": lambda: aadhaar(spaced=False),  # a booking code that passes Verhoeff
    "INVOICE": lambda: f"INV-{R.randint(2023, 2026)}-{R.randint(1, 99999):05d}",
    "PRICE": lambda: R.choice(["$1,299.00", "S$45.90", "RM 1,234.50", "Rp 1.500.000", "฿2,500", "1.299.000 đ", "¥3,280", "₹4,999", "USD 12,450"]),
    "DATE": lambda: R.choice(["2024-05-12", "12/05/2024", "12.05.2024", "5 March 2025", "2025年3月5日", "03/11/2025"]),
    "VERSION": lambda: R.choice(["v2.3.1", "1.2.3.4", "3.11.2", "10.0.19045.3803", "v1.12.0"]),
    "ROOM": lambda: R.choice(["1203", "#12-34", "B-07-11", "502", "3A"]),
    "TIME": lambda: R.choice(["10:30", "14:45", "9:00", "18:15:00"]),
    "TRACKING": lambda: R.choice(["SPXMY0" + str(R.randint(10**9, 10**10)), "JNT" + str(R.randint(10**9, 10**10)), str(R.randint(10**11, 10**12))]),
}

# [KIND], [KIND:variant] is an entity to redact; [KEEP:TYPE] a look-alike that must stay.
# [PERSON] draws from the language's names; [LISTED] a name in Thai or Chinese script, given as the user's list.
TEMPLATES = {
    "en": [
        "Hi, this is [PERSON]. My NRIC is [NRIC:S] and my mobile is [PHONE:SG:national].",
        "Please update my details: email [EMAIL], phone [PHONE:SG:international]. Order [KEEP:ORDER] arrived on [KEEP:DATE].",
        "[PERSON] asked me to pay the invoice [KEEP:INVOICE] of [KEEP:PRICE] with card [CARD:visa].",
        "Can you transfer the refund to IBAN [IBAN]? The account holder is [PERSON].",
        "My colleague [PERSON] will collect the parcel; her FIN is [NRIC:G]. Room [KEEP:ROOM], pick-up at [KEEP:TIME].",
        "The server at [IPV4] keeps rejecting logins from [IPV6] since we upgraded to version [KEEP:VERSION].",
        "Dear [PERSON], your booking [KEEP:ORDER12] is confirmed for [KEEP:DATE].",
        "I met [PERSON] and [PERSON] yesterday; they said to call [PHONE:MY:international] if anything comes up.",
        "Order number [KEEP:ORDER16] was charged twice to my Mastercard [CARD:mc]. Please reverse one charge.",
        "For the visa application I need my HKID [HKID] and my passport; contact me at [EMAIL].",
        "[PERSON] (Aadhaar [AADHAAR]) and [PERSON] (PAN [PAN]) are the two nominees.",
        "Send the contract to [EMAIL] and cc [EMAIL]. Tracking [KEEP:TRACKING], total [KEEP:PRICE].",
        "Mr [PERSON] called from [PHONE:HK:international] about the lease; he is in room [KEEP:ROOM].",
        "My Amex is [CARD:amex], expiry 09/27. Please don't share it with [PERSON].",
        "Patient: [PERSON], NRIC [NRIC:T], phone [PHONE:SG:e164]. Appointment [KEEP:DATE] at [KEEP:TIME].",
        "Note from [PERSON]: the new laptop runs [KEEP:VERSION] and the printer is at [IPV4].",
        "Thanks [PERSON]! I'll wire [KEEP:PRICE] tonight from [IBAN].",
        "Emergency contact: [PERSON], [PHONE:IN:international], [EMAIL].",
        "Shipment [KEEP:TRACKING] for [PERSON] is stuck at customs; her Chinese ID is [CN_ID].",
        "Dr [PERSON] reviewed the scan; send the results to [PERSON] at [EMAIL].",
        "The new hire [PERSON] starts Monday. Work permit [NRIC:M], laptop asset tag [KEEP:ORDER].",
        "[PERSON] paid with UnionPay [CARD:unionpay] and JCB [CARD:jcb], invoice [KEEP:INVOICE].",
        "Hey, it's [PERSON] — new number [PHONE:PH:international], old one was [PHONE:TH:international].",
        "[PERSON] and [PERSON] both flagged the login from [IPV4] at [KEEP:TIME].",
        "Reminder: [PERSON] owes [KEEP:PRICE] for order [KEEP:ORDER16].",
    ],
    "ms": [
        "Nama saya [PERSON], nombor IC [MYKAD], telefon [PHONE:MY:national].",
        "Tolong hantar resit ke [EMAIL]. Nombor pesanan [KEEP:ORDER], jumlah [KEEP:PRICE].",
        "Encik [PERSON] akan ambil barang di bilik [KEEP:ROOM] pada [KEEP:TIME]. No. K/P beliau [MYKAD:plain].",
        "Kad kredit saya [CARD:visa] telah dicaj dua kali untuk invois [KEEP:INVOICE].",
        "Sila hubungi [PERSON] di [PHONE:MY:international] atau [PHONE:SG:international].",
        "Pn. [PERSON] minta bayaran balik ke akaun [IBAN].",
        "Anak saya [PERSON], MyKad [MYKAD], bersekolah di Johor. Tarikh lahir [KEEP:DATE].",
        "Saya [PERSON], NRIC Singapura [NRIC:S], bekerja di Johor Bahru. WhatsApp [PHONE:MY:e164].",
        "E-mel [PERSON] ialah [EMAIL]; nombor tempahan [KEEP:ORDER12].",
        "Pesanan [KEEP:ORDER16] belum sampai, sila semak dengan [PERSON].",
    ],
    "id": [
        "Nama saya [PERSON], NIK [NIK], nomor HP [PHONE:ID:national].",
        "Pak [PERSON] minta dikirim ke [EMAIL]; nomor pesanan [KEEP:ORDER] senilai [KEEP:PRICE].",
        "Bu [PERSON] sudah transfer pakai kartu kredit [CARD:mc], faktur [KEEP:INVOICE].",
        "Tolong hubungi [PERSON] di [PHONE:ID:international] atau WhatsApp [PHONE:ID:e164].",
        "No. KTP saya [NIK], tanggal lahir [KEEP:DATE], kamar [KEEP:ROOM].",
        "Resi pengiriman [KEEP:TRACKING] atas nama [PERSON], telepon [PHONE:ID:national].",
        "Data pelanggan: [PERSON], NIK [NIK], email [EMAIL], IP login [IPV4].",
        "Saya sudah bayar [KEEP:PRICE] untuk pesanan [KEEP:ORDER16], tolong cek [PERSON].",
        "Ibu [PERSON] pindah ke Surabaya, nomor barunya [PHONE:ID:international].",
        "Aplikasi versi [KEEP:VERSION] gagal kirim data [PERSON] ke server [IPV4].",
    ],
    "th": [
        "สวัสดีครับ ผมชื่อ[LISTED] เลขบัตรประชาชน [THAI_ID] เบอร์โทร [PHONE:TH:national]",
        "คุณ[LISTED] ฝากส่งใบเสร็จไปที่ [EMAIL] คำสั่งซื้อ [KEEP:ORDER] ราคา [KEEP:PRICE]",
        "บัตรเครดิตของฉัน [CARD:visa] ถูกตัดเงินสองครั้ง ใบแจ้งหนี้ [KEEP:INVOICE]",
        "กรุณาโทรหา[LISTED]ที่ [PHONE:TH:international] ก่อนเวลา [KEEP:TIME]",
        "เลขประจำตัวประชาชน [THAI_ID:dashed] ของ[LISTED] ใช้ลงทะเบียนวันที่ [KEEP:DATE]",
        "Khun [PERSON:th_latin] ask to send the documents to [EMAIL], ห้อง [KEEP:ROOM]",
        "เลขพัสดุ [KEEP:TRACKING] ส่งถึง[LISTED] โทร [PHONE:TH:e164]",
        "ลูกค้า [LISTED] บัตรประชาชน [THAI_ID] อีเมล [EMAIL]",
        "ออเดอร์ [KEEP:ORDER16] ยังไม่ได้รับ ติดต่อ [PHONE:TH:national]",
        "โอนเงินเข้าบัญชี [IBAN] ให้[LISTED] จำนวน [KEEP:PRICE]",
    ],
    "vi": [
        "Tôi là [PERSON], số CCCD [CCCD], điện thoại [PHONE:VN:national].",
        "Anh [PERSON] nhờ gửi hóa đơn [KEEP:INVOICE] qua email [EMAIL].",
        "Chị [PERSON] thanh toán bằng thẻ tín dụng [CARD:mc], đơn hàng [KEEP:ORDER] giá [KEEP:PRICE].",
        "Số điện thoại của tôi là [PHONE:VN:international], CCCD [CCCD].",
        "Đơn hàng [KEEP:ORDER16] của [PERSON] giao vào [KEEP:DATE], phòng [KEEP:ROOM].",
        "Ông [PERSON] cần chuyển khoản vào [IBAN] trước [KEEP:TIME].",
        "Căn cước công dân [CCCD] của [PERSON] hết hạn; sđt [PHONE:VN:e164].",
        "Máy chủ [IPV4] chạy phiên bản [KEEP:VERSION]; liên hệ [EMAIL].",
        "Mã vận đơn [KEEP:TRACKING], người nhận [PERSON], gọi [PHONE:VN:national].",
        "Bà [PERSON] dùng thẻ [CARD:visa] để đặt phòng [KEEP:ROOM].",
    ],
    "zh": [
        "我叫[LISTED]，身份证号[CN_ID]，手机[PHONE:CN:national]。",
        "请把发票[KEEP:INVOICE]发到[EMAIL]，订单号[KEEP:ORDER]，金额[KEEP:PRICE]。",
        "[LISTED]的信用卡[CARD:unionpay]被扣了两次款。",
        "联系[LISTED]：电话[PHONE:CN:international]，邮箱[EMAIL]。",
        "身份证[CN_ID]，出生日期[KEEP:DATE]，房间[KEEP:ROOM]。",
        "快递单号[KEEP:TRACKING]，收件人[LISTED]，手机[PHONE:CN:e164]。",
        "香港身份證[HKID]，電話[PHONE:HK:national]，[LISTED]先生。",
        "订单[KEEP:ORDER16]已发货，版本[KEEP:VERSION]，[KEEP:TIME]送达。",
        "服务器[IPV4]和[IPV6]登录异常，请[LISTED]检查。",
        "请转账到[IBAN]，收款人[LISTED]，金额[KEEP:PRICE]。",
    ],
    "hi": [
        "Mera naam [PERSON] hai, Aadhaar [AADHAAR] aur phone [PHONE:IN:national].",
        "[PERSON] ji ka PAN [PAN] hai, unko [EMAIL] pe mail karo.",
        "Mere credit card [CARD:visa] se order [KEEP:ORDER] ke liye [KEEP:PRICE] kat gaye.",
        "Please [PERSON] ko [PHONE:IN:international] pe call karo, [KEEP:TIME] baje tak.",
        "मेरा आधार नंबर [AADHAAR] है और मोबाइल [PHONE:IN:national]।",
        "Invoice [KEEP:INVOICE] [PERSON] ke naam pe hai, date [KEEP:DATE].",
        "Bhai [PERSON] ka Aadhaar [AADHAAR:plain] aur PAN card [PAN] verify karna hai.",
        "Order [KEEP:ORDER16] abhi tak nahi aaya, [PERSON] se baat karo [PHONE:IN:e164] pe.",
        "Room [KEEP:ROOM] mein [PERSON] ruke the, bill [KEEP:PRICE].",
        "App version [KEEP:VERSION] mein [PERSON] ka login [IPV4] se fail hua.",
    ],
}
# Written after kecil's rules were tuned on the set above and never used to tune them: the
# held-out set (bench/data/redaction_heldout.jsonl), with names of its own.
HELDOUT_NAMES = {
    "en": ["Margaret Ellis", "Chen Jia Hui", "Farhan Siddiqui", "Lakshmi Narayanan", "Oliver Hughes", "Zainab Yusof",
           "Wong Kar Seng", "Isabella Rossi", "Haruto Sato", "Deepa Krishnan", "Samuel Osei", "Ng Hui Min"],
    "ms": ["Mohd Rizal bin Osman", "Nor Azizah binti Hassan", "Tan Boon Hock", "Kavitha a/p Raman", "Hafizah Zulkifli"],
    "id": ["Eko Prasetyo", "Wulan Sari", "Bambang Hartono", "Indah Permatasari", "Yusuf Hidayat"],
    "vi": ["Đặng Văn Hùng", "Bùi Thị Lan", "Đỗ Quang Huy", "Ngô Thanh Tâm", "Dương Minh Khoa"],
    "hi": ["Sanjay Reddy", "Pooja Nair", "Manoj Tiwari", "Kavya Menon", "Arvind Joshi"],
    "th": ["ประยุทธ์ มั่นคง", "นภา สุขใจ", "อรุณ ทองดี"],
    "zh": ["赵磊", "孙丽", "周杰", "吴芳"],
}
HELDOUT = {
    "en": [
        "hey it's [PERSON] again, lost my wallet so please block card [CARD] asap. my number is still [PHONE:SG:national]",
        "Forwarding for [PERSON]: NRIC [NRIC], DOB [KEEP:DATE], address unit [KEEP:ROOM]. Please treat as confidential.",
        "Ticket [KEEP:ORDER]: user [EMAIL] cannot log in from [IPV4]; app build [KEEP:VERSION].",
        "We refunded [KEEP:PRICE] to [PERSON]'s account [IBAN] on [KEEP:DATE].",
        "[PERSON] will sign for the delivery (tracking [KEEP:TRACKING]). Backup contact: [PERSON], [PHONE:MY:international].",
        "Can [PERSON] use my Aadhaar [AADHAAR] for the SIM, or does it need her own?",
        "Invoice [KEEP:INVOICE] paid by card ending in [CARD:mc]; questions to [EMAIL].",
        "Order [KEEP:ORDER16] cancelled at [KEEP:TIME] by [PERSON].",
    ],
    "ms": [
        "Assalamualaikum, saya [PERSON]. Boleh tolong semak status permohonan? No IC [MYKAD], tel [PHONE:MY:national].",
        "Bayaran [KEEP:PRICE] untuk invois [KEEP:INVOICE] dah masuk ke akaun [PERSON].",
        "Puan [PERSON] tinggal di bilik [KEEP:ROOM], emel beliau [EMAIL].",
        "Nombor telefon baru saya [PHONE:MY:international], kad pengenalan [MYKAD:plain].",
    ],
    "id": [
        "Halo kak, saya [PERSON], mau konfirmasi pesanan [KEEP:ORDER] ya. KTP saya [NIK], WA [PHONE:ID:international].",
        "Mohon transfer ke rekening atas nama [PERSON], total [KEEP:PRICE], paling lambat [KEEP:DATE].",
        "Email saya [EMAIL] dan nomor kartu debit [CARD:visa].",
        "Pak [PERSON] tidak bisa dihubungi di [PHONE:ID:national], coba [PHONE:ID:e164].",
    ],
    "th": [
        "รบกวนตรวจสอบคำสั่งซื้อ [KEEP:ORDER] ของ[LISTED] ด้วยค่ะ เบอร์ [PHONE:TH:national]",
        "เลขบัตรประชาชน [THAI_ID] อีเมล [EMAIL] ชำระเงิน [KEEP:PRICE]",
        "[LISTED] เปลี่ยนเบอร์เป็น [PHONE:TH:international] แล้ว",
        "บัตรเครดิต [CARD] ของ[LISTED] หมดอายุ",
    ],
    "vi": [
        "Chào shop, mình là [PERSON], đơn hàng [KEEP:ORDER] giao tới phòng [KEEP:ROOM] nhé. SĐT [PHONE:VN:national].",
        "Số căn cước [CCCD], email [EMAIL], ngày sinh [KEEP:DATE].",
        "Anh [PERSON] chuyển [KEEP:PRICE] vào tài khoản [IBAN].",
        "Liên hệ [PERSON] qua [PHONE:VN:international] hoặc [EMAIL].",
    ],
    "zh": [
        "你好，我是[LISTED]，订单[KEEP:ORDER]还没到，电话[PHONE:CN:national]。",
        "[LISTED]的身份证号码是[CN_ID]，银行卡[CARD:unionpay]。",
        "请联系[LISTED]，邮箱[EMAIL]，手机[PHONE:CN:international]。",
        "發票[KEEP:INVOICE]，香港身份證[HKID]，聯絡電話[PHONE:HK:international]。",
    ],
    "hi": [
        "Bhaiya main [PERSON] bol raha hoon, mera PAN [PAN] aur Aadhaar [AADHAAR] KYC ke liye bhej raha hoon.",
        "[PERSON] ka number [PHONE:IN:national] hai, unko [KEEP:TIME] ke baad call karna.",
        "Order [KEEP:ORDER] ka refund [KEEP:PRICE] mere card [CARD:visa] mein aayega kya?",
        "मेरा ईमेल [EMAIL] है और पैन कार्ड [PAN]।",
    ],
}

# How many times each language's templates are filled (each time with new values).
ROUNDS = {"en": 4, "ms": 6, "id": 6, "th": 6, "vi": 6, "zh": 6, "hi": 6}
_SLOT = re.compile(r"\[([A-Z0-9_]+)(?::([A-Za-z0-9_]+))?(?::([a-z0-9]+))?\]")
_KIND = {"IPV4": "IP", "IPV6": "IP", "LISTED": "PERSON"}


def fill(template: str, lang: str, names_pool: dict[str, list[str]] | None = None) -> dict:
    pools = {**NAMES, **(names_pool or {})}
    text, entities, keep, names, people = "", [], [], [], []
    at = 0
    for m in _SLOT.finditer(template):
        text += template[at:m.start()]
        slot, a, b = m.groups()
        if slot == "KEEP":
            value = KEEP[a]()
            keep.append({"what": a, "start": len(text), "end": len(text) + len(value)})
        else:
            if slot == "PERSON":
                pool = pools[a or lang if (a or lang) in pools else "en"]
                value = R.choice([n for n in pool if n not in people] or pool)
                people.append(value)
            elif slot == "LISTED":
                value = R.choice([n for n in pools[lang] if n not in names] or pools[lang])
                names.append(value)
            elif slot == "EMAIL":
                value = email(R.choice(people) if people and R.random() < 0.5 else R.choice(pools["en"] + pools["id"]))
            elif slot == "PHONE":
                value = phone(a, b)
            elif slot == "CARD":
                value = card(a)
            elif slot == "NRIC":
                value = nric(a)
            elif slot == "MYKAD":
                value = mykad(dashed=a != "plain")
            elif slot == "AADHAAR":
                value = aadhaar(spaced=a != "plain")
            elif slot == "THAI_ID":
                value = thai_id(dashed=a == "dashed")
            else:
                value = {"IBAN": iban, "IPV4": ipv4, "IPV6": ipv6, "NIK": nik, "PAN": pan, "HKID": hkid,
                         "CN_ID": cn_id, "CCCD": cccd}[slot]()
            entities.append({"kind": _KIND.get(slot, slot), "start": len(text), "end": len(text) + len(value)})
        text += value
        at = m.end()
    text += template[at:]
    return {"lang": lang, "text": text, "names": names, "entities": entities, "keep": keep}


def write(path: Path, templates: dict[str, list[str]], rounds: dict[str, int], names_pool=None) -> None:
    records = []
    for lang, lines in templates.items():
        for round_ in range(rounds[lang]):
            for i, template in enumerate(lines):
                records.append({"id": f"{lang}-{i:02d}-{round_}", **fill(template, lang, names_pool)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    entities = sum(len(r["entities"]) for r in records)
    keep = sum(len(r["keep"]) for r in records)
    print(f"{path}: {len(records)} messages, {entities} entities, {keep} look-alikes")


def main() -> None:
    write(OUT, TEMPLATES, ROUNDS)
    write(OUT.with_name("redaction_heldout.jsonl"), HELDOUT, {lang: 5 for lang in HELDOUT}, HELDOUT_NAMES)


if __name__ == "__main__":
    main()
