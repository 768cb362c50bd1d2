"""The code sandbox stops what a model's program must not do: loop forever, use the network,
eat memory, touch the user's files; and lets a correct program pass."""

from __future__ import annotations

import os
import socket
import time

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
    result = run_python(f"open({str(target)!r}, 'w').write('gone')")
    assert result.status == "failed" and "Permission" in result.output
    assert target.read_text() == "keep me"
