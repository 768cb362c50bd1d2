"""A control group per sandbox run, bounding the memory and the number of processes of a whole
process tree and finding every process in it, however it detached (setsid, double fork).

Resource limits (setrlimit) are per process: four children of 900 MiB each pass a 1 GiB
RLIMIT_AS, and RLIMIT_NPROC counts per user and is ignored for root. A cgroup counts the tree:
`memory.max` / `pids.max` on cgroup v2, or the v1 `memory` and `pids` controllers (both seen on
machines kecil runs on). Making one needs a writable /sys/fs/cgroup (root, or a delegated
subtree); where there is none, `TreeGroup.create` returns None and the sandbox says so.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "kecil-sandbox"


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, type, super options) of every cgroup file system mounted here."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            found.append((fields[3], point, tail[0], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup per hierarchy: {"": v2 path, "memory": v1 path, "pids": ...}."""
    paths = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    except (OSError, ValueError):
        pass
    return paths


def _own_folder(root: str, point: str, path: str) -> Path | None:
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        return None  # our cgroup is outside what is mounted here
    return Path(point) / path[len(root):].lstrip("/")


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class TreeGroup:
    """One run's cgroup folders (one on v2; one per controller on v1) and what they limit."""

    folders: list[Path]
    memory: Path | None  # the folder whose memory controller is set
    pids: Path | None
    version: int

    @classmethod
    def create(cls, memory_bytes: int, processes: int) -> TreeGroup | None:
        name = f"{PREFIX}-{os.getpid()}-{time.monotonic_ns()}"
        mounts, own = _mounts(), _own_paths()
        for root, point, kind, options in mounts:  # v2 first: one folder holds both limits
            if kind == "cgroup2" and "" in own:
                parent = _own_folder(root, point, own[""])
                group = parent and cls._make_v2(parent, name, memory_bytes, processes)
                if group:
                    return group
        folders, memory, pids = [], None, None
        for controller in ("memory", "pids"):
            for root, point, kind, options in mounts:
                if kind == "cgroup" and controller in options and controller in own:
                    parent = _own_folder(root, point, own[controller])
                    folder = parent and cls._make(parent, name)
                    if not folder:
                        continue
                    if controller == "memory" and _write(folder / "memory.limit_in_bytes", str(memory_bytes)):
                        _write(folder / "memory.memsw.limit_in_bytes", str(memory_bytes))  # no escape into swap
                        memory = folder
                    elif controller == "pids" and _write(folder / "pids.max", str(processes)):
                        pids = folder
                    folders.append(folder)
                    break
        if memory is None and pids is None:
            for folder in folders:
                _remove(folder)
            return None
        return cls(folders, memory, pids, 1)

    @staticmethod
    def _make(parent: Path, name: str) -> Path | None:
        _sweep(parent)
        try:
            (parent / name).mkdir()
            return parent / name
        except OSError:
            return None

    @classmethod
    def _make_v2(cls, parent: Path, name: str, memory_bytes: int, processes: int) -> TreeGroup | None:
        try:
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
        except OSError:
            return None
        if not {"memory", "pids"} <= enabled:  # works where the parent holds no process itself (v2's rule)
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in ("memory", "pids") if c not in enabled))
        folder = cls._make(parent, name)
        if folder is None:
            return None
        memory = folder if _write(folder / "memory.max", str(memory_bytes)) else None
        if memory:
            _write(folder / "memory.swap.max", "0")
            _write(folder / "memory.oom.group", "0")  # only the process that overran is killed; the verdict says "memory"
        pids = folder if _write(folder / "pids.max", str(processes)) else None
        if memory is None and pids is None:
            _remove(folder)
            return None
        return cls([folder], memory, pids, 2)

    def join(self) -> None:
        """Move the calling process in (between fork and exec: its children are born inside)."""
        for folder in self.folders:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    def processes(self) -> set[int]:
        found: set[int] = set()
        for folder in self.folders:
            try:
                found.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return found

    def kill(self) -> None:
        """SIGKILL every process in the group, in rounds until it is empty (a fork may land between
        reading the list and the kill); cgroup.kill does it in one step where the kernel has it."""
        for folder in self.folders:
            _write(folder / "cgroup.kill", "1")
        for _ in range(50):
            left = self.processes()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def out_of_memory(self) -> bool:
        """Whether the kernel killed a process of the group for going over its memory."""
        if self.memory is None:
            return False
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (self.memory / name).read_text()
            except OSError:
                continue
            found = re.search(r"^oom_kill (\d+)", text, re.M)
            if found:
                return int(found.group(1)) > 0
        try:  # older v1 kernels count only failed charges
            return int((self.memory / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        self.kill()
        for folder in self.folders:
            _remove(folder)


def _remove(folder: Path) -> None:
    for _ in range(50):  # rmdir fails while the last killed process is still being torn down
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _sweep(parent: Path) -> None:
    """Remove the groups of kecil processes that died without cleaning up (kill -9), with whatever
    a program of theirs left running: nothing a sandboxed program starts outlives its kecil."""
    try:
        stale = [f for f in parent.iterdir() if f.name.startswith(PREFIX + "-")]
    except OSError:
        return
    for folder in stale:
        owner = folder.name.split("-")[2]
        if owner.isdigit() and not _alive(int(owner)):
            TreeGroup([folder], None, None, 0).remove()
