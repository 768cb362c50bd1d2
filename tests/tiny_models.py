"""Tiny random Hugging Face models, one per supported architecture, built in-process with no downloads.

Each is a real `save_pretrained` folder (config.json, model.safetensors, tokenizer files and a
ChatML chat template) small enough to build in well under a second, so tests can run every
technique against every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TINY_ARCHS = ("llama", "qwen2", "gemma3", "phi3", "mistral")
# Built on request only (not in TINY_ARCHS, so the technique × architecture table, tests/test_architectures.py, stays its size):
# the other architectures the GGUF converter supports.
EXTRA_ARCHS = ("qwen3", "gemma2")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 512
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training text for the tokenizer: simple sentences, combined below into a few hundred lines.
_SENTENCES = """\
The cat sat on the warm mat by the door.
A small dog ran across the green field.
We walked to the market to buy bread and milk.
The sun rises in the east and sets in the west.
She reads a book every night before bed.
Rain fell softly on the roof all morning.
The children played games in the park after school.
He cooked rice and beans for dinner.
Birds sing in the trees when spring comes.
The river flows slowly past the old mill.
My friend lives in a house near the sea.
They planted tomatoes and beans in the garden.
The train leaves the station at nine o'clock.
Please close the window because it is cold.
The teacher wrote a question on the board.
We drink tea with lemon and honey.
The moon is bright and full tonight.
A red apple fell from the tall tree.
The shop opens early on Monday and closes late on Friday.
Water boils at one hundred degrees.
Hello, how are you today? I am fine, thank you.
What is the capital of France? The capital of France is Paris.
Can you help me write a short letter to my mother?
Two plus two is four, and three plus three is six.
The weather will be sunny with a light wind.
Small models can run on a laptop without the internet.
""".splitlines()
_OPENINGS = ("", "Today ", "Yesterday ", "Every day ", "In the morning ", "At night ", "Sometimes ", "Once again ")


def training_lines() -> list[str]:
    """A few hundred lines of plain English (sentences × openings), deterministic."""
    lines = []
    for opening in _OPENINGS:
        for sentence in _SENTENCES:
            lines.append(opening + (sentence[0].lower() + sentence[1:] if opening else sentence))
    return lines


@dataclass(frozen=True)
class TinyModel:
    """A saved tiny model and the parameter count of the module that was saved."""

    arch: str
    path: Path
    parameters: int  # sum(p.numel() for p in model.parameters())


def build_tokenizer():
    """A byte-level BPE tokenizer trained on `training_lines`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_lines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def _config(arch: str, tokenizer):
    import transformers

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gemma3":
        # Gemma's default head_dim is 256 whatever the hidden size; keep heads × head_dim = hidden.
        return transformers.Gemma3TextConfig(**common, head_dim=16, sliding_window=128)
    if arch == "gemma2":
        return transformers.Gemma2Config(**common, head_dim=16, sliding_window=128)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16)
    classes = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "phi3": transformers.Phi3Config,
        "mistral": transformers.MistralConfig,
    }
    return classes[arch](**common)


def build_tiny_model(arch: str, directory: Path, tokenizer=None) -> TinyModel:
    """Save a random 2-layer `arch` model with its tokenizer into `directory`."""
    import torch
    import transformers

    tokenizer = tokenizer or build_tokenizer()
    config = _config(arch, tokenizer)
    model_class = transformers.Gemma3ForCausalLM if arch == "gemma3" else transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    model = model_class.from_config(config) if model_class is transformers.AutoModelForCausalLM else model_class(config)
    model.eval()
    # With random weights a special token can be the greedy pick (seed 0 makes qwen2 answer
    # <|im_end|> first), ending generation before it starts. Zero logits for them keep every
    # tiny model generating until max_tokens; with a tied embedding (gemma3) this also zeroes
    # their input vectors, which is harmless for a random model.
    special_ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    with torch.no_grad():
        model.get_output_embeddings().weight[special_ids] = 0
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return TinyModel(arch, directory, sum(p.numel() for p in model.parameters()))


class TinyModels:
    """Builds each tiny model the first time it is asked for, then hands out the same folder.

    Call it with an architecture to get the folder: `tiny_hf_model("qwen2")`.
    """

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, TinyModel] = {}
        self._tokenizer = None

    def __call__(self, arch: str) -> Path:
        return self.get(arch).path

    def get(self, arch: str) -> TinyModel:
        if arch not in TINY_ARCHS + EXTRA_ARCHS:
            raise ValueError(f"no tiny model for {arch!r}; have {', '.join(TINY_ARCHS + EXTRA_ARCHS)}")
        if arch not in self._built:
            if self._tokenizer is None:
                self._tokenizer = build_tokenizer()
            self._built[arch] = build_tiny_model(arch, self.root / arch, self._tokenizer)
        return self._built[arch]
