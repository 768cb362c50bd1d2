"""The offline guard (tests/offline.py): loopback passes, anything else is refused and fails the test."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tests import offline


@pytest.mark.parametrize(("host", "local"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True), ("0.0.0.0", True),
    (None, True), (b"localhost", True), ("192.0.2.1", False), ("10.0.0.1", False), ("example.com", False), ("2001:db8::1", False),
])
def test_what_counts_as_this_machine(host, local):
    assert offline.is_local(host) is local


def test_a_loopback_connection_goes_through():
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()[:2], timeout=2):
            pass


@pytest.mark.parametrize("reach", [
    lambda: socket.create_connection(("192.0.2.1", 80), timeout=0.1),  # TEST-NET-1: never routed
    lambda: socket.getaddrinfo("example.com", 443),
    lambda: urllib.request.urlopen("http://192.0.2.1/", timeout=0.1),
])
def test_leaving_the_machine_is_refused_and_recorded(reach):
    try:
        with pytest.raises(OSError, match="tried to leave the machine"):
            reach()
        assert offline._seen  # a library that swallowed the refusal would still fail the test
    finally:
        offline._seen.clear()
