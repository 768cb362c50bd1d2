"""Telling English text from the rest, letter by letter, to choose the embedding model."""

from __future__ import annotations

from kecil.rag.qa_sets import load_chatterbot
from kecil.rag.language import ENGLISH, MULTILINGUAL, english_share, suggested_embedder


def test_english_other_latin_languages_and_other_scripts():
    assert english_share(["The backup server is called ferret. Backups run every night at two."]) == 1.0
    assert english_share(["name: Budi; room: 7C", "Ayu 12B", "2024-01-05"]) == 1.0  # no evidence either way: English
    assert english_share(["Karyawan baru mendapat cuti 18 hari dalam setahun dan harus mengisi formulir ini."]) == 0.0
    assert english_share(["Le serveur de sauvegarde est dans la salle des machines et il ne marche pas."]) == 0.0
    assert english_share(["พนักงานใหม่ได้รับวันลาพักร้อน 18 วันต่อปี"]) == 0.0
    assert english_share(["新员工每年有十八天年假。"]) == 0.0
    half = english_share(["The gym allowance is sixty dollars a month for all staff.", "โรงอาหารเปิดตอนเที่ยงทุกวันจันทร์ถึงศุกร์นะครับ"])
    assert 0.3 < half < 0.7


def test_the_thai_and_indonesian_chatterbot_documents_get_the_multilingual_model():
    documents, _ = load_chatterbot({"thai": "th", "indonesian": "id"})
    texts = [paragraph for paragraphs in documents.values() for paragraph in paragraphs]
    name, share = suggested_embedder(texts)
    assert name == MULTILINGUAL and share < 0.5
    assert suggested_embedder(["Fire exits are on the east side of the building."])[0] == ENGLISH
