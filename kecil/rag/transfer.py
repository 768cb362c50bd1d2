"""`kecil rag export` and `kecil rag import`: move a knowledge base between stores (SQLite and
PostgreSQL, either way) with every file, chunk, source position and vector kept, so nothing is
embedded again and search answers the same on the other side.

The file between them is a SQLite knowledge base (store.open_file): one portable file, readable
by any kecil, that `kecil rag import` can also take straight from $KECIL_HOME/kb. Files go over
one transaction each, so an import killed midway is resumed by running it again: a file already
there with the same content hash is left alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from kecil.errors import ConfigError
from kecil.rag.kb_names import display_path
from kecil.rag.store import KnowledgeBase, locate, open_file


@dataclass
class TransferReport:
    source: str
    target: str
    files: int = 0  # copied in this run
    unchanged: int = 0  # already in the target with the same content
    chunks: int = 0
    vectors: int = 0
    seconds: float = 0.0


def copy_kb(source: KnowledgeBase, target: KnowledgeBase) -> TransferReport:
    """Copy every file of `source` into `target` (which must use the same embedding model)."""
    started = time.perf_counter()
    target.check_embedder(source.embedder_name, source.dimension)
    report = TransferReport(source.location.shown, target.location.shown)
    have = target.files()
    for path, record in sorted(source.files().items()):
        there = have.get(path)
        if there is not None and there.sha256 == record.sha256 and there.chunks == record.chunks:
            report.unchanged += 1
            continue
        chunks, vectors = source.file_chunks(path)
        if len(chunks) != record.chunks:  # a file written while this ran: copy what is consistent next time
            raise ConfigError(f"{display_path(path)} changed in {source.location.shown} during the copy: run it again")
        target.replace_file(path, record.sha256, record.size, record.mtime_ns, chunks, vectors)
        report.files += 1
        report.chunks += len(chunks)
        report.vectors += sum(len(v) for v in vectors)
    report.seconds = time.perf_counter() - started
    return report


def export_kb(kb: str, file: Path) -> TransferReport:
    """Write knowledge base `kb` (any store) into the portable file `file` (a new file)."""
    if file.exists():
        raise ConfigError(f"{file} already exists: give a new file name, or remove it first")
    with KnowledgeBase.open(kb) as source:
        with open_file(file, create=True, embedder=source.embedder_name, dimension=source.dimension) as target:
            return copy_kb(source, target)


def import_kb(file: Path, kb: str) -> TransferReport:
    """Read the portable file `file` (or any SQLite knowledge base) into knowledge base `kb`,
    made if missing (a PostgreSQL one with `kb` a postgresql:// URL)."""
    locate(kb)  # a bad location fails before the file is read
    if not file.exists():
        raise ConfigError(f"{file} does not exist: give the file `kecil rag export NAME FILE` wrote")
    with open_file(file) as source:
        with KnowledgeBase.open(kb, create=True, embedder=source.embedder_name, dimension=source.dimension) as target:
            return copy_kb(source, target)
