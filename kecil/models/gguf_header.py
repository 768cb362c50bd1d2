"""Read a GGUF file's header (metadata and tensor table) quickly, without touching tensor data.

Why not `gguf.GGUFReader`: it decodes every metadata array up front (49k tokenizer strings
and as many merges in SmolLM2), which takes about two seconds, and `resolve` runs on every
command. This walker reads scalars with `struct` and steps over arrays by their lengths.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
)
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

from kecil.errors import InvalidModelError

# struct codes for GGUF scalars; gguf-py only has numpy dtypes for them.
_SCALAR_CODES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
# Arrays this short are decoded (general.languages, per-layer head counts); longer ones
# (vocabularies, merges, scores) are only located.
SMALL_ARRAY = 256
_MAX_DIMS = 8  # ggml tensors have at most 4 dimensions; more means the header is garbage


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array: its item type, length, and where its first item starts in the file."""

    item_type: GGUFValueType
    length: int
    offset: int
    items: tuple[Any, ...] | None = None  # decoded only for arrays of at most SMALL_ARRAY items


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table."""

    name: str
    shape: tuple[int, ...]  # ggml order: the fastest-varying dimension first
    ggml_type: GGMLQuantizationType
    offset: int  # relative to GGUFHeader.data_start
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file except the tensor data itself."""

    path: Path
    version: int
    byte_order: Literal["<", ">"]
    metadata: Mapping[str, Any]  # scalars and strings as Python values, arrays as GGUFArray
    tensors: tuple[GGUFTensor, ...]
    alignment: int
    data_start: int  # file offset of the tensor data section
    file_size: int

    @property
    def data_end(self) -> int:
        """The file offset just past the last tensor's data: the smallest size a whole file has."""
        return self.data_start + max((t.offset + t.nbytes for t in self.tensors), default=0)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def array_items(self, key: str, indices: Iterable[int]) -> dict[int, Any]:
        """Items of a long metadata array at `indices`, read from the file without decoding the rest."""
        array = self.metadata.get(key)
        if not isinstance(array, GGUFArray):
            return {}
        wanted = sorted({i for i in indices if 0 <= i < array.length})
        if not wanted:
            return {}
        if array.items is not None:
            return {i: array.items[i] for i in wanted}
        with open(self.path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cursor = _Cursor(buf, self.byte_order, self.path)
            cursor.pos = array.offset
            if array.item_type != GGUFValueType.STRING and array.item_type in _SCALAR_CODES:
                # Fixed-size items: jump straight to each one.
                size = struct.calcsize(_SCALAR_CODES[array.item_type])
                found = {}
                for i in wanted:
                    cursor.pos = array.offset + i * size
                    found[i] = cursor.scalar(array.item_type)
                return found
            # Variable-length strings: step over the ones before each wanted item.
            found, wanted_set = {}, set(wanted)
            for i in range(wanted[-1] + 1):
                if i in wanted_set:
                    found[i] = cursor.value(array.item_type)
                else:
                    cursor.skip(array.item_type)
            return found


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and check the header of the GGUF file at `path`; InvalidModelError if unusable.

    Checks the magic bytes, the version, that the header parses, and that the file is long
    enough to hold every tensor. Results are cached per (path, size, mtime).
    """
    path = Path(path)
    stat = path.stat()
    return _read_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _read_cached(path: str, size: int, mtime_ns: int) -> GGUFHeader:
    return _read(Path(path), size)


def _read(path: Path, file_size: int) -> GGUFHeader:
    if file_size == 0:
        raise InvalidModelError(f"{path} is empty (0 bytes): re-download or re-install the model file")
    with open(path, "rb") as file:
        start = file.read(16)
        if len(start) < 8 and start.startswith(b"GGUF"):
            raise InvalidModelError(
                f"{path} is truncated: the file ends inside its header ({file_size} bytes): "
                "re-download or re-install the model file"
            )
        if len(start) < 8 or struct.unpack_from("<I", start)[0] != GGUF_MAGIC:
            raise InvalidModelError(_not_gguf_message(path, start, file_size))
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf, file_size)


def _parse(path: Path, buf: mmap.mmap, file_size: int) -> GGUFHeader:
    # The magic is always little-endian; a big-endian file shows up as a byte-swapped version.
    version = struct.unpack_from("<I", buf, 4)[0]
    byte_order: Literal["<", ">"] = "<"
    if version & 0xFFFF == 0 and version:
        version, byte_order = struct.unpack_from(">I", buf, 4)[0], ">"
    if version not in READER_SUPPORTED_VERSIONS:
        raise InvalidModelError(
            f"{path} is GGUF version {version}, which kecil cannot read (it reads versions "
            f"{', '.join(map(str, READER_SUPPORTED_VERSIONS))}): re-convert the model with a current llama.cpp"
        )
    cursor = _Cursor(buf, byte_order, path)
    cursor.pos = 8
    try:
        n_tensors = cursor.count(GGUFValueType.UINT64, min_item_size=24, what="tensor count")
        n_kv = cursor.count(GGUFValueType.UINT64, min_item_size=13, what="metadata count")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.value_type())
        tensors = tuple(_tensor_info(cursor) for _ in range(n_tensors))
    except _Truncated:
        raise InvalidModelError(
            f"{path} is truncated: the file ends inside its header ({file_size} bytes): "
            "re-download or re-install the model file"
        ) from None
    except (struct.error, UnicodeDecodeError, ValueError) as error:
        raise _corrupt(path, str(error)) from None

    alignment = metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _corrupt(path, f"general.alignment is {alignment!r}, not a power of two")
    data_start = -(-cursor.pos // alignment) * alignment
    header = GGUFHeader(
        path=path,
        version=version,
        byte_order=byte_order,
        metadata=MappingProxyType(metadata),
        tensors=tensors,
        alignment=alignment,
        data_start=data_start,
        file_size=file_size,
    )
    if header.data_end > file_size:
        missing = header.data_end - file_size
        raise InvalidModelError(
            f"{path} is truncated: its tensors need {header.data_end} bytes but the file has "
            f"{file_size} ({missing} missing): re-download or re-install the model file"
        )
    return header


def _tensor_info(cursor: _Cursor) -> GGUFTensor:
    name = cursor.string()
    n_dims = cursor.scalar(GGUFValueType.UINT32)
    if n_dims > _MAX_DIMS:
        raise ValueError(f"tensor {name!r} claims {n_dims} dimensions")
    shape = tuple(cursor.scalar(GGUFValueType.UINT64) for _ in range(n_dims))
    raw_type = cursor.scalar(GGUFValueType.UINT32)
    offset = cursor.scalar(GGUFValueType.UINT64)
    try:
        ggml_type = GGMLQuantizationType(raw_type)
    except ValueError:
        raise ValueError(
            f"tensor {name!r} has type {raw_type}, unknown to gguf-py (a newer quantization, or a corrupt file)"
        ) from None
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    return GGUFTensor(name, shape, ggml_type, offset, n_elements // block_size * type_size)


def _corrupt(path: Path, detail: str) -> InvalidModelError:
    return InvalidModelError(
        f"{path} has a corrupt GGUF header ({detail}): re-download or re-install the model file"
    )


class _Truncated(Exception):
    """A read ran past the end of the file with otherwise plausible values."""


class _Cursor:
    """A read position in the mapped file, with GGUF's primitive readers."""

    def __init__(self, buf: mmap.mmap, byte_order: str, path: Path):
        self.buf, self.order, self.path, self.pos = buf, byte_order, path, 0
        self.size = len(buf)

    def _need(self, n: int, what: str) -> None:
        if n > self.size:  # longer than the whole file: a garbage length, not a cut-off file
            raise ValueError(f"{what} of {n} bytes at offset {self.pos} is longer than the file")
        if self.pos + n > self.size:
            raise _Truncated

    def scalar(self, value_type: GGUFValueType) -> Any:
        code = _SCALAR_CODES[value_type]
        size = struct.calcsize(code)
        self._need(size, "a number")
        (value,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += size
        return value

    def count(self, value_type: GGUFValueType, min_item_size: int, what: str) -> int:
        """A count of things that follow, refusing counts the rest of the file cannot hold."""
        n = self.scalar(value_type)
        if n * min_item_size > self.size:
            raise ValueError(f"{what} {n} at offset {self.pos} is impossible for the file size")
        return n

    def value_type(self) -> GGUFValueType:
        raw = self.scalar(GGUFValueType.UINT32)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise ValueError(f"unknown value type {raw} at offset {self.pos - 4}") from None

    def string(self) -> str:
        n = self.scalar(GGUFValueType.UINT64)
        self._need(n, "a string")
        text = self.buf[self.pos : self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, value_type: GGUFValueType) -> Any:
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type != GGUFValueType.ARRAY:
            return self.scalar(value_type)
        item_type = self.value_type()
        length = self.count(GGUFValueType.UINT64, min_item_size=1, what="array length")
        offset = self.pos
        if length <= SMALL_ARRAY:
            return GGUFArray(item_type, length, offset, tuple(self.value(item_type) for _ in range(length)))
        self._skip_items(item_type, length)
        return GGUFArray(item_type, length, offset)

    def skip(self, value_type: GGUFValueType) -> None:
        if value_type == GGUFValueType.STRING:
            n = self.scalar(GGUFValueType.UINT64)
            self._need(n, "a string")
            self.pos += n
        elif value_type == GGUFValueType.ARRAY:
            self.value(value_type)
        else:
            self.pos += struct.calcsize(_SCALAR_CODES[value_type])

    def _skip_items(self, item_type: GGUFValueType, length: int) -> None:
        if item_type in _SCALAR_CODES:
            n = length * struct.calcsize(_SCALAR_CODES[item_type])
            self._need(n, "an array")
            self.pos += n
        elif item_type == GGUFValueType.STRING:
            # The hot loop of the whole walk (every vocabulary entry): keep it free of calls.
            unpack, buf, size, pos = struct.Struct(self.order + "Q").unpack_from, self.buf, self.size, self.pos
            for _ in range(length):
                if pos + 8 > size:
                    raise _Truncated
                (n,) = unpack(buf, pos)
                if n > size:
                    self.pos = pos
                    raise ValueError(f"a string of {n} bytes at offset {pos} is longer than the file")
                pos += 8 + n
            if pos > size:
                raise _Truncated
            self.pos = pos
        else:
            for _ in range(length):
                self.skip(item_type)


_KNOWN_STARTS: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG", "a PNG image", "pass a .gguf model file or a Hugging Face model folder"),
    (b"\xff\xd8\xff", "a JPEG image", "pass a .gguf model file or a Hugging Face model folder"),
    (b"PK\x03\x04", "a zip archive, e.g. a PyTorch .bin checkpoint",
     "pass the Hugging Face model folder that contains it, or a .gguf file"),
    (b"lmgg", "an old GGML model", "convert it to GGUF with a current llama.cpp"),
    (b"fmgg", "an old GGMF model", "convert it to GGUF with a current llama.cpp"),
    (b"tjgg", "an old GGJT model", "convert it to GGUF with a current llama.cpp"),
)


def _not_gguf_message(path: Path, start: bytes, file_size: int) -> str:
    """Say what the file looks like instead, so the user can tell what they passed."""
    for prefix, kind, next_step in _KNOWN_STARTS:
        if start.startswith(prefix):
            return f"{path} is not a GGUF file (it is {kind}): {next_step}"
    if len(start) >= 10 and start[8:10] == b'{"':
        return (
            f"{path} is not a GGUF file (it is a safetensors weight file): "
            "pass the Hugging Face model folder that contains it"
        )
    shown = start[:12]
    try:
        text = shown.decode("ascii")
    except UnicodeDecodeError:
        text = "\0"  # not text: fall through to the hex dump
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        described = f"the text {text.splitlines()[0]!r}" if text.strip() else "blank text"
    else:
        described = f"the bytes {shown.hex(' ')}"
    size = f", {file_size} bytes" if file_size < 8 else ""
    return (
        f"{path} is not a GGUF file (it starts with {described}{size}): "
        "pass a .gguf model file or a Hugging Face model folder"
    )
