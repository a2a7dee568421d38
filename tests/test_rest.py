"""The REST contract, route by route, over raw HTTP (the test controls every header): the seed's
shapes, the one error shape for every failure, and the requests old clients send."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pgkit
from claude_mailbox import __version__
from claude_mailbox.config import redact_url
from harness import Daemon, InProcessDaemon
from rawhttp import Reply, check, peek, request, send

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with small limits from config.toml: 100-byte bodies, 5 sends a minute, 3 pending."""
    home = tmp_path_factory.mktemp("tight-home")
    (home / "config.toml").write_text(
        "max_body_bytes = 100\nrate_limit_per_minute = 5\nmax_pending_per_mailbox = 3\n", encoding="utf-8"
    )
    with Daemon(home) as running:
        yield running


@pytest.fixture
def url(app_module_server: InProcessDaemon) -> str:
    """The REST contract needs no daemon process: one in-process app for the module (issue 9.7).
    `tight` below stays a process: it checks that config.toml reaches a started daemon."""
    return app_module_server.url


_counter = itertools.count()


@pytest.fixture
def name() -> Callable[[str], str]:
    """Unique mailbox names per test: name("bob") -> "bob-17"."""
    return lambda label: f"{label}-{next(_counter)}"


def assert_error(reply: Reply, status: int, code: str, *words: str) -> str:
    assert reply.status == status, (reply.status, reply.body)
    error = reply.error()
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], (word, error)
    assert reply.headers.get("X-Mailbox-Daemon-Version") == __version__
    return error["message"]


# --- /health and /openapi.json ---------------------------------------------------------------


def test_health_shape(app_module_server: InProcessDaemon) -> None:
    server = app_module_server
    reply = request(server.url, "GET", "/health")
    assert reply.status == 200
    assert reply.content_type == "application/json"
    data = reply.json
    assert {"status", "version", "database"} <= set(data)
    assert data["status"] == "ok"
    assert data["version"] == __version__
    database = pgkit.daemon_database(server)
    if database:  # MAILBOX_TEST_STORE=postgres: the server's URL without its password, and no file named
        assert data["database"] == redact_url(database) and "dbPath" not in data
    else:
        assert Path(data["dbPath"]) == Path(data["database"]) == server.db_path
        assert server.db_path.is_file()
    assert reply.headers.get("X-Mailbox-Daemon-Version") == __version__


def test_openapi_document_names_every_rest_route(url: str) -> None:
    reply = request(url, "GET", "/openapi.json")
    assert reply.status == 200
    assert reply.content_type == "application/json"
    document = reply.json
    assert document["openapi"].startswith("3.")
    assert document["info"]["version"] == __version__
    routes = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert {
        ("/health", "get"),
        ("/v1/send", "post"),
        ("/v1/peek", "get"),
        ("/v1/check-inbox", "post"),
        ("/v1/list", "get"),
    } <= routes
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (path, method)
    # The documented success codes are the real ones.
    assert "201" in document["paths"]["/v1/send"]["post"]["responses"]
    assert "413" in document["paths"]["/v1/send"]["post"]["responses"]


# --- send, peek, check-inbox ---------------------------------------------------------------------


def test_send_returns_201_with_the_stored_message(url: str, name: Callable[[str], str]) -> None:
    alice, bob = name("alice"), name("bob")
    reply = send(url, alice, bob, "hello")
    assert reply.status == 201
    assert reply.content_type == "application/json"
    data = reply.json
    assert set(data) == {"id", "from", "to", "createdAt"}
    assert isinstance(data["id"], int) and data["id"] > 0
    assert (data["from"], data["to"]) == (alice, bob)
    assert ISO_MS.match(data["createdAt"])
    [message] = check(url, bob)
    assert (message["id"], message["createdAt"]) == (data["id"], data["createdAt"])


def test_peek_counts_and_consumes_nothing(url: str, name: Callable[[str], str]) -> None:
    alice, bob = name("alice"), name("bob")
    assert peek(url, bob) == {"pending": 0, "oldestAt": None}
    first = send(url, alice, bob, "one").json
    send(url, alice, bob, "two")
    for _ in range(3):
        assert peek(url, bob) == {"pending": 2, "oldestAt": first["createdAt"]}
    assert [m["body"] for m in check(url, bob)] == ["one", "two"]
    assert peek(url, bob) == {"pending": 0, "oldestAt": None}


def test_a_read_right_after_a_check_sees_its_mail_delivered(url: str, name: Callable[[str], str]) -> None:
    """check-inbox (ack=auto) acknowledges after its answer is written; the reader's next request can
    arrive before that: it waits for the acknowledgement instead of seeing the mail still pending."""
    alice, bob = name("alice"), name("bob")
    for round_ in range(40):
        send(url, alice, bob, f"round {round_}")
        assert [m["body"] for m in check(url, bob)] == [f"round {round_}"]
        assert peek(url, bob)["pending"] == 0, round_
        assert check(url, bob) == [], round_


def test_check_inbox_returns_messages_in_order_exactly_once(url: str, name: Callable[[str], str]) -> None:
    bob = name("bob")
    bodies = ["first", 'quotes " and \\ backslashes', "line one\nline two", "emoji 📬 and ünïcödé", "x" * 5000]
    senders = [name(f"s{i}") for i in range(len(bodies))]
    sent = [send(url, sender, bob, body).json for sender, body in zip(senders, bodies, strict=True)]
    reply = request(url, "POST", f"/v1/check-inbox?name={bob}", headers={"X-Mailbox": bob})
    assert reply.status == 200
    assert reply.content_type == "application/json"
    assert set(reply.json) == {"messages", "remaining"}
    assert reply.json["remaining"] == 0
    messages = reply.json["messages"]
    for message in messages:
        assert set(message) == {"id", "from", "body", "createdAt"}
    assert [m["id"] for m in messages] == [s["id"] for s in sent]
    assert [m["from"] for m in messages] == senders
    assert [m["body"] for m in messages] == bodies
    assert [m["createdAt"] for m in messages] == [s["createdAt"] for s in sent]
    assert check(url, bob) == []


def test_check_inbox_requires_x_mailbox_equal_to_name(url: str, name: Callable[[str], str]) -> None:
    bob, mallory = name("bob"), name("mallory")
    send(url, name("alice"), bob, "private")
    missing = request(url, "POST", f"/v1/check-inbox?name={bob}")
    assert_error(missing, 400, "identity_required", "X-Mailbox")
    empty = request(url, "POST", f"/v1/check-inbox?name={bob}", headers={"X-Mailbox": ""})
    assert_error(empty, 400, "identity_required")
    other = request(url, "POST", f"/v1/check-inbox?name={bob}", headers={"X-Mailbox": mallory})
    assert_error(other, 403, "identity_mismatch", mallory, bob)
    case = request(url, "POST", f"/v1/check-inbox?name={bob}", headers={"X-Mailbox": bob.upper()})
    assert_error(case, 403, "identity_mismatch")
    assert peek(url, bob)["pending"] == 1  # nothing was consumed by the refused calls
    assert [m["body"] for m in check(url, bob)] == ["private"]


def test_check_inbox_max_chars_leaves_the_rest_pending(url: str, name: Callable[[str], str]) -> None:
    bob, alice = name("bob"), name("alice")
    for body in ("aaaa", "bbbb", "cccc"):
        send(url, alice, bob, body)
    reply = request(url, "POST", f"/v1/check-inbox?name={bob}&maxChars=9", headers={"X-Mailbox": bob})
    assert reply.status == 200
    assert [m["body"] for m in reply.json["messages"]] == ["aaaa", "bbbb"]
    assert reply.json["remaining"] == 1
    assert peek(url, bob)["pending"] == 1
    for bad in ("0", "-1", "abc", "1e9"):
        reply = request(url, "POST", f"/v1/check-inbox?name={bob}&maxChars={bad}", headers={"X-Mailbox": bob})
        assert_error(reply, 400, "invalid_input", "maxChars")
    assert peek(url, bob)["pending"] == 1


def test_sender_may_be_given_as_from_in_the_body(url: str, name: Callable[[str], str]) -> None:
    alice, bob = name("alice"), name("bob")
    reply = request(url, "POST", "/v1/send", json_body={"from": alice, "to": bob, "body": "hi"})
    assert reply.status == 201
    assert reply.json["from"] == alice


def test_send_without_any_sender_is_identity_required(url: str, name: Callable[[str], str]) -> None:
    bob = name("bob")
    reply = request(url, "POST", "/v1/send", json_body={"to": bob, "body": "who am I"})
    assert_error(reply, 400, "identity_required", "X-Mailbox")
    assert peek(url, bob)["pending"] == 0


# --- list ---------------------------------------------------------------------------------------


def _list(url: str, caller: str | None = None) -> dict[str, Any]:
    reply = request(url, "GET", "/v1/list", headers={"X-Mailbox": caller} if caller else None)
    assert reply.status == 200, reply.body
    assert set(reply.json) == {"mailboxes", "pendingForYou"}
    return dict(reply.json)


def test_list_without_x_mailbox(url: str, name: Callable[[str], str]) -> None:
    alice, bob = name("alice"), name("bob")
    send(url, alice, bob, "1")
    send(url, alice, bob, "2")
    data = _list(url)
    assert data["pendingForYou"] == 0
    boxes = {box["name"]: box for box in data["mailboxes"]}
    assert boxes[bob]["pending"] == 2
    assert boxes[alice]["pending"] == 0
    for box in (boxes[alice], boxes[bob]):
        assert {"name", "lastSeen", "pending"} <= set(box)
        assert ISO_MS.match(box["lastSeen"])
        assert box["state"] == "client"  # plain REST users, not Claude Code sessions


def test_list_with_x_mailbox_registers_presence(url: str, name: Callable[[str], str]) -> None:
    carol = name("carol")
    assert carol not in {box["name"] for box in _list(url)["mailboxes"]}
    first = _list(url, carol)
    seen_1 = {box["name"]: box for box in first["mailboxes"]}[carol]["lastSeen"]
    assert first["pendingForYou"] == 0
    send(url, name("alice"), carol, "for carol")
    send(url, name("alice"), carol, "for carol again")
    time.sleep(0.01)
    second = _list(url, carol)
    seen_2 = {box["name"]: box for box in second["mailboxes"]}[carol]["lastSeen"]
    assert seen_2 > seen_1
    assert second["pendingForYou"] == 2
    # Other callers do not touch carol's presence.
    time.sleep(0.01)
    _list(url, name("dave"))
    _list(url)
    assert {box["name"]: box for box in _list(url)["mailboxes"]}[carol]["lastSeen"] == seen_2


def test_presence_follows_senders_and_checkers(url: str, name: Callable[[str], str]) -> None:
    alice, bob = name("alice"), name("bob")
    send(url, alice, bob, "hi")

    def seen() -> dict[str, str]:
        return {box["name"]: box["lastSeen"] for box in _list(url)["mailboxes"]}

    before = seen()
    time.sleep(0.01)
    check(url, bob)
    after_check = seen()
    assert after_check[bob] > before[bob]
    assert after_check[alice] == before[alice]
    time.sleep(0.01)
    send(url, alice, name("zed"), "again")
    assert seen()[alice] > before[alice]


def test_list_with_a_bad_x_mailbox_is_refused(url: str) -> None:
    assert_error(request(url, "GET", "/v1/list", headers={"X-Mailbox": "no spaces"}), 400, "invalid_input", "X-Mailbox")


# --- error cases: one shape for all -------------------------------------------------------------


def test_malformed_json(url: str, name: Callable[[str], str]) -> None:
    bob = name("bob")
    for raw in (b"{not json", b'{"to": "' + bob.encode() + b'", "body": "x"', b"\xff\xfe", b"{'to': 'x'}"):
        reply = request(url, "POST", "/v1/send", body=raw, headers={"X-Mailbox": "alice", **JSON})
        assert_error(reply, 400, "invalid_input", "JSON")
    reply = request(url, "POST", f"/v1/check-inbox?name={bob}", body=b"{", headers={"X-Mailbox": bob, **JSON})
    assert_error(reply, 400, "invalid_input", "JSON")
    assert peek(url, bob)["pending"] == 0


def test_json_that_is_not_an_object(url: str) -> None:
    for value in ([], ["to", "body"], "text", 42, None, True):
        reply = request(url, "POST", "/v1/send", json_body=value, headers={"X-Mailbox": "alice"})
        assert_error(reply, 400, "invalid_input", "JSON object")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"to": 1, "body": "x"}, ["to", "string"]),
        ({"to": None, "body": "x"}, ["to"]),
        ({"to": ["bob"], "body": "x"}, ["to", "string"]),
        ({"to": "BOB", "body": 1}, ["body", "string"]),
        ({"to": "BOB", "body": None}, ["body", "string"]),
        ({"to": "BOB", "body": ["x"]}, ["body", "string"]),
        ({"to": "BOB", "body": {"text": "x"}}, ["body", "string"]),
        ({"to": "BOB", "body": True}, ["body", "string"]),
        ({"to": "BOB", "body": "x", "from": 7}, ["from", "string"]),
    ],
)
def test_wrong_types(url: str, name: Callable[[str], str], payload: dict[str, Any], words: list[str]) -> None:
    bob = name("bob")
    payload = {key: bob if value == "BOB" else value for key, value in payload.items()}
    reply = request(url, "POST", "/v1/send", json_body=payload, headers={"X-Mailbox": name("alice")})
    assert_error(reply, 400, "invalid_input", *words)
    assert peek(url, bob)["pending"] == 0


@pytest.mark.parametrize("payload", [{}, {"to": "bob"}, {"body": "hello"}])
def test_missing_fields(url: str, payload: dict[str, Any]) -> None:
    reply = request(url, "POST", "/v1/send", json_body=payload, headers={"X-Mailbox": "alice"})
    assert_error(reply, 400, "invalid_input", "required")


def test_empty_request_body_on_send_is_missing_fields(url: str) -> None:
    reply = request(url, "POST", "/v1/send", body=b"", headers={"X-Mailbox": "alice", **JSON})
    assert_error(reply, 400, "invalid_input", "required")


def test_unknown_fields(url: str, name: Callable[[str], str]) -> None:
    bob = name("bob")
    payload = {"to": bob, "body": "x", "cc": "carol", "priority": 1}
    reply = request(url, "POST", "/v1/send", json_body=payload, headers={"X-Mailbox": "alice"})
    assert_error(reply, 400, "invalid_input", "cc", "priority")
    assert peek(url, bob)["pending"] == 0


BAD_NAMES = ["", "x" * 65, "has space", "slash/name", "colon:name", "ünïcode", "tab\tname", "semi;colon", "@at"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_recipient_names(url: str, bad: str) -> None:
    reply = request(url, "POST", "/v1/send", json_body={"to": bad, "body": "x"}, headers={"X-Mailbox": "alice"})
    message = assert_error(reply, 400, "invalid_input", "to")
    assert "empty" in message if bad == "" else "1 to 64 characters" in message


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "slash/name", "semi;colon"])
def test_bad_sender_header(url: str, bad: str) -> None:
    reply = request(url, "POST", "/v1/send", json_body={"to": "bob", "body": "x"}, headers={"X-Mailbox": bad})
    assert_error(reply, 400, "invalid_input", "X-Mailbox", "1 to 64 characters")


def test_bad_names_in_queries(url: str) -> None:
    for query in ("name=", "name=has%20space", "name=" + "x" * 65, "name=a%2Fb"):
        assert_error(request(url, "GET", f"/v1/peek?{query}"), 400, "invalid_input", "name")
    assert_error(request(url, "GET", "/v1/peek"), 400, "invalid_input", "name", "required")
    reply = request(url, "POST", "/v1/check-inbox?name=a%20b", headers={"X-Mailbox": "a b"})
    assert reply.status == 400
    assert_error(request(url, "POST", "/v1/check-inbox", headers={"X-Mailbox": "x"}), 400, "invalid_input", "name")


def test_names_at_the_limits_are_accepted(url: str, name: Callable[[str], str]) -> None:
    longest = ("L" * 60 + name("")).ljust(64, "z")[:64]
    for valid in (longest, "a", "A.b_c-9"):
        reply = send(url, name("alice"), valid, "ok")
        assert reply.status == 201, reply.body
        assert reply.json["to"] == valid
        check(url, valid)


@pytest.mark.parametrize("body", ["", " ", "\n\t  \r\n"])
def test_empty_or_whitespace_body(url: str, name: Callable[[str], str], body: str) -> None:
    bob = name("bob")
    assert_error(send(url, name("alice"), bob, body), 400, "invalid_input", "body", "empty")
    assert peek(url, bob)["pending"] == 0


def test_body_size_limit_is_64_kib(url: str, name: Callable[[str], str]) -> None:
    bob = name("bob")
    assert send(url, name("alice"), bob, "x" * 65536).status == 201
    assert_error(send(url, name("alice"), bob, "x" * 65537), 413, "payload_too_large", "65537", "65536")
    # The limit counts UTF-8 bytes, not characters: 32,769 'é' are 65,538 bytes.
    assert_error(send(url, name("alice"), bob, "é" * 32769), 413, "payload_too_large", "65538")
    assert [len(m["body"]) for m in check(url, bob)] == [65536]


def test_invalid_unicode_in_body(url: str, name: Callable[[str], str]) -> None:
    bob = name("bob")
    raw = b'{"to": "' + bob.encode() + b'", "body": "\\ud800"}'  # a lone surrogate, valid JSON
    assert_error(request(url, "POST", "/v1/send", body=raw, headers={"X-Mailbox": "a", **JSON}), 400, "invalid_input")
    raw = b'{"to": "' + bob.encode() + b'", "body": "\xc3\x28"}'  # not UTF-8
    assert_error(request(url, "POST", "/v1/send", body=raw, headers={"X-Mailbox": "a", **JSON}), 400, "invalid_input")
    assert peek(url, bob)["pending"] == 0


def test_max_body_bytes_setting_lowers_the_limit(tight: Daemon, name: Callable[[str], str]) -> None:
    bob = name("bob")
    assert send(tight.url, name("a"), bob, "y" * 100).status == 201
    assert_error(send(tight.url, name("a"), bob, "y" * 101), 413, "payload_too_large", "101", "100 bytes")
    assert peek(tight.url, bob)["pending"] == 1


def test_rate_limit_is_429_with_retry_after(tight: Daemon, name: Callable[[str], str]) -> None:
    alice = name("alice")
    for i in range(5):
        assert send(tight.url, alice, name("r"), f"m{i}").status == 201
    reply = send(tight.url, alice, name("r"), "one too many")
    assert_error(reply, 429, "rate_limited", alice)
    assert int(reply.headers["Retry-After"]) >= 1
    assert send(tight.url, name("other"), name("r"), "another sender is not limited").status == 201


def test_full_mailbox_is_429(tight: Daemon, name: Callable[[str], str]) -> None:
    bob = name("bob")
    for i in range(3):
        assert send(tight.url, name("s"), bob, f"m{i}").status == 201
    assert_error(send(tight.url, name("s"), bob, "overflow"), 429, "mailbox_full", bob)
    assert peek(tight.url, bob)["pending"] == 3
    check(tight.url, bob)
    assert send(tight.url, name("s"), bob, "room again").status == 201


@pytest.mark.parametrize(
    ("method", "path", "needs_owner"),
    [
        ("GET", "/v1/peek?name=bob&foo=1", False),
        ("POST", "/v1/check-inbox?name=bob&verbose=true", True),
        ("GET", "/v1/list?all=1", False),
        ("POST", "/v1/send?to=bob", False),
    ],
)
def test_unknown_query_parameter(url: str, method: str, path: str, needs_owner: bool) -> None:
    headers = {"X-Mailbox": "bob"}
    body = {"to": "bob", "body": "x"} if path.startswith("/v1/send") else {}
    reply = (
        request(url, method, path, headers=headers, json_body=body)
        if method == "POST"
        else request(url, method, path, headers=headers)
    )
    unknown = path.split("&")[-1].split("?")[-1].split("=")[0]
    assert_error(reply, 400, "invalid_input", "unknown query parameter", unknown)
    assert peek(url, "bob")["pending"] == 0


def test_repeated_query_parameter(url: str, name: Callable[[str], str]) -> None:
    bob = name("bob")
    send(url, name("a"), bob, "x")
    assert_error(request(url, "GET", f"/v1/peek?name={bob}&name=other"), 400, "invalid_input", "more than once")
    reply = request(url, "POST", f"/v1/check-inbox?name={bob}&name={bob}", headers={"X-Mailbox": bob})
    assert_error(reply, 400, "invalid_input", "more than once")
    assert peek(url, bob)["pending"] == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/v1/nope"), ("POST", "/v2/send"), ("GET", "/static/nope.js")],  # GET /: the page
)
def test_unknown_route_is_404(url: str, method: str, path: str) -> None:
    assert_error(request(url, method, path), 404, "not_found", path)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/send", "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", "/v1/peek?name=bob", "GET"),
        ("PUT", "/v1/check-inbox?name=bob", "POST"),
        ("GET", "/v1/check-inbox?name=bob", "POST"),
        ("POST", "/v1/list", "GET"),
        ("PATCH", "/openapi.json", "GET"),
    ],
)
def test_wrong_method_is_405(url: str, method: str, path: str, allowed: str) -> None:
    reply = request(url, method, path)
    assert_error(reply, 405, "method_not_allowed", method)
    assert allowed in reply.headers.get("Allow", ""), reply.headers.items()


# --- the seed's clients ---------------------------------------------------------------------------


def test_old_client_request_shapes_keep_working(url: str, name: Callable[[str], str]) -> None:
    """The seed-era clients: send with only X-Mailbox + {to, body}; check-inbox with X-Mailbox and
    no body at all (no Content-Type, no Content-Length), or an empty one (Content-Length: 0)."""
    alice, bob = name("alice"), name("bob")
    reply = request(
        url,
        "POST",
        "/v1/send",
        body=b'{"to":"' + bob.encode() + b'","body":"from the seed"}',
        headers=[("X-Mailbox", alice), ("Content-Type", "application/json")],
    )
    assert reply.status == 201, reply.body
    reply = request(
        url,
        "POST",
        "/v1/send",
        body=('{"to":"' + bob + '","body":"charset ✓"}').encode(),
        headers=[("X-Mailbox", alice), ("Content-Type", "application/json; charset=utf-8")],
    )
    assert reply.status == 201, reply.body

    reply = request(url, "POST", f"/v1/check-inbox?name={bob}", headers=[("X-Mailbox", bob)])
    assert reply.status == 200, reply.body
    assert [(m["from"], m["body"]) for m in reply.json["messages"]] == [(alice, "from the seed"), (alice, "charset ✓")]

    send(url, alice, bob, "third")
    reply = request(url, "POST", f"/v1/check-inbox?name={bob}", headers=[("X-Mailbox", bob), ("Content-Length", "0")])
    assert reply.status == 200, reply.body
    assert [m["body"] for m in reply.json["messages"]] == ["third"]

    send(url, alice, bob, "fourth")
    reply = request(url, "POST", f"/v1/check-inbox?name={bob}", json_body={}, headers={"X-Mailbox": bob})
    assert [m["body"] for m in reply.json["messages"]] == ["fourth"]


# --- owner rules (issue 12.1): a session is acted on only by its own Claude Code -----------------


@pytest.fixture
def other_claude() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for a second Claude Code (its pid is what hooks would send)."""
    process = subprocess.Popen(["sleep", "120"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _start(url: str, session_id: str, pid: int, source: str = "startup") -> Reply:
    hook = {"session_id": session_id, "hook_event_name": "SessionStart", "source": source, "cwd": "/tmp"}
    return request(url, "POST", "/v1/hooks/session-start", json_body=hook, headers={"X-Mailbox-Claude-Pid": str(pid)})


def _end(url: str, session_id: str, headers: dict[str, str]) -> Reply:
    hook = {"session_id": session_id, "hook_event_name": "SessionEnd", "reason": "other"}
    return request(url, "POST", "/v1/hooks/session-end", json_body=hook, headers=headers)


def _mailbox_of(url: str, session_id: str) -> str:
    return str(request(url, "GET", f"/v1/whoami?session={session_id}").json["name"])


def test_session_end_comes_only_from_the_sessions_own_process(url: str, other_claude: subprocess.Popen[bytes]) -> None:
    session_id = str(uuid.uuid4())
    assert _start(url, session_id, other_claude.pid).status == 200
    mailbox = _mailbox_of(url, session_id)
    for headers in ({}, {"X-Mailbox-Claude-Pid": str(os.getpid())}):
        refused = _end(url, session_id, headers)
        assert refused.status == 403 and refused.error()["code"] == "identity_mismatch", refused.body
    assert _state(url, mailbox) == "alive"
    assert _end(url, session_id, {"X-Mailbox-Claude-Pid": str(other_claude.pid)}).status == 200
    assert _state(url, mailbox) == "ended"


def test_a_running_session_is_not_taken_over_by_another_process(
    url: str, other_claude: subprocess.Popen[bytes]
) -> None:
    """Refused (403), not ignored: the second process learns its SessionStart did not register."""
    session_id = str(uuid.uuid4())
    assert _start(url, session_id, other_claude.pid).status == 200
    taken = _start(url, session_id, os.getpid(), source="resume")
    assert taken.status == 403 and "another running Claude Code" in taken.error()["message"]
    assert _start(url, session_id, other_claude.pid, source="resume").status == 200  # its own resume is fine
    other_claude.kill()
    other_claude.wait()
    assert _start(url, session_id, os.getpid(), source="resume").status == 200  # the owner is gone: resumable


def test_clear_moves_mail_only_from_a_live_process_of_the_same_pid(
    url: str, other_claude: subprocess.Popen[bytes]
) -> None:
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    assert _start(url, first, other_claude.pid).status == 200
    old = _mailbox_of(url, first)
    assert send(url, "someone", old, "before /clear").status == 201
    assert _start(url, second, other_claude.pid, source="clear").status == 200
    new = _mailbox_of(url, second)
    assert peek(url, new)["pending"] == 1 and peek(url, old)["pending"] == 0  # moved: same live process
    assert send(url, "someone", new, "after /clear").status == 201
    other_claude.kill()
    other_claude.wait()
    # A dead pid (reused by some later process, or forged) takes nothing over.
    assert _start(url, third, other_claude.pid, source="clear").status == 200
    assert peek(url, new)["pending"] == 2 and peek(url, _mailbox_of(url, third))["pending"] == 0


def test_collaborate_is_switched_only_by_the_sessions_owner(url: str, other_claude: subprocess.Popen[bytes]) -> None:
    session_id = str(uuid.uuid4())
    assert _start(url, session_id, other_claude.pid).status == 200
    mailbox = _mailbox_of(url, session_id)
    on = {"name": mailbox, "on": True}
    for headers in ({}, {"X-Mailbox": "intruder"}, {"X-Mailbox-Claude-Pid": str(os.getpid())}):
        refused = request(url, "POST", "/v1/collaborate", json_body=on, headers=headers)
        assert refused.status == 403 and refused.error()["code"] == "identity_mismatch", refused.body
    assert request(url, "GET", f"/v1/collaborate?name={mailbox}").json["collaborating"] is False
    by_pid = request(
        url, "POST", "/v1/collaborate", json_body=on, headers={"X-Mailbox-Claude-Pid": str(other_claude.pid)}
    )
    assert by_pid.status == 200 and by_pid.json["collaborating"] is True
    off = {"name": mailbox, "on": False}
    by_name = request(url, "POST", "/v1/collaborate", json_body=off, headers={"X-Mailbox": mailbox})
    assert by_name.status == 200 and by_name.json["collaborating"] is False


def _state(url: str, mailbox: str) -> str:
    boxes = {box["name"]: box for box in request(url, "GET", "/v1/list").json["mailboxes"]}
    return str(boxes[mailbox]["state"])
