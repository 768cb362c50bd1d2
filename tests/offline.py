"""A pytest plugin proving the suite stays offline: any connection or name lookup that leaves the machine fails the test.

kecil opens no network connection except a port the user serves on, a remote endpoint the user
configured, or `kecil pull` (README, Privacy); the tests' servers and package indexes all listen on
loopback. A Python audit hook (PEP 578, `sys.addaudithook`) sees every `socket.connect`,
`socket.getaddrinfo` and `urllib.Request` of the test process: one naming an address that is not
loopback (or a Unix socket) is refused on the spot, and recorded, so that a library catching the
refusal still leaves the test failed. An audit hook cannot be removed once added, so it is added
once per session. What the tests start as subprocesses is outside it (the network namespace test
of `kecil build` covers those).
"""

from __future__ import annotations

import ipaddress
import sys
from urllib.parse import urlsplit

import pytest

_LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_seen: list[str] = []
_installed = False


class LeftTheMachine(ConnectionRefusedError):
    """A test tried to reach an address that is not this machine."""


def is_local(host) -> bool:
    """Whether `host` (a name or an address, as a socket call receives it) stays on this machine."""
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    host = str(host).strip("[]").split("%")[0].lower()
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # 0.0.0.0 and :: as a destination reach this machine on Linux
    return address.is_loopback or address.is_unspecified


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not is_local(address[0]):
            _refuse(f"socket.connect to {address[0]}:{address[1]}")
    elif event == "socket.getaddrinfo":
        if not is_local(args[0]):
            _refuse(f"socket.getaddrinfo of {args[0]!r}")
    elif event == "urllib.Request":
        host = urlsplit(str(args[0])).hostname
        if host is not None and not is_local(host):
            _refuse(f"urllib.Request to {host}")


def _refuse(what: str) -> None:
    _seen.append(what)
    raise LeftTheMachine(f"the test tried to leave the machine: {what} (tests/offline.py allows loopback only)")


def pytest_configure(config) -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


@pytest.fixture(autouse=True)
def _stays_on_this_machine():
    """Fails the test that tried to reach another machine, even if the refusal was caught."""
    del _seen[:]
    yield
    if _seen:
        found = list(_seen)
        del _seen[:]
        pytest.fail(f"the test tried to leave the machine: {'; '.join(found)}", pytrace=False)
