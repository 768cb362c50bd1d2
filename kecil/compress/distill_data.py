"""What `kecil distill` trains on: the data as rows of token ids, and the teacher's top-k logits
on them, computed once into a memory-mapped cache that a killed run continues filling."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kecil.compress.calibration import json_records
from kecil.errors import ConfigError

TEACHER_BATCH = 4  # rows per teacher forward pass
_PLAIN_INSTRUCTION = "### Instruction:\n{instruction}\n\n### Response:\n{output}"


def read_rows(path: Path | None, tokenizer, seq_len: int):
    """The data as an int32 array (rows, seq_len): every document tokenized, ended with EOS,
    concatenated and cut into rows (the last partial row is dropped). None = kecil's general
    text (the calibration set, never the held-out text that measures the result)."""
    import numpy as np

    from kecil.compress.calibration import DEFAULT_CALIBRATION, bundled_text

    documents = [bundled_text(DEFAULT_CALIBRATION)] if path is None else _documents(Path(path), tokenizer)
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for document in documents:
        ids.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    rows = len(ids) // seq_len
    if rows < 1:
        raise ConfigError(f"the data is {len(ids)} tokens, less than one row of {seq_len}: pass more text, or a smaller --seq-len")
    return np.asarray(ids[: rows * seq_len], dtype=np.int32).reshape(rows, seq_len)


def _documents(path: Path, tokenizer) -> list[str]:
    """Plain text is one document; JSONL is one per line in kecil tune's forms: chat
    ("messages", rendered with the model's chat template), instruction ("instruction", "input",
    "output") or "text"."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the data file {path} ({error}): pass UTF-8 text or JSONL") from None
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return [text]
    return [_render(record, tokenizer, path, number) for number, record in json_records(text, path, "data file")]


def _render(record, tokenizer, path: Path, number: int) -> str:
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    messages = record.get("messages") if isinstance(record, dict) else None
    if isinstance(record, dict) and "instruction" in record:
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(record.get("output", ""))}]
        if not getattr(tokenizer, "chat_template", None):
            return _PLAIN_INSTRUCTION.format(instruction=prompt, output=record.get("output", ""))
    if isinstance(messages, list) and messages:
        if not getattr(tokenizer, "chat_template", None):
            return "\n\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        return tokenizer.apply_chat_template(messages, tokenize=False)
    raise ConfigError(f"{path} line {number} has none of 'text', 'messages' or 'instruction': see `kecil tune --help` for the forms")


@dataclass
class TeacherCache:
    """The teacher's top-k logits per position of every row, on disk."""

    directory: Path
    key: str
    rows: int
    seq_len: int
    top_k: int

    def _arrays(self, mode: str):
        import numpy as np

        shape = (self.rows, self.seq_len, self.top_k)
        return (np.memmap(self.directory / "values.f16", dtype=np.float16, mode=mode, shape=shape),
                np.memmap(self.directory / "indices.i32", dtype=np.int32, mode=mode, shape=shape))  # fmt: skip

    def read(self, picked):
        """(values, indices) as torch tensors for the rows `picked`."""
        import torch

        values, indices = self._arrays("r")
        return torch.from_numpy(values[picked].astype("float32")), torch.from_numpy(indices[picked].astype("int64"))

    @property
    def done(self) -> int:
        meta = self.directory / "meta.json"
        return json.loads(meta.read_text())["done"] if meta.is_file() else 0


def teacher_cache(teacher_ref, student_tokenizer, rows, needed: int, top_k: int, report: Callable[[str, int, int], None], load,
                  root: Path | None = None) -> tuple[TeacherCache, float]:
    """The cache of `teacher_ref`'s top-k logits on `rows`, filled in order up to row `needed`
    where it is not yet (the teacher loads only then), and the seconds the teacher ran. The cache
    is keyed by the teacher and all of the data, so a later run with a larger budget continues it.
    It lives under `root` (default KECIL_HOME/distill)."""
    import numpy as np
    import torch

    from kecil.models.reference import model_fingerprint
    from kecil.paths import kecil_home, private_dir

    key = hashlib.sha256(f"{model_fingerprint(teacher_ref.path)}|{top_k}|".encode() + rows.tobytes()).hexdigest()[:20]
    cache = TeacherCache(private_dir(Path(root) if root is not None else kecil_home() / "distill"), key, rows.shape[0], rows.shape[1], top_k)
    cache.directory = private_dir(cache.directory / key)
    done = cache.done
    needed = min(needed, cache.rows)
    if done >= needed:
        return cache, 0.0
    started = time.perf_counter()
    teacher, tokenizer = load(teacher_ref)
    check_same_tokenizer(student_tokenizer, tokenizer, teacher_ref.name)
    teacher.eval()
    values, indices = cache._arrays("r+" if done else "w+")
    report("teacher", done, needed)
    with torch.inference_mode():
        for start in range(done, needed, TEACHER_BATCH):
            end = min(needed, start + TEACHER_BATCH)
            logits = teacher(input_ids=torch.from_numpy(rows[start:end].astype(np.int64))).logits.float()
            top = torch.topk(logits, top_k, dim=-1)
            values[start:end] = top.values.numpy().astype(np.float16)
            indices[start:end] = top.indices.numpy().astype(np.int32)
            values.flush(), indices.flush()
            # The count is written only after the rows it counts are on disk: a kill leaves it behind, never ahead.
            (cache.directory / "meta.json").write_text(json.dumps({"done": end, "rows": cache.rows, "teacher": teacher_ref.spec}))
            report("teacher", end, needed)
    del teacher
    return cache, time.perf_counter() - started


def check_same_tokenizer(student, teacher, teacher_name: str) -> None:
    """Distillation compares the two models' probabilities token by token, so token i must be the
    same piece of text for both."""
    a, b = student.get_vocab(), teacher.get_vocab()
    if a != b:
        raise ConfigError(
            f"the teacher {teacher_name} has another tokenizer than the student ({len(b)} tokens against {len(a)}"
            f"{', the same size but different tokens' if len(a) == len(b) else ''}): distillation compares them token by token, "
            "so pick a teacher with the student's tokenizer (the model the student was pruned from, or one of its family)"
        )
