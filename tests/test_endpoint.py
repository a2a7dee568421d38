"""One Endpoint (issue 19.7): a daemon URL's host as written, the host to connect to or bind
(`localhost` -> 127.0.0.1, decided once), TLS, and the one loopback test that the client, the
config's bind check and the daemon's Host check share."""

from __future__ import annotations

import pytest

from claude_mailbox import config, listen, locate, server
from claude_mailbox.errors import MailboxError
from claude_mailbox.locate import Endpoint
from claude_mailbox.setup import autostart


@pytest.mark.parametrize(
    ("url", "host", "connect", "port", "tls", "loopback"),
    [
        ("http://127.0.0.1:37849", "127.0.0.1", "127.0.0.1", 37849, False, True),
        ("http://localhost:5/", "localhost", "127.0.0.1", 5, False, True),
        ("https://LOCALHOST", "LOCALHOST", "127.0.0.1", 443, True, True),
        ("http://[::1]:8080/mcp", "::1", "::1", 8080, False, True),
        ("http://127.9.0.1", "127.9.0.1", "127.9.0.1", 80, False, True),
        ("https://mail.example:9443", "mail.example", "mail.example", 9443, True, False),
        ("http://[2001:db8::1]:1", "2001:db8::1", "2001:db8::1", 1, False, False),
    ],
)
def test_parse(url: str, host: str, connect: str, port: int, tls: bool, loopback: bool) -> None:
    endpoint = Endpoint.parse(url)
    assert (endpoint.host, endpoint.connect_host, endpoint.port, endpoint.tls) == (host, connect, port, tls)
    assert endpoint.is_loopback is loopback
    assert endpoint.ipv6 is (":" in connect)


@pytest.mark.parametrize(
    "url", ["ftp://x:1", "127.0.0.1:1", "http://:1", "http://x:0", "http://x:abc", "http://x:70000"]
)
def test_parse_refuses(url: str) -> None:
    with pytest.raises(MailboxError):
        Endpoint.parse(url)


def test_host_header_brackets_ipv6() -> None:
    assert Endpoint.parse("http://[::1]:5").host_header == "[::1]:5"
    assert Endpoint.parse("http://localhost:5").host_header == "localhost:5"  # as written, not mapped


def test_one_loopback_test_everywhere() -> None:
    assert config.is_loopback is locate.is_loopback
    assert locate.LOOPBACK_NAMES <= server.LOOPBACK_HOSTS
    assert frozenset({"127.0.0.1", "localhost", "::1", "[::1]"}) == server.LOOPBACK_HOSTS  # as before
    for bind in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert locate.is_loopback(bind), bind
    for bind in ("0.0.0.0", "::", "192.0.2.1", "evil.example"):
        assert not locate.is_loopback(bind), bind


def test_one_connect_host_everywhere() -> None:
    """The client connects where the daemon binds, and autostart starts it there."""
    assert listen._address("localhost", 5)[1] == ("127.0.0.1", 5)
    assert listen._address("::1", 5)[1] == ("::1", 5)
    assert autostart.serve_args("http://localhost:4000") == ["--port", "4000", "--bind", "127.0.0.1"]
