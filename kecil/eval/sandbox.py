"""Running model-written Python with a time limit, memory and process limits for its whole process
tree, no network, and no view of the host's files.

Layers, strongest first (SandboxResult.isolation lists those that held for a run):
- namespaces made by util-linux `unshare` (present wherever util-linux is): a PID namespace whose
  first process (sandbox_init.py) is its init, so ending it ends every process the program made,
  setsid() or not; a network namespace with nothing in it; a mount namespace whose root is a
  tmpfs holding only the system's programs and libraries read-only and empty /tmp, /var/tmp,
  /dev/shm: no home folder, no kecil data, no host socket file exists in there. Without root,
  the same inside a user namespace where the kernel allows one;
- a cgroup (cgroup.py) capping the memory and process count of the whole tree, and listing
  every process in it for the kill;
- as root, the program runs as `nobody`, with per-process rlimits (address space, CPU time, file
  size, no core dumps, and as nobody a process count);
- a wall-clock timeout after which the whole tree is killed, and a bound on every wait after it;
- a prelude that replaces Python's socket constructors.
Where no namespace can be made (no unshare, or a container that forbids them) the program runs
as a plain child that is still its orphans' reaper, is killed with all its descendants, and is
watched for the tree's memory and process count by polling /proc (coarser than a cgroup, 50 ms).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kecil.eval.cgroup import TreeGroup

NOBODY = 65534
PR_SET_PDEATHSIG = 1
SUPERVISOR = Path(__file__).with_name("sandbox_init.py")
# What the program's root holds, read-only (besides its interpreter's folders): the system's
# programs and libraries and the few files of /etc that loading them needs.
SYSTEM = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/ld.so.conf",
          "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives"]
_unavailable: set[str] = set()  # "namespaces" once they failed: later runs go straight to the fallback

PRELUDE = '''\
import socket as _socket_module, _socket
def _no_network(*args, **kwargs):
    raise OSError(101, "network access is disabled in the kecil sandbox")
class _NoSocket(_socket_module.socket):
    def __init__(self, *args, **kwargs):
        _no_network()
_socket_module.socket = _socket.socket = _NoSocket
_socket_module.create_connection = _socket_module.socketpair = _socket_module.fromfd = _no_network
del _socket_module, _socket, _NoSocket
'''


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 10.0  # wall-clock seconds
    memory_mb: int = 1024  # the whole process tree (and each process's address space)
    file_size_mb: int = 16
    processes: int = 64  # processes and threads of the whole tree


@dataclass(frozen=True)
class SandboxResult:
    status: str  # passed | failed | timeout | memory
    returncode: int | None
    output: str  # the last lines of stderr and stdout, for the report
    isolated_network: bool  # a fresh network namespace was made (not only the prelude)
    isolation: tuple[str, ...] = ()  # what held: pid, network, mount, nobody, cgroup-memory, cgroup-pids

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _world_usable(path: Path) -> bool:
    """Whether `nobody` can run `path`: every folder on the way searchable, the file executable."""
    path = path.resolve()
    for folder in path.parents:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & stat.S_IXOTH)


def _interpreter(drop_privileges: bool) -> tuple[str, bool]:
    """(python to run, whether to drop to nobody): a python `nobody` can run, else stay root
    rather than fail every program (the namespaces and limits still apply)."""
    if not drop_privileges or _world_usable(Path(sys.executable)):
        return sys.executable, drop_privileges
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin")
    if system and _world_usable(Path(system)):
        return system, True
    return sys.executable, False


def _interpreter_folders(interpreter: str) -> list[str]:
    """The folders a python needs: its prefix (bin/..) and, for a venv, the real interpreter's."""
    folders = []
    for path in (Path(interpreter).absolute(), Path(os.path.realpath(interpreter))):
        prefix = str(path.parent.parent)
        if prefix not in folders and prefix != "/":
            folders.append(prefix)
    return folders


def run_python(source: str, limits: SandboxLimits | None = None, *, isolation: str = "auto") -> SandboxResult:
    """Run `source` as a Python program in the sandbox; `passed` means it exited with 0 in time.
    `isolation="basic"` runs the fallback (no namespaces, no cgroup) even where more is possible."""
    limits = limits or SandboxLimits()
    interpreter, drop = _interpreter(os.geteuid() == 0)
    with tempfile.TemporaryDirectory(prefix="kecil-sandbox-") as workdir:
        program = Path(workdir) / "program.py"
        program.write_text(PRELUDE + "\n" + source, encoding="utf-8")
        (Path(workdir) / "root").mkdir()
        if drop:
            os.chown(workdir, NOBODY, NOBODY)
            os.chmod(workdir, 0o700)
            os.chown(program, NOBODY, NOBODY)
        config = {"program": str(program), "root": str(Path(workdir) / "root"), "interpreter": interpreter, "drop": drop,
                  "read_only": SYSTEM + _interpreter_folders(interpreter), "tmpfs_mb": limits.memory_mb,
                  "limits": {"memory_mb": limits.memory_mb, "cpu_seconds": int(limits.timeout) + 1,
                             "file_size_mb": limits.file_size_mb, "processes": limits.processes}}
        namespaces = isolation == "auto" and "namespaces" not in _unavailable and shutil.which("unshare") is not None
        if namespaces:
            outcome = _run(config, limits, namespaces=True, cgroup=True)
            if outcome is not None:
                return outcome
            _unavailable.add("namespaces")
        return _run(config, limits, namespaces=False, cgroup=isolation == "auto")


def _run(config: dict, limits: SandboxLimits, *, namespaces: bool, cgroup: bool) -> SandboxResult | None:
    """One run; None when the namespaces could not be made (the caller falls back)."""
    group = TreeGroup.create(limits.memory_mb * 2**20, limits.processes) if cgroup else None
    try:
        return _supervise(config, limits, namespaces, group)
    finally:
        if group is not None:
            group.remove()


def _supervise(config: dict, limits: SandboxLimits, namespaces: bool, group: TreeGroup | None) -> SandboxResult | None:
    started = time.monotonic()
    status_read, status_write = os.pipe()
    config = {**config, "status_fd": status_write, "namespaces": namespaces, "tmp": "/tmp" if namespaces else None}
    libc = ctypes.CDLL(None)  # loaded here: nothing is imported or loaded between fork and exec
    command = [sys.executable, "-I", "-B", "-S", "-c", SUPERVISOR.read_text(encoding="utf-8"), json.dumps(config)]
    if namespaces:
        command = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc", "--uts"] + (
            [] if os.geteuid() == 0 else ["--user", "--map-root-user"]) + ["--"] + command
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   pass_fds=(status_write,), preexec_fn=lambda: _child_setup(group, libc))
    finally:
        os.close(status_write)
    status = _StatusReader(status_read)
    ready = status.wait_for("ready", timeout=10.0)
    if ready is None:  # the namespaces or the private root could not be made
        _kill_tree(process, group, namespaces)
        _collect(process)
        status.close()
        if namespaces:
            return None
        return SandboxResult("failed", process.returncode, "the sandbox could not start the program", False)
    watch = _Watch(process.pid, limits, group, lambda: _kill_tree(process, group, namespaces))
    try:
        out, err = process.communicate(timeout=max(0.1, limits.timeout - (time.monotonic() - started)))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_tree(process, group, namespaces)
        out, err = _collect(process)
    finally:
        watch.stop()
    _kill_tree(process, group, namespaces)  # the program exited, but what it detached may not have
    exit_status = status.wait_for("exit", timeout=1.0)
    status.close()
    code = exit_status["exit"] if exit_status and exit_status["exit"] is not None else process.returncode
    text = (err.decode("utf-8", "replace")[-800:] + out.decode("utf-8", "replace")[-200:]).strip()
    held = tuple(ready["isolation"]) + tuple(f"cgroup-{c}" for c in ("memory", "pids") if group and getattr(group, c))
    if watch.over_memory or (group is not None and group.out_of_memory()):
        verdict = "memory"
    elif watch.over_processes:
        verdict, text = "failed", (text + f"\nkecil sandbox: more than {limits.processes} processes").strip()
    elif timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL):
        verdict = "timeout"
    elif "MemoryError" in text:
        verdict = "memory"
    else:
        verdict = "passed" if code == 0 else "failed"
    return SandboxResult(verdict, code, text, "network" in held, held)


def _child_setup(group: TreeGroup | None, libc: ctypes.CDLL) -> None:
    """Between fork and exec of the sandbox's first process: its own session, death with kecil
    (so a killed `kecil eval` leaves nothing running), and the cgroup before anything can fork."""
    os.setsid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if group is not None:
        group.join()


def _kill_tree(process: subprocess.Popen, group: TreeGroup | None, namespaces: bool) -> None:
    """SIGKILL the sandbox's whole tree. With namespaces, `unshare` first: its death kills the
    namespace's init and with it everyone inside. Then the cgroup's members, then every
    descendant (stopped first, so none forks while the others die), then the first process
    (last without namespaces: it is the reaper that keeps the orphans findable below it)."""
    if namespaces and process.poll() is None:
        process.kill()
    if group is not None:
        group.kill()
    _kill_below(process.pid)
    if process.poll() is None:
        process.kill()


def _kill_below(root: int) -> None:
    for _ in range(20):
        tree = _descendants(root)
        if not tree:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in tree:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        time.sleep(0.01)


def _collect(process: subprocess.Popen) -> tuple[bytes, bytes]:
    """What the program wrote, after the kill; bounded, so a pipe something still holds open
    costs the tail of the output, never a hang."""
    try:
        return tuple(part or b"" for part in process.communicate(timeout=2.0))
    except subprocess.TimeoutExpired:
        for stream in (process.stdout, process.stderr):
            stream.close()
        try:
            process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
        return b"", b"kecil sandbox: output lost, a process of the program could not be ended"


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc: orphans of the program are reaped by the sandbox's
    first process, so they stay below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    state, parent = handle.read().rsplit(b")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if state != b"Z":  # a zombie is dead already, waiting for its parent to reap it
                children.setdefault(int(parent), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class _StatusReader:
    """The JSON lines sandbox_init.py writes on the status pipe, read with a deadline."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.lines = fd, b"", []

    def wait_for(self, key: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if key in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            piece = os.read(self.fd, 65536)
            if not piece:
                return None
            self.buffer += piece
            *complete, self.buffer = self.buffer.split(b"\n")
            self.lines += [json.loads(c) for c in complete if c.strip()]

    def close(self) -> None:
        os.close(self.fd)


class _Watch(threading.Thread):
    """Polls the tree's memory and process count where no cgroup bounds them, and ends it past
    the limits: coarser than a cgroup (a fast fork bomb or allocation can overshoot by one poll)."""

    def __init__(self, root: int, limits: SandboxLimits, group: TreeGroup | None, kill: Callable[[], None]):
        super().__init__(daemon=True)
        self.root, self.limits, self.kill = root, limits, kill
        self.memory = group is None or group.memory is None
        self.count = group is None or group.pids is None
        self.over_memory = self.over_processes = False
        self._halt = threading.Event()
        if self.memory or self.count:
            self.start()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._halt.wait(0.05):
            tree = _descendants(self.root)
            if self.count and len(tree) > self.limits.processes:
                self.over_processes = True
            if self.memory:
                resident = 0
                for pid in tree:
                    try:
                        resident += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                    except (OSError, ValueError, IndexError):
                        pass
                self.over_memory = resident > self.limits.memory_mb * 2**20
            if self.over_memory or self.over_processes:
                self.kill()
                return

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=1.0)
