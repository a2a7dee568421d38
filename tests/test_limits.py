"""Abuse limits on a real daemon: the per-sender rate limit (REST and MCP, same words), the
per-mailbox pending cap, `claude-mailbox prune`, and `retention_days` applied by the daemon."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultkit import logged_daemon, tracebacks, write_config
from harness import Daemon, base_env, run_cli, sqlite_rows
from rawhttp import check, peek, request, send

RATE = 10  # a minute's burst; refills one token every 6 s: a burst of RATE sends ends long before a refill
CAP = 3
_counter = itertools.count()


def unique(label: str) -> str:
    return f"{label}-{next(_counter)}"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("limits-home")
    # The per-peer and global ceilings (multiples of RATE by default) out of the way: every test here
    # is one peer, 127.0.0.1, and only the per-sender bucket is under test.
    write_config(
        home,
        rate_limit_per_minute=RATE,
        rate_limit_per_peer_per_minute=100_000,
        rate_limit_global_per_minute=100_000,
        max_pending_per_mailbox=CAP,
    )
    with Daemon(home, log_path=home / "daemon.log") as running:
        running.wait_mcp_ready()
        yield running
    assert tracebacks(running.log()) == []


def mcp_send(url: str, sender: str, to: str, body: str) -> dict[str, Any]:
    """tools/call send over one raw JSON-RPC POST (handshake-era headers); returns the tool result."""
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "send", "arguments": {"to": to, "body": body, "from": sender}},
    }
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    reply = request(url, "POST", "/mcp", json_body=call, headers=headers)
    assert reply.status == 200, reply.body
    return dict(reply.json["result"])


def tool_error_text(result: dict[str, Any]) -> str:
    assert result["isError"] is True, result
    return str(result["content"][0]["text"])


RATE_WORDS = re.compile(rf"^'(\S+)' is sending faster than {RATE} messages a minute; retry in (\d+(\.\d+)?) s$")


# --- rate limit --------------------------------------------------------------------------------------


def test_excess_sends_get_429_with_retry_after_and_other_senders_are_unaffected(limited: Any) -> None:
    flooder, other, inbox = unique("flooder"), unique("calm"), [unique("to") for _ in range(RATE + 2)]
    for index in range(RATE):  # distinct recipients: the pending cap must not be what stops it
        assert send(limited.url, flooder, inbox[index], f"m{index}").status == 201
    reply = send(limited.url, flooder, inbox[RATE], "one too many")
    assert reply.status == 429
    error = reply.error()
    assert error["code"] == "rate_limited"
    match = RATE_WORDS.match(error["message"])
    assert match and match[1] == flooder, error["message"]
    retry_after = int(reply.headers["Retry-After"])
    assert 1 <= retry_after <= 60 // RATE + 1
    assert float(match[2]) <= retry_after < float(match[2]) + 1  # rounded up: waiting that long is enough
    assert peek(limited.url, inbox[RATE])["pending"] == 0  # the refused message was not stored
    # Another sender, even to the same recipient, is not slowed down by the flooder.
    assert send(limited.url, other, inbox[RATE], "unaffected").status == 201
    assert peek(limited.url, inbox[RATE])["pending"] == 1


def test_mcp_send_tool_error_says_the_same_words_as_rest(limited: Any) -> None:
    sender = unique("mcp-flooder")
    for index in range(RATE):
        assert mcp_send(limited.url, sender, unique("to"), f"m{index}")["isError"] is False
    mcp_text = tool_error_text(mcp_send(limited.url, sender, unique("to"), "one too many"))
    reply = send(limited.url, sender, unique("to"), "and over REST")  # one bucket per sender, whatever the door
    assert reply.status == 429
    rest_text = reply.error()["message"]

    def normalised(text: str) -> str:
        return re.sub(r"retry in [\d.]+ s", "retry in N s", text)

    assert RATE_WORDS.match(mcp_text), mcp_text
    assert normalised(mcp_text) == normalised(rest_text)


def test_the_bucket_refills(limited: Any) -> None:
    sender = unique("patient")
    for index in range(RATE):
        assert send(limited.url, sender, unique("to"), f"m{index}").status == 201
    reply = send(limited.url, sender, unique("to"), "too soon")
    assert reply.status == 429
    time.sleep(float(reply.headers["Retry-After"]) + 0.2)
    assert send(limited.url, sender, unique("to"), "after waiting").status == 201


# --- pending cap ----------------------------------------------------------------------------------------


def test_pending_cap_refuses_clearly_until_the_recipient_reads(limited: Any) -> None:
    recipient, bystander = unique("busy"), unique("idle")
    for index in range(CAP):
        assert send(limited.url, unique("sender"), recipient, f"m{index}").status == 201
    reply = send(limited.url, unique("sender"), recipient, "overflow")
    assert reply.status == 429
    error = reply.error()
    assert error["code"] == "mailbox_full"
    assert recipient in error["message"] and f"{CAP} unread" in error["message"], error["message"]
    assert peek(limited.url, recipient)["pending"] == CAP  # not stored
    mcp_text = tool_error_text(mcp_send(limited.url, unique("sender"), recipient, "overflow via mcp"))
    assert mcp_text == error["message"]
    assert send(limited.url, unique("sender"), bystander, "other inboxes are fine").status == 201
    assert [m["body"] for m in check(limited.url, recipient)] == [f"m{index}" for index in range(CAP)]
    assert send(limited.url, unique("sender"), recipient, "room again").status == 201
    assert peek(limited.url, recipient)["pending"] == 1


# --- prune --------------------------------------------------------------------------------------------


def _rows(db: Path) -> list[tuple[int, str, str | None]]:
    return sqlite_rows(db, "SELECT id, body, delivered_at FROM messages ORDER BY id")


@pytest.fixture
def plain(mailbox_home: Path) -> Iterator[Any]:
    with Daemon(mailbox_home, log_path=mailbox_home / "daemon.log") as running:
        yield running
    assert tracebacks(running.log()) == []


def test_prune_counts_with_dry_run_and_deletes_only_delivered_mail(plain: Any) -> None:
    for index in range(3):
        assert send(plain.url, "alice", "bob", f"read {index}").status == 201
    assert len(check(plain.url, "bob")) == 3
    for index in range(2):
        assert send(plain.url, "alice", "bob", f"unread {index}").status == 201
    time.sleep(0.01)  # "older than 0 days" means delivered before now
    env = plain.env()

    kept = run_cli("prune", "--delivered-older-than", "30d", "--json", env=env)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout) == {"deleted": 0, "dryRun": False}

    dry = run_cli("prune", "--delivered-older-than", "0d", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "would delete 3 delivered message(s); pending mail kept"
    assert len(_rows(plain.db_path)) == 5  # a dry run deletes nothing

    real = run_cli("prune", "--delivered-older-than", "0d", "--json", env=env)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout) == {"deleted": 3, "dryRun": False}
    rows = _rows(plain.db_path)
    assert [(body, delivered) for _, body, delivered in rows] == [("unread 0", None), ("unread 1", None)]
    assert peek(plain.url, "bob")["pending"] == 2  # the running daemon sees the same
    assert [m["body"] for m in check(plain.url, "bob")] == ["unread 0", "unread 1"]


@pytest.mark.parametrize("age", ["abc", "nan", "inf", "-5h", "1e9d", "", "30x"])
def test_prune_rejects_a_bad_age_in_one_line(mailbox_home: Path, age: str) -> None:
    result = run_cli("prune", f"--delivered-older-than={age}", env=base_env(mailbox_home))
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("claude-mailbox: "), result.stderr
    assert "age" in lines[0]
    assert not (mailbox_home / "mailbox.db").exists()  # refused before touching the database


# --- retention_days ------------------------------------------------------------------------------------


def test_retention_days_prunes_old_delivered_mail_soon_after_start(mailbox_home: Path) -> None:
    daemon = logged_daemon(mailbox_home)
    try:
        for index in range(3):
            assert send(daemon.url, "alice", "bob", f"old read {index}").status == 201
        assert len(check(daemon.url, "bob")) == 3
        assert send(daemon.url, "alice", "bob", "old but unread").status == 201
        assert send(daemon.url, "alice", "carol", "recent read").status == 201
        assert len(check(daemon.url, "carol")) == 1
    finally:
        daemon.stop()
    # Age the first three deliveries and the unread message by 40 days, straight in the file.
    connection = sqlite3.connect(mailbox_home / "mailbox.db")
    with connection:
        connection.execute(
            "UPDATE messages SET created_at = '2000-01-01T00:00:00.000Z',"
            " delivered_at = CASE WHEN delivered_at IS NULL THEN NULL ELSE '2000-01-02T00:00:00.000Z' END"
            " WHERE body LIKE 'old%'"
        )
    connection.close()
    write_config(mailbox_home, retention_days=30)

    started = time.monotonic()
    daemon = logged_daemon(mailbox_home)
    try:
        while [body for _, body, _ in _rows(mailbox_home / "mailbox.db")] != ["old but unread", "recent read"]:
            assert time.monotonic() - started < 10, _rows(mailbox_home / "mailbox.db")
            time.sleep(0.05)
        assert peek(daemon.url, "bob") == {"pending": 1, "oldestAt": "2000-01-01T00:00:00.000Z"}
    finally:
        daemon.stop()
    assert tracebacks(daemon.log()) == []


def test_daemon_lifts_its_open_file_soft_limit_to_the_hard_one(tmp_path: Path) -> None:
    import resource
    import subprocess
    import sys

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    code = (
        "import resource; from claude_mailbox import server; "
        "before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]; server.raise_open_file_limit(); "
        "print(before, *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=lower, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == [str(low), str(hard), str(hard)]


def test_service_definitions_raise_the_open_file_limit() -> None:
    from pathlib import PurePath

    from claude_mailbox.setup import units

    assert "LimitNOFILE=65536" in units.systemd_unit_text(PurePath("/usr/bin/python3"), {}, PurePath("/tmp/log"))
    plist = units.launchd_plist_bytes(PurePath("/usr/bin/python3"), {}, PurePath("/tmp/log"))
    assert b"<key>NumberOfFiles</key>" in plist and b"<integer>65536</integer>" in plist


@pytest.mark.parametrize(("wait", "header"), [(0.2, "1"), (1.0, "1"), (1.2, "2"), (5.01, "6")])
def test_retry_after_is_rounded_up(wait: float, header: str) -> None:
    from claude_mailbox.errors import RateLimited
    from claude_mailbox.server import error_response

    assert error_response(RateLimited("slow down", retry_after=wait)).headers["Retry-After"] == header
