"""Browser and network defences on every route: foreign Origin (403), foreign Host / DNS rebinding
(421), simple-request content types (415), oversized requests (413), and loopback-only binding.
Each refused request must leave the store untouched."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from harness import Daemon, base_env, free_port, run_cli
from rawhttp import check, peek, request, send

_counter = itertools.count()


def unique(label: str) -> str:
    return f"{label}-{next(_counter)}"


FOREIGN_ORIGINS = [
    "https://evil.example",
    "http://evil.example:37849",
    "http://127.0.0.1.evil.example",
    "http://localhost.evil.example:8080",
    "null",
    "file://",
    "chrome-extension://abcdefghijklmnop",
    "http://192.168.1.10:37849",
    "http://0.0.0.0:37849",
    "http://127.0.0.1:37849@evil.example",
]


def _routes(sender: str, recipient: str) -> list[tuple[str, str, dict[str, object] | None, dict[str, str]]]:
    """(method, path, json body, headers) for a request that would succeed without the Origin."""
    mcp_call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "send", "arguments": {"to": recipient, "body": "via mcp", "from": sender}},
    }
    return [
        ("POST", "/v1/send", {"to": recipient, "body": "cross-site"}, {"X-Mailbox": sender}),
        ("POST", f"/v1/check-inbox?name={recipient}", None, {"X-Mailbox": recipient}),
        ("GET", f"/v1/peek?name={recipient}", None, {}),
        ("GET", "/v1/list", None, {"X-Mailbox": recipient}),
        ("GET", "/health", None, {}),
        ("GET", "/openapi.json", None, {}),
        (
            "POST",
            "/mcp",
            mcp_call,
            {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"},
        ),
    ]


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_foreign_origin_is_403_on_every_route_and_changes_nothing(server: Daemon, origin: str) -> None:
    sender, recipient = unique("alice"), unique("bob")
    assert send(server.url, sender, recipient, "already there").status == 201
    for method, path, body, headers in _routes(sender, recipient):
        kwargs = {"json_body": body} if body is not None else {}
        reply = request(server.url, method, path, headers={**headers, "Origin": origin}, **kwargs)  # type: ignore[arg-type]
        assert reply.status == 403, (method, path, reply.status, reply.body)
        assert reply.error()["code"] == "forbidden"
    # Nothing sent (not even via /mcp), nothing consumed.
    assert peek(server.url, recipient)["pending"] == 1
    assert [m["body"] for m in check(server.url, recipient)] == ["already there"]


@pytest.mark.parametrize(
    "origin",
    ["http://127.0.0.1:37849", "http://localhost:3000", "http://[::1]:8080", "https://localhost", "http://LOCALHOST"],
)
def test_loopback_origins_are_allowed(server: Daemon, origin: str) -> None:
    sender, recipient = unique("alice"), unique("bob")
    reply = request(
        server.url,
        "POST",
        "/v1/send",
        json_body={"to": recipient, "body": "same machine"},
        headers={"X-Mailbox": sender, "Origin": origin},
    )
    assert reply.status == 201, reply.body
    reply = request(server.url, "GET", f"/v1/peek?name={recipient}", headers={"Origin": origin})
    assert reply.status == 200 and reply.json["pending"] == 1


FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:37849",  # DNS rebinding: evil.example now resolves to 127.0.0.1
    "127.0.0.1.evil.example:37849",
    "localhost.evil.example",
    "192.168.1.10:37849",
    "0.0.0.0:37849",
    "[::ffff:127.0.0.1]:37849",
    "127.0.0.1:37849@evil.example",
    "[::1].evil.example",
    "localhost:abc",
]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_foreign_host_is_421_and_changes_nothing(server: Daemon, host: str) -> None:
    sender, recipient = unique("alice"), unique("bob")
    assert send(server.url, sender, recipient, "already there").status == 201
    for method, path, body, headers in _routes(sender, recipient):
        kwargs = {"json_body": body} if body is not None else {}
        reply = request(server.url, method, path, headers=headers, host=host, **kwargs)  # type: ignore[arg-type]
        assert reply.status == 421, (host, method, path, reply.status, reply.body)
        assert reply.error()["code"] == "bad_host"
    assert peek(server.url, recipient)["pending"] == 1


def test_missing_host_header_is_refused(server: Daemon) -> None:
    reply = request(server.url, "GET", "/health", host=None)
    assert reply.status == 400, reply.status  # aiohttp's parser refuses it before any route runs


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:1", "[::1]:37849", "127.0.0.1:9"])
def test_loopback_hosts_are_allowed(server: Daemon, host: str) -> None:
    assert request(server.url, "GET", "/health", host=host).status == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/jsonp",
        "text/json",
    ],
)
def test_browser_simple_posts_are_415_and_store_nothing(server: Daemon, content_type: str) -> None:
    """A page can POST these without a CORS preflight; they must never reach the store."""
    sender, recipient = unique("alice"), unique("bob")
    payload = ('{"to": "' + recipient + '", "body": "csrf", "from": "' + sender + '"}').encode()
    reply = request(server.url, "POST", "/v1/send", body=payload, headers={"Content-Type": content_type})
    assert reply.status == 415, (content_type, reply.status, reply.body)
    assert reply.error()["code"] == "unsupported_media_type"
    form = f"to={recipient}&body=csrf&from={sender}".encode()
    reply = request(server.url, "POST", "/v1/send", body=form, headers={"Content-Type": content_type})
    assert reply.status == 415
    assert peek(server.url, recipient)["pending"] == 0

    assert send(server.url, sender, recipient, "real").status == 201
    reply = request(
        server.url,
        "POST",
        f"/v1/check-inbox?name={recipient}",
        body=b"{}",
        headers={"Content-Type": content_type, "X-Mailbox": recipient},
    )
    assert reply.status == 415
    assert peek(server.url, recipient)["pending"] == 1  # not consumed


def test_post_body_without_content_type_is_415(server: Daemon) -> None:
    recipient = unique("bob")
    payload = ('{"to": "' + recipient + '", "body": "x", "from": "a"}').encode()
    assert request(server.url, "POST", "/v1/send", body=payload).status == 415
    assert peek(server.url, recipient)["pending"] == 0


def test_mcp_refuses_non_json_posts(server: Daemon) -> None:
    recipient = unique("bob")
    call = (
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "send", '
        '"arguments": {"to": "' + recipient + '", "body": "x", "from": "a"}}}'
    ).encode()
    reply = request(
        server.url,
        "POST",
        "/mcp",
        body=call,
        headers={"Content-Type": "text/plain", "Accept": "application/json, text/event-stream"},
    )
    assert reply.status == 415, (reply.status, reply.body)
    assert reply.error()["code"] == "unsupported_media_type"
    assert peek(server.url, recipient)["pending"] == 0


def test_oversized_request_is_413_and_stores_nothing(server: Daemon) -> None:
    recipient = unique("bob")
    # Over the 1 MiB request cap: refused before JSON parsing, in the one error shape.
    payload = ('{"to": "' + recipient + '", "body": "' + "x" * (1024 * 1024 + 10) + '"}').encode()
    reply = request(
        server.url, "POST", "/v1/send", body=payload, headers={"X-Mailbox": "a", "Content-Type": "application/json"}
    )
    assert reply.status == 413
    assert reply.error()["code"] == "payload_too_large"
    # Over the 64 KiB body limit but under the request cap.
    reply = send(server.url, "a", recipient, "x" * (64 * 1024 + 1))
    assert reply.status == 413
    assert reply.error()["code"] == "payload_too_large"
    # Over the cap on /mcp too.
    reply = request(
        server.url,
        "POST",
        "/mcp",
        body=b'{"x": "' + b"y" * (2 * 1024 * 1024) + b'"}',
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
    )
    assert reply.status == 413
    assert peek(server.url, recipient)["pending"] == 0
    assert request(server.url, "GET", "/health").status == 200


def _serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_mailbox", "serve", *args],
        env=base_env(home),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.10"])
def test_binding_a_non_loopback_address_is_refused(mailbox_home: Path, address: str) -> None:
    result = _serve(mailbox_home, "--bind", address, "--port", str(free_port()))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"refusing to bind {address}" in result.stderr
    assert "loopback" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (mailbox_home / "mailbox.db").exists()


def test_non_loopback_bind_in_config_is_refused(mailbox_home: Path) -> None:
    (mailbox_home / "config.toml").write_text(f'bind = "0.0.0.0"\nport = {free_port()}\n', encoding="utf-8")
    result = _serve(mailbox_home)
    assert result.returncode == 1
    assert "refusing to bind 0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr


# --- CLI output escapes what other processes control (issue 12.4) ------------------------------------

HOSTILE_CWD = "/tmp/proj\nFAKE-ROW alive 0 pending\x1b[31m\u202etxt.exe\u2028\ufeff"


def test_cli_list_escapes_a_hostile_project_dir(daemon: Daemon) -> None:
    session = unique("hostile-session")
    reply = request(
        daemon.url,
        "POST",
        "/v1/hooks/session-start",
        json_body={"session_id": session, "hook_event_name": "SessionStart", "cwd": HOSTILE_CWD},
    )
    assert reply.status == 200, reply.body
    for json_flag in ((), ("--json",)):
        result = run_cli("list", *json_flag, "--url", daemon.url, env=daemon.env())
        assert result.returncode == 0, result.stderr
        for raw in ("\x1b", "\u202e", "\u2028", "\ufeff"):
            assert raw not in result.stdout, (json_flag, result.stdout)
        assert "\\u202e" in result.stdout and "\\u001b" in result.stdout
        # the newline inside the path stays escaped: no line of the table starts with the fake row
        assert not any(line.startswith("FAKE-ROW") for line in result.stdout.splitlines())
