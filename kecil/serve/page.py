"""The web page of `kecil serve`: its files (kecil/serve/web/, shipped in the package) at `/`, and
the few routes it needs beyond the OpenAI API — uploading documents into a knowledge base and
ingesting them, with progress, and listing the `kecil eval --html` reports of `--reports DIR`.

The page's files are public (they are in the package) and load without a key, under a
Content-Security-Policy that allows scripts, styles, fetches and frames from the server's own
origin only; everything else here asks for the key as the OpenAI routes do.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse

from kecil.errors import ConfigError, KecilError
from kecil.serve.protocol import APIError

WEB_DIR = Path(__file__).with_name("web")
PAGE_PREFIX = "/web/"  # the page's own files; "/" is its index.html
# No inline script or style, nothing from another origin; data: images only for the eval reports' plots.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
               "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# An eval report runs no script: its own inline style and data: plots, nothing else.
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'"
PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
MAX_PATH_PARTS = 8  # folders an uploaded file may sit in (a dropped folder keeps its layout)
MAX_JOBS = 20  # finished ingests remembered for the page to read
_WRITING = threading.Lock()


def is_page_path(path: str) -> bool:
    """Whether `path` is one of the page's public files (served without a key)."""
    return path == "/" or path.startswith(PAGE_PREFIX)


def upload_root(kb: str) -> Path:
    """Where the files uploaded into knowledge base `kb` are kept (and ingested from)."""
    from kecil.rag.kb_names import check_name, kb_dir

    from kecil.paths import private_dir

    return private_dir(kb_dir() / "uploads" / check_name(kb))


def safe_relative(path: str) -> Path:
    """An uploaded file's path inside its knowledge base's folder, refused when it could leave it."""
    parts = path.split("/")
    bad = (not path or "\\" in path or "\0" in path or len(parts) > MAX_PATH_PARTS
           or any(not p or p in (".", "..") or p.startswith(".") or len(p.encode()) > 255 for p in parts))
    if bad:
        raise APIError(400, f"the file path {path[:200]!r} is not allowed: send a relative path of at most "
                       f"{MAX_PATH_PARTS} parts, none empty, hidden, '.' or '..'", param="path")
    return Path(*parts)


def folder_usage(root: Path) -> tuple[int, int]:
    """(files, bytes) in an upload folder, a write in flight's hidden temp file included."""
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                size += os.lstat(os.path.join(folder, name)).st_size
                files += 1
            except FileNotFoundError:  # renamed or removed while we looked
                pass
    return files, size


def check_room(kb: str, root: Path, path: Path, size: int, config) -> None:
    """Refuse a file that would take `kb`'s upload folder past --max-upload or --max-upload-files,
    or the disk below --min-free-disk; replacing a file counts only the difference."""
    from kecil.scratch import format_bytes

    files, used = folder_usage(root)
    replaced = path.lstat().st_size if path.is_file() else None
    if replaced is None and files + 1 > config.max_upload_files:
        raise APIError(413, f"the knowledge base {kb!r} already holds {files} uploaded files, the server's limit "
                       f"(--max-upload-files {config.max_upload_files}): put more files in another knowledge base, or "
                       f"restart the server with a larger --max-upload-files", code="upload_limit")
    total = used - (replaced or 0) + size
    if total > config.max_upload_bytes:
        raise APIError(413, f"{path.name!r} ({format_bytes(size)}) would bring the files uploaded into {kb!r} to "
                       f"{format_bytes(total)}, over the server's limit of {format_bytes(config.max_upload_bytes)} "
                       f"per knowledge base (--max-upload {config.max_upload_bytes}): put it in another knowledge base, "
                       f"or restart the server with a larger --max-upload, e.g. --max-upload 5GB", code="upload_limit")
    free = shutil.disk_usage(root).free
    if free < size + config.min_free_disk:
        raise APIError(507, f"the disk holding the knowledge bases has {format_bytes(free)} free; {path.name!r} needs "
                       f"{format_bytes(size)} and the server keeps {format_bytes(config.min_free_disk)} free "
                       f"(--min-free-disk): free some space on that disk, or restart the server with a smaller "
                       f"--min-free-disk", type="server_error", code="insufficient_storage")


def write_upload(kb: str, relative: str, data: bytes, config=None) -> Path:
    """Write one uploaded file under `kb`'s folder, atomically (a temp file renamed into place),
    within `config`'s (a ServeConfig's) upload limits when given."""
    from kecil.rag.loaders import supported_suffixes

    target = safe_relative(relative)
    if target.suffix.lower() not in supported_suffixes():
        raise APIError(415, f"kecil reads {' '.join(supported_suffixes())} files, not "
                       f"{target.suffix or 'files without a suffix'}", code="unsupported_file_type")
    root = upload_root(kb).resolve()
    path = root / target
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder of the path should be
        raise APIError(400, f"could not make the folders of {relative[:200]!r} ({exc.strerror or exc})", param="path") from None
    if not path.parent.resolve().is_relative_to(root) or path.is_symlink():  # a link planted inside cannot lead out
        raise APIError(400, f"the file path {relative[:200]!r} leads outside the knowledge base's folder", param="path")
    with _WRITING:  # one upload checked and written at a time: two cannot both pass the total's check
        if config is not None:
            check_room(kb, root, path, len(data), config)
        _write_file(path, relative, data)
    return path


def _write_file(path: Path, relative: str, data: bytes) -> None:
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")  # hidden: an ingest running now skips it
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:  # a folder where the file should go, a full disk: said, and nothing half-written is left
        raise APIError(507 if exc.errno == errno.ENOSPC else 400,
                       f"could not write {relative[:200]!r} into the knowledge base's folder ({exc.strerror or exc})",
                       param="path") from None


@dataclass
class Job:
    """One ingest the page started: what the page polls for."""

    id: str
    kb: str
    state: str = "running"  # running, done, failed
    done: int = 0
    total: int = 0
    report: dict | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)

    def view(self) -> dict:
        return {"id": self.id, "kb": self.kb, "state": self.state, "done": self.done, "total": self.total,
                "report": self.report, "error": self.error}


class Ingests:
    """The page's ingests, one at a time (each writes its knowledge base in one SQLite file)."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    def start(self, kb: str, embedder_for) -> Job:
        with self.lock:
            if any(job.state == "running" for job in self.jobs.values()):
                raise APIError(409, "another upload is being ingested: wait for it to finish, then ingest again",
                               code="ingest_running")
            job = Job(str(next(self.ids)), kb)
            self.jobs[job.id] = job
            for old in sorted(self.jobs.values(), key=lambda j: j.started)[:-MAX_JOBS]:
                self.jobs.pop(old.id)
        threading.Thread(target=self._run, args=(job, embedder_for), name="kecil-ingest", daemon=True).start()
        return job

    def _run(self, job: Job, embedder_for) -> None:
        from kecil.rag.ingest import IngestConfig, ingest

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        root = upload_root(job.kb)
        try:
            report = ingest(IngestConfig(folder=root, kb=job.kb), embedder=embedder_for(job.kb), progress=progress)
            job.report = report_view(report, str(root.resolve()))
            job.state = "done"
        except KecilError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # reported to the page, never a silent hang
            job.error, job.state = f"ingest failed ({type(exc).__name__}: {exc})", "failed"


def report_view(report, root: str) -> dict:
    """An ingest report for the page, files named inside the upload folder (not the server's paths)."""
    from kecil.serve.rag import relative_to

    def name(path: str) -> str:
        return relative_to(path, root)

    return {"added": [name(p) for p in report.added], "updated": [name(p) for p in report.updated],
            "unchanged": report.unchanged, "removed": [name(p) for p in report.removed],
            "skipped": [{"file": name(p), "reason": why} for p, why in report.skipped],
            "chunks": report.chunks, "seconds": round(report.seconds, 2), "embedder": report.embedder, "notes": report.notes}


def list_reports(folder: Path | None) -> list[dict]:
    if folder is None or not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.suffix.lower() == ".html" and p.is_file() and not p.name.startswith(".")]
    return [{"name": p.name, "bytes": p.stat().st_size, "modified": int(p.stat().st_mtime)}
            for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def add_page_routes(app: FastAPI, server) -> None:
    files = {p.name for p in WEB_DIR.iterdir() if p.is_file()}  # fixed at start-up: nothing else is served from there
    ingests = Ingests()
    reports = server.config.reports_dir.expanduser() if server.config.reports_dir else None

    def page_file(name: str) -> FileResponse:
        if name not in files:
            raise APIError(404, f"the page has no file {name[:100]!r}")
        return FileResponse(WEB_DIR / name, headers={**PAGE_HEADERS, "Content-Security-Policy": PAGE_POLICY})

    @app.get("/", include_in_schema=False)
    async def index():
        return page_file("index.html")

    @app.get(PAGE_PREFIX + "{name}", include_in_schema=False)
    async def web_file(name: str):
        return page_file(name)

    @app.get("/web", include_in_schema=False)
    async def web_root():
        return RedirectResponse("/")

    @app.put("/kecil/kb/{kb}/files/{path:path}")
    async def upload(kb: str, path: str, request: Request):
        """One file into knowledge base `kb`'s upload folder (new or existing); its size is capped by --max-body,
        the folder's by --max-upload and --max-upload-files, and the disk must keep --min-free-disk free."""
        _check_kb_name(kb)
        data = await request.body()
        written = await asyncio.to_thread(write_upload, kb, path, data, server.config)
        return {"kb": kb, "file": str(written.relative_to(upload_root(kb).resolve())), "bytes": len(data)}

    @app.post("/kecil/kb/{kb}/ingest")
    async def start_ingest(kb: str):
        """Ingest `kb`'s upload folder (as `kecil rag ingest`); poll /kecil/ingests/ID for progress."""
        _check_kb_name(kb)
        return ingests.start(kb, lambda name: _embedder(server, name)).view()

    @app.get("/kecil/ingests/{job_id}")
    async def ingest_status(job_id: str):
        job = ingests.jobs.get(job_id)
        if job is None:
            raise APIError(404, f"no ingest {job_id[:20]!r} is known (the server keeps the last {MAX_JOBS})")
        return job.view()

    @app.get("/kecil/reports")
    async def report_list():
        return {"folder": bool(reports), "reports": list_reports(reports)}

    @app.get("/kecil/reports/{name}")
    async def report_file(name: str):
        if not any(r["name"] == name for r in list_reports(reports)):
            raise APIError(404, f"there is no report {name[:100]!r}" + ("" if reports else ": start the server with --reports DIR"))
        return FileResponse(reports / name, media_type="text/html",
                            headers={**PAGE_HEADERS, "Content-Security-Policy": REPORT_POLICY})


def _check_kb_name(kb: str) -> None:
    from kecil.rag.kb_names import check_name

    try:
        check_name(kb)
    except ConfigError as exc:
        raise APIError(400, str(exc), param="kb") from None


def _embedder(server, kb: str):
    """The server's own copy of an existing knowledge base's embedder (None: ingest picks one for a new base)."""
    from kecil.rag.store import KnowledgeBase, kb_exists

    if not kb_exists(kb):
        return None
    with KnowledgeBase.open(kb) as opened:
        return server.pool.any_embedder(opened.embedder_name)
