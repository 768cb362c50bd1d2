"""`kecil rag ingest`: read a folder into a knowledge base, incrementally and resumably.

A second run reads again only the files whose size or timestamp changed, and re-chunks only
those whose content hash changed; chunks of files that disappeared are removed. Each file goes
in with one transaction, so killing an ingest loses at most the files not yet committed, and
the next run picks up there with no duplicates. Files that cannot be read (corrupt, binary,
empty, too big, not UTF-8, nested too deep, a zip bomb) are skipped and listed in the report with
the reason; so is any other failure of one file, whatever raised it: the rest go in. The report
shows file names that are not UTF-8 with the bad bytes escaped (store.display_path).

A new knowledge base with no embedding model given gets one chosen from its documents' languages
(language.py), judged on the first batch of chunks (up to `commit_chunks`): multilingual-e5-small
when most of the text is not English, else all-minilm-l6-v2; the report's notes say so, and say
when an English-only model is given (or already used) for text that is mostly not English.

A chunk is embedded as several vectors, one per run of a few sentences (chunking.sentence_windows),
and a search scores it by its best one: a question usually matches one or two sentences of a
200-token chunk, and one vector for the whole chunk blurs them with the rest. Measured with
MiniLM on SQuAD (docs/benchmarks.md): dense recall@5 0.890 -> 0.912 on the held-out half, hybrid
0.978 -> 0.984 there and 0.988 -> 0.994 on the tuning half, for about the same embedding time,
because the windows do not overlap and together hold the chunk's tokens once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kecil.errors import ConfigError
from kecil.rag.chunking import ChunkConfig, TextChunk, chunk_blocks, index_text, sentence_windows
from kecil.rag.language import ENGLISH, MULTILINGUAL, suggested_embedder
from kecil.rag.loaders import UnreadableFile, load, supported_suffixes
from kecil.rag.kb_names import display_path
from kecil.rag.store import KnowledgeBase, check_location, kb_exists, locate

if TYPE_CHECKING:
    from kecil.infer.embeddings import Embedder

# Sentences per vector for each embedding model, measured by bench/rag.py; 0 = one vector per
# chunk, for models not measured with windows (multilingual-e5-small reads 512 tokens and was
# tuned on whole chunks).
WINDOW_SENTENCES = {"all-minilm-l6-v2": 2}


@dataclass(frozen=True)
class IngestConfig:
    """What to ingest where. `embedder` is only for a new knowledge base (default: chosen from the
    documents' languages, see the module docstring)."""

    folder: Path = field(metadata={"help": "Folder (or one file) of .txt .md .html .pdf .docx .csv .json documents."})
    kb: str
    embedder: str | None = field(default=None, metadata={
        "help": "Embedding model for a new knowledge base: all-minilm-l6-v2 (default, English) or multilingual-e5-small "
                "(~100 languages: use it for non-English documents; embeds ~2x slower)."})
    chunking: ChunkConfig = field(default_factory=ChunkConfig)
    # a 200 MB log is rarely a document
    max_file_mb: float = field(default=50.0, metadata={"help": "Skip files bigger than this many MB."})
    batch_size: int = field(default=32, metadata={"hidden": True})
    # Chunks (of any number of files) embedded in one call before their files are written: enough
    # batches that the embedder's two streams rarely wait on a last short one.
    commit_chunks: int = field(default=256, metadata={"hidden": True})
    # Sentences per vector (see above).
    window_sentences: int | None = field(default=None, metadata={
        "help": "Embed each chunk as runs of about this many sentences, a search scoring it by its best run "
                "(default: the measured best for the embedder; 0: one vector per chunk)."})

    def __post_init__(self) -> None:
        check_location(self.kb)
        if self.max_file_mb <= 0:
            raise ConfigError(f"max_file_mb must be above 0, got {self.max_file_mb}")
        if self.batch_size < 1 or self.commit_chunks < 1:
            raise ConfigError(f"batch_size and commit_chunks must be at least 1, got {self.batch_size} and {self.commit_chunks}")
        if self.window_sentences is not None and self.window_sentences < 0:
            raise ConfigError(f"window_sentences must be 0 (one vector per chunk) or more, got {self.window_sentences}")


@dataclass
class IngestReport:
    kb: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    # paths in these lists are display_path()s: printable and JSON-safe whatever the file system holds
    other_types: int = 0  # files with a suffix kecil does not read
    chunks: int = 0  # chunks written in this run
    vectors: int = 0  # their vectors (one or more per chunk)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    embedder: str = ""  # the knowledge base's embedding model
    notes: list[str] = field(default_factory=list)  # things to tell the user (the embedder chosen, a language mismatch)


@dataclass
class _Pending:
    path: str
    sha256: str
    size: int
    mtime_ns: int
    chunks: list[TextChunk]
    known: bool


# (files done, files to do) after each file; the CLI draws a bar from it
Progress = Callable[[int, int], None]


def _candidates(folder: Path) -> tuple[list[Path], int]:
    """Supported files under `folder` (hidden files and folders left out), and how many others."""
    if folder.is_file():
        return ([folder], 0) if folder.suffix.lower() in supported_suffixes() else ([], 1)
    suffixes = set(supported_suffixes())
    found, other = [], 0
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        if path.suffix.lower() in suffixes:
            found.append(path)
        else:
            other += 1
    return found, other


def ingest(config: IngestConfig, *, embedder: Embedder | None = None, progress: Progress | None = None) -> IngestReport:
    """Bring knowledge base `config.kb` up to date with `config.folder`."""
    started = time.perf_counter()
    folder = config.folder.expanduser().resolve()
    if not folder.exists():
        raise ConfigError(f"{config.folder} does not exist: give the folder of documents to ingest")
    report = IngestReport(locate(config.kb).shown)  # a URL without its password
    paths, report.other_types = _candidates(folder)

    kb = KnowledgeBase.open(config.kb, embedder=config.embedder) if kb_exists(config.kb) else None
    owned: Embedder | None = None
    try:
        stored = kb.files() if kb else {}
        present = {str(p) for p in paths}
        prefix = str(folder) + "/"
        gone = [p for p in stored if (p == str(folder) or p.startswith(prefix)) and p not in present]

        todo: list[tuple[Path, int, int]] = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError as exc:  # gone or unreadable since the folder was listed
                report.skipped.append((display_path(str(path)), f"cannot read it ({exc.strerror or exc})"))
                continue
            record = stored.get(str(path))
            if record and record.size == stat.st_size and record.mtime_ns == stat.st_mtime_ns:
                report.unchanged += 1
            else:
                todo.append((path, stat.st_size, stat.st_mtime_ns))
        # A new knowledge base whose model is left to kecil: decided on the first chunks read
        choose = kb is None and config.embedder is None and embedder is None
        if todo and embedder is None and not choose:
            embedder = owned = _load(kb.embedder_name if kb else config.embedder)
        if kb is None and embedder is not None:
            kb = KnowledgeBase.open(config.kb, create=True, embedder=embedder.name, dimension=embedder.dimension)
        if kb is not None and embedder is not None:
            kb.check_embedder(embedder.name, embedder.dimension)
        if kb is not None and gone:
            kb.remove_files(gone)
            report.removed = [display_path(p) for p in gone]

        pending: list[_Pending] = []
        done = 0
        judged = False

        def commit() -> None:
            nonlocal kb, embedder, owned, judged
            if pending and not judged:  # the first batch: enough text to tell its language
                judged = True
                suggested, share = suggested_embedder(c.text for p in pending for c in p.chunks)
                if embedder is None:
                    embedder = owned = _load(suggested)
                    kb = KnowledgeBase.open(config.kb, create=True, embedder=embedder.name, dimension=embedder.dimension)
                    if suggested == MULTILINGUAL:
                        report.notes.append(f"{1 - share:.0%} of the text is not English: embedding with {MULTILINGUAL} "
                                            f"(about 100 languages); --embedder {ENGLISH} chooses the English model")
                elif suggested == MULTILINGUAL and embedder.name == ENGLISH:
                    report.notes.append(f"{1 - share:.0%} of the text is not English, but {ENGLISH} was trained on English: "
                                        f"search will find more with `--embedder {MULTILINGUAL}` into a new knowledge base")
            _commit(kb, embedder, pending, config, report)

        for path, size, mtime_ns in todo:
            record = stored.get(str(path))
            item = _read(path, size, mtime_ns, config, report, known=record is not None)
            if item is None:  # unreadable now: whatever it held before no longer stands
                if record is not None:
                    kb.remove_files([str(path)])
                    report.removed.append(display_path(str(path)))
            elif record is not None and record.sha256 == item.sha256:
                kb.touch_file(str(path), size, mtime_ns)
                report.unchanged += 1
            else:
                pending.append(item)
            done += 1
            # Embedding many files' chunks together keeps batches full; each file still commits alone.
            if sum(len(p.chunks) for p in pending) >= config.commit_chunks:
                commit()
                if progress:
                    progress(done, len(todo))
        commit()
        if progress:
            progress(len(todo), len(todo))
        report.embedder = kb.embedder_name if kb is not None else ""
    finally:
        if owned is not None:
            owned.close()
        if kb is not None:
            kb.close()
    report.seconds = time.perf_counter() - started
    return report


def _load(name: str | None) -> Embedder:
    from kecil.infer.embeddings import load_embedder

    return load_embedder(name)


def _read(path: Path, size: int, mtime_ns: int, config: IngestConfig, report: IngestReport, *, known: bool) -> _Pending | None:
    shown = display_path(str(path))
    limit = int(config.max_file_mb * 1024 * 1024)
    if size > limit:
        report.skipped.append((shown, f"{size / 2**20:.0f} MB is over the {config.max_file_mb:g} MB limit (raise --max-file-mb to take it)"))
        return None
    try:
        data = path.read_bytes()
        chunks = chunk_blocks(load(path, data), config.chunking)
    except UnreadableFile as exc:
        report.skipped.append((shown, str(exc)))
        return None
    except OSError as exc:
        report.skipped.append((shown, f"cannot read it ({exc.strerror or exc})"))
        return None
    except Exception as exc:  # noqa: BLE001 - a loader's own bug or a library's surprise is still one file's problem
        report.skipped.append((shown, _failure(exc)))
        return None
    if not chunks:
        report.skipped.append((shown, "no text found in it"))
        return None
    return _Pending(str(path), hashlib.sha256(data).hexdigest(), size, mtime_ns, chunks, known)


def _commit(kb: KnowledgeBase, embedder: Embedder, pending: list[_Pending], config: IngestConfig, report: IngestReport) -> None:
    if not pending:
        return
    size = WINDOW_SENTENCES.get(embedder.name, 0) if config.window_sentences is None else config.window_sentences
    windows = [[index_text(w, c.section) for w in sentence_windows(c.text, size)] if size else [index_text(c.text, c.section)]
               for item in pending for c in item.chunks]
    started = time.perf_counter()
    flat = embedder.embed([w for chunk in windows for w in chunk], batch_size=config.batch_size)
    report.embed_seconds += time.perf_counter() - started
    vectors, at = [], 0
    for chunk in windows:
        vectors.append(flat[at : at + len(chunk)])
        at += len(chunk)
    report.vectors += len(flat)
    at = 0
    for item in pending:
        mine, at = vectors[at : at + len(item.chunks)], at + len(item.chunks)
        try:
            kb.replace_file(item.path, item.sha256, item.size, item.mtime_ns, item.chunks, mine)
        except kb.fatal_errors:
            raise  # the store itself (disk full, locked): not one file's fault, every file would fail
        except Exception as exc:  # noqa: BLE001 - this file's rows were refused; its transaction rolled back
            report.skipped.append((display_path(item.path), _failure(exc)))
            report.vectors -= sum(len(v) for v in mine)
            continue
        report.chunks += len(item.chunks)
        (report.updated if item.known else report.added).append(display_path(item.path))
    pending.clear()


def _failure(exc: BaseException) -> str:
    """The reason for an unexpected failure, for the report: what was raised, shortly."""
    text = str(exc)[:120]
    return f"could not be read ({type(exc).__name__}{': ' + text if text else ''})"
