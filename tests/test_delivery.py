"""Mail is never lost (issue 10): every read route hands mail out under a lease, and a reader that
goes away before its answer is out (or before it acknowledged) gets the mail again. Real daemon
processes with a short `lease_seconds`, real readers (raw sockets, the CLI and the hook relay as
subprocesses, the mcp SDK client), real SIGKILLs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pgkit
from claude_mailbox.model import now_iso
from claude_mailbox.store import Store
from faultkit import write_config
from harness import REPO, Daemon, InProcessDaemon, base_env, in_process_daemon, sqlite_rows, start_daemon
from rawhttp import request, send

LEASE_SECONDS = 2
BACK_AFTER = LEASE_SECONDS + 0.5  # a lease that was not acknowledged has expired by then


@pytest.fixture
def short(mailbox_home: Path) -> Iterator[InProcessDaemon]:
    """The app with leases of LEASE_SECONDS, in process (issue 9.7): the readers are still real
    processes and sockets; only the daemon that is killed below needs a process of its own."""
    with in_process_daemon(mailbox_home, lease_seconds=LEASE_SECONDS, rate_limit_per_minute=100_000) as running:
        yield running


@pytest.fixture
def short_process(mailbox_home: Path) -> Iterator[Daemon]:
    """A daemon process whose leases last LEASE_SECONDS (for the test that SIGKILLs it)."""
    write_config(mailbox_home, lease_seconds=LEASE_SECONDS, rate_limit_per_minute=100_000)
    with Daemon(mailbox_home) as running:
        yield running


def fill(daemon: Daemon, name: str, count: int, prefix: str = "m") -> list[int]:
    return [send(daemon.url, "alice", name, f"{prefix}{i}").json["id"] for i in range(count)]


def manual_check(daemon: Daemon, name: str) -> dict[str, Any]:
    reply = request(daemon.url, "POST", f"/v1/check-inbox?name={name}&ack=manual", headers={"X-Mailbox": name})
    assert reply.status == 200, reply.body
    return dict(reply.json)


def ack(daemon: Daemon, name: str, lease_id: str) -> Any:
    return request(
        daemon.url, "POST", f"/v1/ack?name={name}", json_body={"leaseId": lease_id}, headers={"X-Mailbox": name}
    )


def drain(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    """Read and acknowledge everything pending, page by page."""
    got: list[dict[str, Any]] = []
    while True:
        page = manual_check(daemon, name)
        got += page["messages"]
        if page["leaseId"]:
            assert ack(daemon, name, page["leaseId"]).json == {"acked": len(page["messages"])}
        if not page["messages"]:
            return got


def lease_count(daemon: Daemon) -> int:
    url = pgkit.daemon_database(daemon)
    if url is not None:  # MAILBOX_TEST_STORE=postgres
        return int(pgkit.query(url, "SELECT count(*) FROM leases")[0][0])
    return int(sqlite_rows(daemon.db_path, "SELECT count(*) FROM leases")[0][0])


def hang_up_after(daemon: InProcessDaemon, raw: bytes) -> None:
    """Send one request and close the connection, without reading the answer, while the in-process
    daemon's event loop is held: it meets the request and the hang-up together, always before it can
    answer. (Unheld, sendall() handed it the GIL and it could answer before close(); an answer the
    kernel accepted counts as written, so that reader hung up after its answer: a CI run lost mail so.)"""
    held, go = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        go.wait(10)

    daemon.loop.call_soon_threadsafe(hold)
    assert held.wait(10), "the daemon's loop did not come round"
    try:
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:  # accepted by the kernel's backlog
            sock.sendall(raw)
    finally:
        go.set()


def post(daemon: Daemon, path: str, body: bytes, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{daemon.port}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in {**daemon.headers, **headers}.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: a process writing its stdout there blocks in write()."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end


def killed_while_printing(
    command: list[str], daemon: Daemon, stdin: bytes = b"", env: dict[str, str] | None = None
) -> None:
    """Run a reader whose output cannot be written (a full pipe): once the daemon has answered it
    (a lease exists), SIGKILL it. It got the mail, but never printed it, so it never acknowledged."""
    read_end, write_end = full_pipe()
    process = subprocess.Popen(command, env=env or daemon.env(), stdin=subprocess.PIPE, stdout=write_end)
    os.close(write_end)
    try:
        assert process.stdin is not None
        process.stdin.write(stdin)
        process.stdin.close()
        deadline = time.monotonic() + 20
        while lease_count(daemon) == 0:
            assert process.poll() is None, "the reader ended before it was answered"
            assert time.monotonic() < deadline, "the daemon never answered the reader"
            time.sleep(0.02)
        time.sleep(0.3)  # the answer is on its way into the blocked reader
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()
        os.close(read_end)


def assert_back_in_order(daemon: Daemon, name: str, ids: list[int], *, redelivered: bool) -> None:
    assert ids, "no mail to see come back"
    time.sleep(BACK_AFTER)
    got = drain(daemon, name)
    assert [m["id"] for m in got] == ids
    if redelivered:
        assert all(m["redelivered"] is True and m["attempts"] >= 2 for m in got), got
    assert drain(daemon, name) == []


# --- REST check-inbox ---------------------------------------------------------------------------------


def test_rest_manual_ack_answers_the_lease_and_acknowledges_it(short: Daemon) -> None:
    ids = fill(short, "bob", 3)
    page = manual_check(short, "bob")
    assert [m["id"] for m in page["messages"]] == ids and page["remaining"] == 0
    assert page["leaseId"] and page["leaseExpiresAt"] > now_iso()
    assert all(set(m) == {"id", "from", "body", "createdAt"} for m in page["messages"])  # first delivery: seed shape
    assert manual_check(short, "bob")["messages"] == []  # held by the open lease
    foreign = request(
        short.url, "POST", "/v1/ack?name=bob", json_body={"leaseId": page["leaseId"]}, headers={"X-Mailbox": "eve"}
    )
    assert foreign.status == 403 and foreign.error()["code"] == "identity_mismatch"
    assert ack(short, "bob", page["leaseId"]).json == {"acked": 3}
    again = ack(short, "bob", page["leaseId"])
    assert again.status == 409 and again.error()["code"] == "lease_not_found"
    assert request(short.url, "GET", "/v1/peek?name=bob").json["pending"] == 0


def test_rest_lease_not_acknowledged_comes_back_and_a_late_ack_is_refused(short: Daemon) -> None:
    ids = fill(short, "bob", 3)
    page = manual_check(short, "bob")
    time.sleep(BACK_AFTER)
    late = ack(short, "bob", page["leaseId"])
    assert late.status == 409 and late.error()["code"] == "lease_not_found"
    assert_back_in_order(short, "bob", ids, redelivered=True)


def test_rest_reader_that_hangs_up_right_after_its_request_loses_nothing(short: Daemon) -> None:
    ids = fill(short, "bob", 5)
    for _ in range(20):
        hang_up_after(short, post(short, "/v1/check-inbox?name=bob", b"", **{"X-Mailbox": "bob"}))
    assert_back_in_order(short, "bob", ids, redelivered=False)


def test_rest_manual_reader_killed_after_the_answer_loses_nothing(short: Daemon) -> None:
    ids = fill(short, "bob", 4)
    script = (
        "import sys, json; from claude_mailbox.client import MailboxClient; "
        f"print(json.dumps(MailboxClient({short.url!r}).check('bob', manual=True)), flush=True)"
    )
    killed_while_printing([sys.executable, "-c", script], short)
    assert_back_in_order(short, "bob", ids, redelivered=True)


def test_kill_9_of_the_daemon_between_lease_and_ack_loses_nothing(short_process: Daemon) -> None:
    ids = fill(short_process, "bob", 6)
    page = manual_check(short_process, "bob")
    assert [m["id"] for m in page["messages"]] == ids
    short_process.kill()
    short_process.start()
    assert_back_in_order(short_process, "bob", ids, redelivered=True)


# --- CLI check and watch --block ------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "claude_mailbox", *args]


def test_cli_check_killed_before_its_output_is_written_loses_nothing(short: Daemon) -> None:
    ids = fill(short, "bob", 3)
    killed_while_printing(cli("check", "--name", "bob", "--url", short.url), short)
    assert_back_in_order(short, "bob", ids, redelivered=True)


def test_watch_killed_before_its_output_is_written_loses_nothing(short: Daemon) -> None:
    ids = fill(short, "bob", 2)
    killed_while_printing(cli("watch", "--block", "--name", "bob", "--url", short.url, "--timeout", "20"), short)
    assert_back_in_order(short, "bob", ids, redelivered=True)


def test_watch_that_hangs_up_right_after_its_request_loses_nothing(short: Daemon) -> None:
    ids = fill(short, "bob", 2)
    for _ in range(10):
        hang_up_after(short, post(short, "/v1/watch?name=bob&timeout=5", b"", **{"X-Mailbox": "bob"}))
    assert_back_in_order(short, "bob", ids, redelivered=False)


def test_cli_check_prints_then_acknowledges(short: Daemon) -> None:
    fill(short, "bob", 2)
    done = subprocess.run(
        cli("check", "--name", "bob", "--url", short.url), env=short.env(), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert [line.split(": ", 1)[1] for line in done.stdout.splitlines()] == ['"m0"', '"m1"']
    assert lease_count(short) == 0 and request(short.url, "GET", "/v1/peek?name=bob").json["pending"] == 0


# --- the prompt-submit hook -------------------------------------------------------------------------------


def hook_command() -> list[str]:
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        f"import sys; sys.path.insert(0, {str(REPO / 'daemon')!r}); "
        "from claude_mailbox import hookrelay; hookrelay.main(sys.argv[1:])",
        "prompt-submit",
    ]


HOOK_INPUT = json.dumps({"session_id": "hook-test", "hook_event_name": "UserPromptSubmit", "prompt": "hi"}).encode()


def hook_env(daemon: Daemon) -> dict[str, str]:
    return base_env(daemon.home, CLAUDE_MAILBOX_URL=daemon.url)


def _hook_mailbox() -> str:
    from claude_mailbox import identity

    return identity.session_mailbox("hook-test", None)


def test_hook_prints_the_mail_then_acknowledges(short: Daemon) -> None:
    name = _hook_mailbox()
    ids = fill(short, name, 3)
    done = subprocess.run(hook_command(), input=HOOK_INPUT, env=hook_env(short), capture_output=True, timeout=30)
    assert done.returncode == 0
    context = json.loads(done.stdout)["hookSpecificOutput"]["additionalContext"]
    assert all(f"Message #{i} " in context for i in ids)
    assert lease_count(short) == 0 and request(short.url, "GET", f"/v1/peek?name={name}").json["pending"] == 0


def test_hook_killed_before_its_output_is_written_loses_nothing(short: Daemon) -> None:
    name = _hook_mailbox()
    ids = fill(short, name, 3)
    killed_while_printing(hook_command(), short, HOOK_INPUT, hook_env(short))
    assert_back_in_order(short, name, ids, redelivered=True)


def test_hook_that_hangs_up_right_after_its_request_loses_nothing(short: Daemon) -> None:
    name = _hook_mailbox()
    ids = fill(short, name, 3)
    for _ in range(10):
        hang_up_after(short, post(short, "/v1/hooks/prompt-submit", HOOK_INPUT, **{"X-Mailbox-Ack": "manual"}))
        hang_up_after(short, post(short, "/v1/hooks/prompt-submit", HOOK_INPUT))
    assert_back_in_order(short, name, ids, redelivered=False)


# --- MCP check_inbox ------------------------------------------------------------------------------------------


async def _mcp_call(daemon: Daemon, tool: str, arguments: dict[str, Any]) -> Any:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with (
        create_mcp_http_client(headers={"X-Mailbox": "bob", **daemon.headers}) as http,
        Client(streamable_http_client(f"{daemon.url}/mcp", http_client=http), mode="legacy") as client,
    ):
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, result.content
        return result.structured_content


def test_mcp_check_inbox_acknowledges_after_the_answer_is_written(short: Daemon) -> None:
    ids = fill(short, "bob", 3)
    first = asyncio.run(_mcp_call(short, "check_inbox", {}))
    assert [m["id"] for m in first["messages"]] == ids
    assert lease_count(short) == 0
    assert asyncio.run(_mcp_call(short, "check_inbox", {}))["messages"] == []


def test_mcp_reader_that_hangs_up_right_after_its_request_loses_nothing(short: Daemon) -> None:
    ids = fill(short, "bob", 4)
    call = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "check_inbox", "arguments": {}}}
    ).encode()
    headers = {
        "X-Mailbox": "bob",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    for _ in range(20):
        hang_up_after(short, post(short, "/mcp", call, **headers))
    time.sleep(BACK_AFTER)
    got = asyncio.run(_mcp_call(short, "check_inbox", {}))
    assert [m["id"] for m in got["messages"]] == ids


def test_mcp_send_with_an_idempotency_key_stores_once(short: Daemon) -> None:
    first = asyncio.run(_mcp_call(short, "send", {"to": "carol", "body": "once", "idempotencyKey": "k1"}))
    again = asyncio.run(_mcp_call(short, "send", {"to": "carol", "body": "once", "idempotencyKey": "k1"}))
    assert again["id"] == first["id"] and again["repeated"] is True
    assert request(short.url, "GET", "/v1/peek?name=carol").json["pending"] == 1


# --- idempotent send ------------------------------------------------------------------------------------------


def test_a_retried_rest_send_with_the_same_key_stores_one_message(short: Daemon) -> None:
    def keyed(key: str, body: str = "hello") -> Any:
        return request(
            short.url,
            "POST",
            "/v1/send",
            json_body={"to": "bob", "body": body},
            headers={"X-Mailbox": "alice", "Idempotency-Key": key},
        )

    first, again = keyed("retry-1"), keyed("retry-1")
    assert (first.status, again.status) == (201, 200)
    assert again.json == first.json
    assert keyed("retry-2").status == 201
    bad = keyed("x" * 201)
    assert bad.status == 400 and "idempotency key" in bad.error()["message"]
    assert [m["body"] for m in drain(short, "bob")] == ["hello", "hello"]


def test_cli_send_sends_an_idempotency_key(short: Daemon) -> None:
    done = subprocess.run(
        cli("send", "--from", "alice", "--to", "bob", "--body", "via cli", "--url", short.url),
        env=short.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    url = pgkit.daemon_database(short)
    if url is not None:  # MAILBOX_TEST_STORE=postgres
        assert pgkit.query(url, "SELECT sender, length(key) FROM idempotency") == [("alice", 32)]
        return
    assert sqlite_rows(short.db_path, "SELECT sender, length(key) FROM idempotency") == [("alice", 32)]


# --- a big inbox ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MAILBOX_TEST_STORE") == "postgres", reason="fills the SQLite file directly")
def test_an_inbox_of_10000_x_64_kib_is_drained_by_check_completely_and_exactly_once(
    mailbox_home: Path, tmp_path: Path
) -> None:
    count, size = 10_000, 64 * 1024
    store = Store(mailbox_home / "mailbox.db")
    at = now_iso()
    with store.db:
        store.db.executemany(
            "INSERT INTO messages (sender, recipient, body, created_at, chars, quoted) VALUES (?, ?, ?, ?, ?, ?)",
            (("alice", "big", f"{i:05d}" + "z" * (size - 5), at, size, size + 2) for i in range(count)),
        )
    store.close()
    daemon = start_daemon(mailbox_home)
    try:
        out = tmp_path / "check.out"
        with out.open("wb") as sink:
            done = subprocess.run(
                cli("check", "--name", "big", "--url", daemon.url),
                env=daemon.env(),
                stdout=sink,
                stderr=subprocess.PIPE,
                timeout=900,
            )
        assert done.returncode == 0, done.stderr
        numbers = []
        with out.open("rb") as lines:
            for line in lines:
                numbers.append(int(line.split(b': "', 1)[1][:5]))
        assert numbers == list(range(count))  # all of them, in order, once
        assert request(daemon.url, "GET", "/v1/peek?name=big").json["pending"] == 0
        assert lease_count(daemon) == 0
    finally:
        daemon.stop()


# --- MCP check_inbox to a Claude Code process: exactly-once (issue 20.3) --------------------------------------

# A reader that sends the call, never reads the answer and waits to be killed (the attack: the
# answer is written into its socket, then the process dies).
MCP_READER = """
import socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.sendall(sys.stdin.buffer.read())
time.sleep(60)
"""


def _mcp_check_call(daemon: Daemon, claude_pid: int) -> bytes:
    call = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "check_inbox", "arguments": {}}}
    ).encode()
    return post(
        daemon,
        "/mcp",
        call,
        **{
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
            "X-Mailbox-Claude-Pid": str(claude_pid),  # what the plugin's headersHelper sends
        },
    )


def _registered_session(daemon: Daemon, claude: subprocess.Popen[bytes]) -> str:
    """A session registered as the SessionStart hook does (session id + Claude Code pid): its MCP
    calls then carry only the pid. Returns its mailbox name."""
    session = "5e55104b-0000-4000-8000-000000000203"
    reply = request(
        daemon.url,
        "POST",
        "/v1/hooks/session-start",
        json_body={"session_id": session, "cwd": str(REPO), "hook_event_name": "SessionStart", "source": "startup"},
        headers={"X-Mailbox-Claude-Pid": str(claude.pid)},
    )
    assert reply.status == 200, reply.body
    return f"claude-{session[:8]}"


def _reader_killed_after_its_answer(daemon: Daemon, claude: subprocess.Popen[bytes], name: str) -> None:
    reader = subprocess.Popen(
        [sys.executable, "-c", MCP_READER, str(daemon.port)], stdin=subprocess.PIPE, env=daemon.env()
    )
    try:
        assert reader.stdin is not None
        reader.stdin.write(_mcp_check_call(daemon, claude.pid))
        reader.stdin.close()
        deadline = time.monotonic() + 20
        # Answered: its lease is open, or (acknowledged once written, as before issue 20.3) already gone.
        while lease_count(daemon) == 0 and request(daemon.url, "GET", f"/v1/peek?name={name}").json["pending"]:
            assert time.monotonic() < deadline, "the daemon never answered the reader"
            time.sleep(0.02)
        time.sleep(0.15)  # the answer is in the reader's socket, unread
        assert reader.poll() is None
    finally:
        reader.kill()
        reader.wait()


@pytest.fixture
def claude_process() -> Iterator[subprocess.Popen[bytes]]:
    """Stands in for the Claude Code process whose pid the reader's requests carry."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_mcp_answer_to_a_claude_code_that_died_comes_back_redelivered(
    short: Daemon, claude_process: subprocess.Popen[bytes]
) -> None:
    name = _registered_session(short, claude_process)
    ids = fill(short, name, 3)
    _reader_killed_after_its_answer(short, claude_process, name)
    claude_process.kill()  # Claude Code crashed with the answer unread
    claude_process.wait()
    assert_back_in_order(short, name, ids, redelivered=True)  # delivered again on resume


def test_mcp_answer_to_a_claude_code_still_alive_is_delivered_once(
    short: Daemon, claude_process: subprocess.Popen[bytes]
) -> None:
    name = _registered_session(short, claude_process)
    fill(short, name, 3)
    _reader_killed_after_its_answer(short, claude_process, name)  # its connection died, its process did not
    assert lease_count(short) == 1  # held until the lease ends
    time.sleep(BACK_AFTER)
    assert lease_count(short) == 0
    assert request(short.url, "GET", f"/v1/peek?name={name}").json["pending"] == 0
    assert drain(short, name) == []


def test_the_next_mcp_request_of_the_same_claude_code_acknowledges_at_once(
    short: Daemon, claude_process: subprocess.Popen[bytes]
) -> None:
    name = _registered_session(short, claude_process)
    ids = fill(short, name, 3)
    first = request(
        short.url,
        "POST",
        "/mcp",
        json_body={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "check_inbox", "arguments": {}},
        },
        headers={
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
            "X-Mailbox-Claude-Pid": str(claude_process.pid),
        },
    )
    assert [m["id"] for m in first.json["result"]["structuredContent"]["messages"]] == ids
    assert lease_count(short) == 1  # written, but not yet shown to have reached the session
    ping = request(
        short.url,
        "POST",
        "/mcp",
        json_body={"jsonrpc": "2.0", "id": 2, "method": "ping"},
        headers={
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
            "X-Mailbox-Claude-Pid": str(claude_process.pid),
        },
    )
    assert ping.status == 200, ping.body
    assert lease_count(short) == 0  # acknowledged by that request, not at the lease's end
    assert request(short.url, "GET", f"/v1/peek?name={name}").json["pending"] == 0
    claude_process.kill()  # dying now changes nothing: the mail was confirmed
    claude_process.wait()
    time.sleep(BACK_AFTER)
    assert drain(short, name) == []
