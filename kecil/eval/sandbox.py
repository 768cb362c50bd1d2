"""Running model-written Python in a subprocess with a time limit, a memory limit and no network.

Layers, strongest first: the child gets its own empty network namespace (unshare(CLONE_NEWNET):
no interface but a downed loopback, so no packet can leave) when the kernel allows it; as root
it then drops to the `nobody` user so it cannot touch the user's files; resource limits cap its
address space, CPU time, file size and core dumps; a wall-clock timeout kills its whole process
group; and a prelude replaces Python's socket constructors, so even where no namespace can be
made, opening a socket raises.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534

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
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16


@dataclass(frozen=True)
class SandboxResult:
    status: str  # passed | failed | timeout | memory
    returncode: int | None
    output: str  # the last lines of stderr and stdout, for the report
    isolated_network: bool  # a fresh network namespace was made (not only the prelude)

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
    rather than fail every program (the namespace and limits still apply)."""
    if not drop_privileges or _world_usable(Path(sys.executable)):
        return sys.executable, drop_privileges
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin")
    if system and _world_usable(Path(system)):
        return system, True
    return sys.executable, False


def _child_setup(limits: SandboxLimits, drop_privileges: bool, status_fd: int) -> None:
    """Runs in the child between fork and exec: namespace, limits, user; reports the namespace."""
    import resource

    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    isolated = libc.unshare(flags) == 0
    os.write(status_fd, b"1" if isolated else b"0")
    os.close(status_fd)
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(limits.timeout) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    size = limits.file_size_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop_privileges:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` as a Python program in the sandbox; `passed` means it exited with 0 in time."""
    limits = limits or SandboxLimits()
    interpreter, drop = _interpreter(os.geteuid() == 0)
    with tempfile.TemporaryDirectory(prefix="kecil-sandbox-") as workdir:
        program = Path(workdir) / "program.py"
        program.write_text(PRELUDE + "\n" + source, encoding="utf-8")
        if drop:
            os.chown(workdir, NOBODY, NOBODY)
            os.chmod(workdir, 0o700)
            os.chown(program, NOBODY, NOBODY)
        read_end, write_end = os.pipe()
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            process = subprocess.Popen(
                [interpreter, "-I", "-B", str(program)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(write_end,),
                preexec_fn=lambda: _child_setup(limits, drop, write_end),
            )
        finally:
            os.close(write_end)
        with os.fdopen(read_end, "rb") as status:
            isolated = status.read(1) == b"1"
        try:
            out, err = process.communicate(timeout=limits.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            timed_out = True
    text = (err.decode("utf-8", "replace")[-800:] + out.decode("utf-8", "replace")[-200:]).strip()
    code = process.returncode
    if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL):
        verdict = "timeout"
    elif "MemoryError" in text:
        verdict = "memory"
    else:
        verdict = "passed" if code == 0 else "failed"
    return SandboxResult(verdict, code, text, isolated)
