"""The code sandbox stops what a model's program must not do: loop forever, use the network,
eat memory, fork without end, detach from the kill, touch or read the host's files; and lets a
correct program pass. Cases that the fallback (no namespaces, no cgroup) must hold too run in
both modes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kecil.eval.sandbox import SandboxLimits, run_python


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert run_python("assert sum([1, 2, 3]) == 6\nprint('ok')").passed
    result = run_python("assert 1 + 1 == 3")
    assert result.status == "failed" and "AssertionError" in result.output


def test_a_looping_solution_is_stopped_at_the_time_limit():
    started = time.monotonic()
    result = run_python("while True:\n    pass", SandboxLimits(timeout=2))
    assert result.status == "timeout"
    assert time.monotonic() - started < 10


def test_a_sleeping_solution_with_children_is_stopped_too():
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '60'])\ntime.sleep(60)"
    started = time.monotonic()
    assert run_python(code, SandboxLimits(timeout=2)).status == "timeout"
    assert time.monotonic() - started < 10


def test_memory_limit():
    assert run_python("x = bytearray(2 * 1024 ** 3)", SandboxLimits(memory_mb=256)).status == "memory"


@pytest.fixture
def loopback_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(1.0)
    yield server
    server.close()


def _reached(server) -> bool:
    try:
        server.accept()[0].close()
        return True
    except socket.timeout:
        return False


def test_a_network_using_solution_gets_no_connection(loopback_server):
    port = loopback_server.getsockname()[1]
    result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')")
    assert result.status == "failed"
    assert not _reached(loopback_server)


def test_raw_system_calls_do_not_reach_the_network_either(loopback_server):
    """Bypassing Python's socket module (libc directly) still finds no network: the namespace holds."""
    port = loopback_server.getsockname()[1]
    code = f"""
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(2, 1, 0)
assert fd >= 0, 'no socket'
address = struct.pack('!HH4s8x', 2, {port}, bytes([127, 0, 0, 1]))
assert libc.connect(fd, address, len(address)) == 0, ('connect failed', ctypes.get_errno())
"""
    result = run_python(code)
    if not result.isolated_network:
        pytest.skip("this kernel refused a network namespace; only the socket prelude applies here")
    assert result.status == "failed"
    assert not _reached(loopback_server)


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are only dropped when kecil runs as root")
def test_as_root_the_program_cannot_write_the_users_files(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.chmod(tmp_path, 0o755)
    result = run_python(f"open({str(target)!r}, 'w').write('gone')", isolation="basic")  # `nobody` alone
    assert result.status == "failed" and "Permission" in result.output
    assert target.read_text() == "keep me"
    result = run_python(f"open({str(target)!r}, 'w').write('gone')")  # with a private root, it is not even there
    if "mount" in result.isolation:
        assert result.status == "failed" and "No such file or directory" in result.output
    assert target.read_text() == "keep me"


MODES = ["auto", "basic"]  # the strongest available, and the fallback without namespaces and cgroup


def _running(marker: str) -> list[int]:
    """`sleep MARKER` processes (a sleep length no other process uses)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                found.append(int(entry))
        except OSError:
            pass
    return found


def _gone(marker: str, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while _running(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _marker() -> str:
    return f"{30 + secrets.randbelow(10**6) / 10**6:.6f}"  # 30.xxxxxx seconds: sleep takes it, nothing else has it


@pytest.mark.parametrize("isolation", MODES)
def test_a_detached_child_does_not_escape_the_kill_or_hold_the_wait(isolation):
    """setsid() children, one holding stdout open: killed at the time limit, and no wait hangs on them."""
    marker = _marker()
    code = f"""
import os, subprocess, time
subprocess.Popen(['sleep', '{marker}'], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    os.execvp('sleep', ['sleep', '{marker}'])
time.sleep(60)
"""
    started = time.monotonic()
    result = run_python(code, SandboxLimits(timeout=2), isolation=isolation)
    assert result.status == "timeout"
    assert time.monotonic() - started < 8
    assert _gone(marker), "a detached child outlived the sandbox"


@pytest.mark.parametrize("isolation", MODES)
def test_a_program_that_exits_leaving_a_detached_child_is_done_at_once(isolation):
    marker = _marker()
    code = f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\nprint('bye')"
    started = time.monotonic()
    result = run_python(code, SandboxLimits(timeout=20), isolation=isolation)
    assert result.passed and "bye" in result.output
    assert time.monotonic() - started < 8  # not held until the child's sleep ends
    assert _gone(marker)


KILLED_KECIL = """
import sys
from kecil.eval.sandbox import SandboxLimits, run_python
program = "import subprocess, sys, time; subprocess.Popen(['sleep', sys.argv[1]], start_new_session=True); time.sleep(60)"
run_python(program.replace("sys.argv[1]", repr(sys.argv[1])), SandboxLimits(timeout=60))
"""


def test_nothing_outlives_a_killed_kecil():
    marker = _marker()
    kecil = subprocess.Popen([sys.executable, "-c", KILLED_KECIL, marker], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        deadline = time.monotonic() + 20
        while not _running(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running(marker), "the program never started"
    finally:
        kecil.kill()
        kecil.wait()
    if "pid" not in run_python("pass").isolation:
        for pid in _running(marker):
            os.kill(pid, signal.SIGKILL)
        pytest.skip("no PID namespace here: the fallback cannot end a detached child when kecil itself is killed")
    assert _gone(marker), "the sandboxed program's child outlived kecil"


FORKS = """
import os, time
made = 0
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    made += 1
print('forks', made)
"""


@pytest.mark.parametrize("isolation", MODES)
def test_the_whole_tree_has_a_process_limit(isolation):
    limits = SandboxLimits(timeout=10, processes=32)
    if isolation == "basic" and os.geteuid() == 0:
        assert _interpreter_drops()  # as nobody, RLIMIT_NPROC is what holds in the fallback
    result = run_python(FORKS, limits, isolation=isolation)
    made = [int(line.split()[1]) for line in result.output.splitlines() if line.startswith("forks")]
    assert not made or made[0] < 32, result.output  # 300 succeeded before
    assert result.status in ("passed", "failed")


def _interpreter_drops() -> bool:
    from kecil.eval.sandbox import _interpreter

    return _interpreter(True)[1]


CHILDREN_MEMORY = """
import os, time
pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = bytearray(300 * 2**20)
        block[::4096] = b"\\1" * len(range(0, len(block), 4096))  # every page touched
        time.sleep(3)
        os._exit(0)
    pids.append(pid)
print('children that finished', sum(os.waitpid(p, 0)[1] == 0 for p in pids))
"""


@pytest.mark.parametrize("isolation", MODES)
def test_the_whole_tree_has_a_memory_limit(isolation):
    """Four children of 300 MiB each under a 512 MiB limit: each fits its own rlimit, the tree does not."""
    result = run_python(CHILDREN_MEMORY, SandboxLimits(timeout=20, memory_mb=512), isolation=isolation)
    assert result.status == "memory", result
    assert "children that finished 4" not in result.output


UNIX_CLIENT = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(1, 1, 0)  # AF_UNIX, SOCK_STREAM, straight from libc: the prelude does not apply
address = (1).to_bytes(2, 'little') + {path!r}.encode() + bytes(1)
reached = libc.connect(fd, address, len(address)) == 0
wrote = {{}}
for folder in ('/tmp', '/dev/shm', '/var/tmp'):
    try:
        empty = os.listdir(folder) == []
        with open(os.path.join(folder, {name!r}), 'w') as handle:
            handle.write('mine')
        wrote[folder] = empty
    except OSError as exc:
        wrote[folder] = str(exc)
seen = []
for path in {secrets!r}:
    try:
        seen.append(open(path, 'rb').read(8).hex())
    except OSError as exc:
        seen.append(type(exc).__name__)
print(json.dumps({{'reached': reached, 'wrote': wrote, 'seen': seen}}))  # short: the result keeps 200 characters
"""


def test_the_program_sees_only_its_own_files(tmp_path):
    """A host Unix socket, the host's /tmp, /dev/shm and /var/tmp, world-readable files and a
    knowledge base: none reachable; the program gets empty temp folders of its own."""
    from kecil.paths import kecil_home
    from kecil.rag.kb_names import kb_path
    from kecil.rag.store import KnowledgeBase

    shared = Path(tempfile.mkdtemp(prefix="kecil-test-", dir="/tmp"))
    try:
        os.chmod(shared, 0o755)
        (shared / "notes.txt").write_text("world-readable")
        os.chmod(shared / "notes.txt", 0o644)
        with KnowledgeBase.open("private-kb", create=True, embedder="all-minilm-l6-v2", dimension=4):
            pass
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(shared / "s.sock"))
        os.chmod(shared / "s.sock", 0o777)
        server.listen()
        server.settimeout(1.0)
        name = f"kecil-escape-{secrets.token_hex(4)}"
        targets = [str(shared / "notes.txt"), str(kb_path("private-kb")), "/etc/hostname"]
        result = run_python(UNIX_CLIENT.format(path=str(shared / "s.sock"), name=name, secrets=targets))
        if "mount" not in result.isolation:
            pytest.skip("no mount namespace here: the fallback relies on `nobody` and file modes")
        assert result.passed, result
        report = json.loads(result.output.splitlines()[-1])
        assert report["reached"] is False and not _reached(server)
        assert report["wrote"] == {"/tmp": True, "/dev/shm": True, "/var/tmp": True}  # its own, empty, writable
        assert not any(os.path.exists(os.path.join(f, name)) for f in ("/tmp", "/dev/shm", "/var/tmp"))
        assert report["seen"] == ["FileNotFoundError"] * 3, report["seen"]
        # kecil's own data is private to its user as well, for whatever runs outside the sandbox
        assert stat.S_IMODE(kecil_home().stat().st_mode) == 0o700
        assert stat.S_IMODE(kb_path("private-kb").stat().st_mode) == 0o600
        assert stat.S_IMODE(kb_path("private-kb").parent.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(shared)


def test_where_no_namespace_can_be_made_the_fallback_runs_and_says_so(tmp_path, monkeypatch):
    """A container that forbids namespaces (here: an `unshare` that fails as it would there)."""
    from kecil.eval import sandbox

    fake = tmp_path / "unshare"
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(sandbox, "_unavailable", set())
    result = run_python("print('ran')")
    assert result.passed and "ran" in result.output
    assert not {"pid", "mount"} & set(result.isolation)
    assert sandbox._unavailable == {"namespaces"}  # later runs go straight to the fallback
    assert run_python("while True: pass", SandboxLimits(timeout=1)).status == "timeout"
