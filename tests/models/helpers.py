"""Small builders and checks shared by the model tests: hand-made GGUF files and error-message rules."""

from __future__ import annotations

import re
from pathlib import Path

# Words that show a message tells the user what to do next.
NEXT_STEP = re.compile(
    r"\b(pass|run|re-?download|re-?install|reinstall|use|pick|copy|convert|re-convert|set|give|finish|free)\b",
    re.IGNORECASE,
)


def assert_helpful(error: BaseException, *keywords: str) -> str:
    """The message is one line, names the problem (all `keywords`), and says what to do next."""
    message = str(error)
    assert "\n" not in message and message.strip() == message, f"not one tidy line: {message!r}"
    assert "Traceback" not in message
    for keyword in keywords:
        assert keyword.lower() in message.lower(), f"{keyword!r} missing from: {message}"
    assert NEXT_STEP.search(message), f"no next step in: {message}"
    return message


def write_gguf(path: Path, arch: str = "llama", *, with_architecture: bool = True, tensors: int = 1) -> Path:
    """A tiny but well-formed GGUF with `tensors` small float32 tensors."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, arch)  # writes general.architecture by itself
    if not with_architecture:
        del writer.kv_data[0][gguf.Keys.General.ARCHITECTURE]
    writer.add_uint32(f"{arch}.context_length", 64)
    for i in range(tensors):
        writer.add_tensor(f"blk.{i}.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_chat_gguf(path: Path, *, vocab: int = 300, padding: int = 0) -> Path:
    """A small valid GGUF as a built-in could be: llama, a `vocab`-token vocabulary, and `padding`
    more bytes of tensor data (to make a file worth splitting into parts)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.context_length", 64)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(vocab)])
    writer.add_tensor("token_embd.weight", np.arange(vocab * 4, dtype=np.float32).reshape(vocab, 4))
    if padding:
        writer.add_tensor("blk.0.pad", np.zeros(padding // 4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def split_builtin(data: bytes, parts: int, *, prefix: str = "kecil-test-model", vocab: int = 300, **fields):
    """A Builtin whose file is `data` split into `parts` ordered pieces of packages named
    `{prefix}-part{i}`, and the pieces' bytes. Fields given override the defaults."""
    import hashlib

    from kecil.models.builtins import Builtin, Part

    size = -(-len(data) // parts)
    pieces = [data[i * size:(i + 1) * size] for i in range(parts)]
    module = prefix.replace("-", "_")
    builtin = Builtin(**{
        "name": prefix, "description": "a test model", "license": "Apache-2.0", "chat": True, "version": "1.0.0",
        "parts": tuple(Part(f"{prefix}-part{i}", f"{module}_part{i}", f"data/part{i:02d}.bin") for i in range(1, parts + 1)),
        "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "architecture": "llama",
        "vocab_size": vocab, "file_name": f"{prefix}.gguf", **fields,
    })
    return builtin, pieces


def lay_out_packages(folder: Path, builtin, pieces: list[bytes]) -> Path:
    """Write `builtin`'s parts as installed packages (module folders) under `folder`; return it."""
    for part, piece in zip(builtin.parts, pieces):
        file = folder / part.module / part.path
        file.parent.mkdir(parents=True, exist_ok=True)
        (folder / part.module / "__init__.py").write_text("")
        file.write_bytes(piece)
    return folder
