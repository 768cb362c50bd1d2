"""Server settings and key handling, checked without starting a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from kecil.errors import ConfigError
from kecil.models.info import parse_bytes
from kecil.serve.config import ServeConfig, is_loopback, make_key, parse_adapter_spec, read_keys_file
from kecil.serve.security import find_key, presented_key


def test_loopback_needs_no_key_and_anything_else_does():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.4.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("myhost")
    ServeConfig(host="127.0.0.1")
    with pytest.raises(ConfigError, match="--api-key"):
        ServeConfig(host="0.0.0.0")
    ServeConfig(host="0.0.0.0", api_keys=(make_key("a-long-enough-key"),))


def test_keys_file_names_callers_and_rejects_short_or_empty(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nalice:alice-secret-123\n\nbob-secret-4567\n")
    parsed = read_keys_file(keys)
    assert parsed[0].name == "alice" and parsed[0].secret == "alice-secret-123"
    assert parsed[1].name.startswith("key-") and "bob" not in parsed[1].name
    keys.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no keys"):
        read_keys_file(keys)
    with pytest.raises(ConfigError, match="shorter than 8"):
        make_key("short")
    with pytest.raises(ConfigError, match="cannot read"):
        read_keys_file(tmp_path / "missing.txt")


def test_find_key_matches_exactly_and_reads_both_header_forms():
    keys = (make_key("first-key-0001", "a"), make_key("second-key-0002", "b"))
    assert find_key("second-key-0002", keys).name == "b"
    assert find_key("second-key-000", keys) is None and find_key("second-key-00022", keys) is None
    assert find_key(None, keys) is None and find_key("", keys) is None
    assert presented_key({b"authorization": b"Bearer abc"}) == "abc"
    assert presented_key({b"authorization": b"Basic abc"}) is None
    assert presented_key({b"x-api-key": b"xyz"}) == "xyz"


def test_memory_sizes():
    assert parse_bytes("4GiB") == 4 * 1024**3 and parse_bytes("300MiB") == 300 * 1024**2 and parse_bytes("2048") == 2048
    assert parse_bytes("4GB") == 4 * 10**9 and parse_bytes("1MB") == 10**6
    for bad in ("", "lots", "4 parsecs", "-1GB"):
        with pytest.raises(ConfigError):
            parse_bytes(bad)


def test_a_key_with_whitespace_around_it_is_the_key_without_it():
    assert make_key("  a-key-with-spaces-01\n", "a").secret == "a-key-with-spaces-01"
    with pytest.raises(ConfigError, match="shorter than 8"):
        make_key("   short   ")


def test_adapter_specs_name_each_adapter():
    assert parse_adapter_spec("support=/data/adapters/v3") == ("support", Path("/data/adapters/v3"))
    assert parse_adapter_spec("runs/ad") == ("ad", Path("runs/ad"))  # a bare path is named after its folder
    assert parse_adapter_spec("/data/billing.gguf") == ("billing", Path("/data/billing.gguf"))
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_adapter_spec("two words=/x")
    assert ServeConfig(adapter=Path("runs/ad"), adapters=(("b", Path("x")),)).served_adapters() == [("ad", Path("runs/ad")), ("b", Path("x"))]
    with pytest.raises(ConfigError, match="named alike"):
        ServeConfig(adapters=(("a", Path("x")), ("a", Path("y"))))
    with pytest.raises(ConfigError, match="model id"):
        ServeConfig(adapters=(("a+b", Path("x")),))
