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
