"""A model with a SentencePiece vocabulary (tokenizer.model, as Llama 2, Mistral 7B and Gemma ship) converts:
llama.cpp splits text into the same tokens as SentencePiece and transformers, and computes the same logits."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from kecil.models.formats.hf_to_gguf import convert_hf_to_gguf
from tests.models.formats.test_hf_to_gguf import llama_cpp_logits, transformers_logits
from tests.tiny_models import training_lines

TEXTS = ("The cat sat on the warm mat by the door. Hello, how are you today? Two plus two is 4. Ünïcode ✓", "  two spaces\n\nthen lines")


def sentencepiece_tokenizer(directory: Path, *, dummy_prefix: bool):
    """Train a small BPE SentencePiece model with byte fallback, and the matching fast tokenizer for transformers."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()), model_writer=buffer, vocab_size=320, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True, normalization_rule_name="identity",
        add_dummy_prefix=dummy_prefix, remove_extra_whitespaces=False, minloglevel=2,
    )  # fmt: skip
    (directory / "tokenizer.model").write_bytes(buffer.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buffer.getvalue())
    # The fast tokenizer as transformers' own SentencePiece converter builds it: the merges are
    # every split of a piece into two pieces, ranked by the merged piece's id.
    vocab = {sp.IdToPiece(i): i for i in range(sp.vocab_size())}
    plain = [i for i in range(sp.vocab_size()) if not (sp.IsByte(i) or sp.IsControl(i) or sp.IsUnknown(i))]
    ranked = sorted((i, vocab[p[:k]], vocab[p[k:]]) for i in plain for p in [sp.IdToPiece(i)] for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab)
    merges = [(sp.IdToPiece(left), sp.IdToPiece(right)) for _, left, right in ranked]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend("▁")] if dummy_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *([decoders.Strip(" ", 1, 0)] if dummy_prefix else [])])
    return sp, PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build(arch: str, directory: Path) -> tuple[Path, object, object]:
    import torch
    import transformers

    directory.mkdir(parents=True)
    sp, tokenizer = sentencepiece_tokenizer(directory, dummy_prefix=arch == "llama")  # Gemma's vocabulary adds no leading space
    common = dict(
        vocab_size=sp.vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**common, head_dim=16, sliding_window=128))
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, sp, tokenizer


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sentencepiece_vocabulary_converts(tmp_path, arch):
    folder, sp, tokenizer = build(arch, tmp_path / arch)
    assert (folder / "tokenizer.model").is_file()
    path = convert_hf_to_gguf(folder, tmp_path / f"{arch}.gguf", out_type="f32")
    import tests.models.formats.test_hf_to_gguf as conversion

    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(text)  # the reference: SentencePiece itself
        expected = transformers_logits(folder, ids)
        original, conversion.TEXT = conversion.TEXT, text
        try:
            got, llama_ids = llama_cpp_logits(path, ids)
        finally:
            conversion.TEXT = original
        assert llama_ids == ids, text
        assert np.abs(got - expected).max() < 2e-3 * max(1.0, np.abs(expected).max())
    shutil.rmtree(folder)
