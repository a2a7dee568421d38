"""The `claude-mailbox` CLI as a user runs it: a separate process, real daemon, real exit codes.

Exit codes (documented in --help): 0 ok, 1 error, 2 daemon unreachable (3: watch timeout).
Every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

import pgkit
from claude_mailbox import identity
from claude_mailbox.config import redact_url
from harness import Daemon, base_env, free_port, run_cli
from plugin_env import hook_env, run_hook, start_input


def one_line_error(result, code: int) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("claude-mailbox")
    return str(result.stderr)


@pytest.fixture
def down_env(mailbox_home: Path) -> dict[str, str]:
    """A daemon address where nothing listens."""
    return base_env(mailbox_home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}")


# --- the verbs, happy path ----------------------------------------------------------------------------


def test_send_peek_check_list_status(daemon: Daemon) -> None:
    env = daemon.env()
    sent = run_cli("send", "--from", "alice", "--to", "bob", "--body", "hello bob", env=env)
    assert sent.returncode == 0 and sent.stdout.startswith("sent message #1 from alice to bob")

    peek = run_cli("peek", "--name", "bob", env=env)
    assert peek.returncode == 0 and peek.stdout.startswith("bob: 1 pending (oldest ")

    listed = run_cli("list", env=env)
    assert listed.returncode == 0
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert set(rows) == {"alice", "bob"} and "1 pending" in rows["bob"]

    status = run_cli("status", env=env)
    assert status.returncode == 0
    assert "Running" in status.stdout and daemon.url in status.stdout
    database = pgkit.daemon_database(daemon)  # MAILBOX_TEST_STORE=postgres: the server, not a file
    assert (f"{redact_url(database)}  (PostgreSQL)" if database else str(daemon.db_path)) in status.stdout

    check = run_cli("check", "--name", "bob", env=env)
    assert check.returncode == 0
    assert check.stdout.startswith("Message #1 from alice at ") and check.stdout.rstrip().endswith(': "hello bob"')
    again = run_cli("check", "--name", "bob", env=env)
    assert again.returncode == 0 and again.stdout.strip() == "bob: no new mail"


def test_json_output_of_read_verbs(daemon: Daemon) -> None:
    env = daemon.env()
    sent = json.loads(run_cli("send", "--from", "alice", "--to", "bob", "--body", "x", "--json", env=env).stdout)
    assert sent["from"] == "alice" and sent["to"] == "bob" and isinstance(sent["id"], int)
    assert json.loads(run_cli("peek", "--name", "bob", "--json", env=env).stdout)["pending"] == 1
    boxes = json.loads(run_cli("list", "--json", env=env).stdout)["mailboxes"]
    assert {b["name"]: b["pending"] for b in boxes} == {"alice": 0, "bob": 1}
    status = json.loads(run_cli("status", "--json", env=env).stdout)
    assert status["state"] == "Running" and status["url"] == daemon.url and status["port"] == daemon.port
    checked = json.loads(run_cli("check", "--name", "bob", "--json", env=env).stdout)
    assert [m["body"] for m in checked["messages"]] == ["x"] and checked["remaining"] == 0
    session = str(uuid.uuid4())
    whoami = json.loads(run_cli("whoami", "--session", session, "--json", env=env).stdout)
    assert whoami == {"name": identity.session_mailbox(session)}


def test_body_from_stdin(daemon: Daemon) -> None:
    body = 'multi\nline "quoted" body ünïcödé 🙂\n'
    result = run_cli("send", "--from", "alice", "--to", "bob", "--body", "-", env=daemon.env(), input=body)
    assert result.returncode == 0, result.stderr
    assert daemon.client().check("bob")["messages"][0]["body"] == body
    empty = run_cli("send", "--from", "alice", "--to", "bob", "--body", "-", env=daemon.env(), input="")
    assert "empty" in one_line_error(empty, 1)


def test_url_flag_wins(daemon: Daemon, down_env: dict[str, str]) -> None:
    result = run_cli("peek", "--name", "bob", "--url", daemon.url, env=down_env)
    assert result.returncode == 0 and result.stdout.startswith("bob: 0 pending")


def test_whoami_from_the_claude_code_bash_environment(daemon: Daemon, tmp_path: Path) -> None:
    """Claude Code's Bash tool environment carries CLAUDE_CODE_SESSION_ID (and CLAUDE_PID) on
    2.1.330 (seen in a real run: notes/cc-findings.md a.)."""
    session = str(uuid.uuid4())
    env = {**daemon.env(), "CLAUDE_CODE_SESSION_ID": session}
    # Not registered yet: derived from the id (and the prefix), as the SessionStart hook will.
    assert run_cli("whoami", env=env).stdout.strip() == identity.session_mailbox(session)
    prefixed = run_cli("whoami", env={**env, "CLAUDE_MAILBOX_NAME": "backend"})
    assert prefixed.stdout.strip() == identity.session_mailbox(session, "backend")
    # Registered with a prefix by the real hook: the daemon's record wins.
    hook = hook_env(daemon.env(), url=daemon.url, claude_pid=None, session_id=session)
    hook["CLAUDE_MAILBOX_NAME"] = "api"
    run = run_hook("session-start", start_input(session, str(tmp_path)), hook)
    assert run.returncode == 0, run.stderr
    assert run_cli("whoami", env=env).stdout.strip() == identity.session_mailbox(session, "api")


def test_session_announce_relays_like_the_plugin_hook(daemon: Daemon, tmp_path: Path) -> None:
    session = str(uuid.uuid4())
    payload = json.dumps(start_input(session, str(tmp_path)))
    result = run_cli("session-announce", env=daemon.env(), input=payload)
    assert result.returncode == 0 and result.stderr == ""
    context = json.loads(result.stdout)["hookSpecificOutput"]["additionalContext"]
    assert f"mailbox name is {identity.session_mailbox(session)}." in context
    fixed = run_cli("session-announce", "--name", "frontend", env=daemon.env(), input=payload)
    assert "mailbox name is frontend." in json.loads(fixed.stdout)["hookSpecificOutput"]["additionalContext"]
    whoami = run_cli("whoami", "--session", session, env=daemon.env())
    assert whoami.stdout.strip() == "frontend"
    for garbage in ("", "nope", "[]"):
        bad = run_cli("session-announce", env=daemon.env(), input=garbage)
        assert (bad.returncode, bad.stdout, bad.stderr) == (0, "", "")


def test_check_hook_output_and_silence(daemon: Daemon) -> None:
    env = daemon.env()
    quiet = run_cli("check", "--name", "bob", "--hook", env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    daemon.client().send("alice", "bob", "via the legacy hook")
    for stdin in (None, "garbage", json.dumps({"session_id": "s", "prompt": "hi"})):
        daemon.client().send("alice", "bob", f"stdin {stdin!r}")
        result = run_cli("check", "--name", "bob", "--hook", env=env, input=stdin)
        assert result.returncode == 0 and result.stderr == ""
        out = json.loads(result.stdout)["hookSpecificOutput"]
        assert out["hookEventName"] == "UserPromptSubmit"
        assert json.dumps(f"stdin {stdin!r}") in out["additionalContext"]
    assert daemon.client().peek("bob")["pending"] == 0


def test_check_hook_respects_the_cap(daemon: Daemon) -> None:
    client = daemon.client()
    for i in range(400):  # many small messages: ~80 rendered characters each
        client.send(f"s{i % 7}", "bob", f"note {i}")
    result = run_cli("check", "--name", "bob", "--hook", env=daemon.env())
    context = json.loads(result.stdout)["hookSpecificOutput"]["additionalContext"]
    assert len(context) < 10_000
    pending = client.peek("bob")["pending"]
    assert 0 < pending < 400
    assert f"{pending} more message(s) are waiting" in context


# --- exit codes and one-line errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("send", "--from", "a", "--to", "b", "--body", "x"),
        ("peek", "--name", "a"),
        ("check", "--name", "a"),
        ("list",),
        ("status",),
        ("whoami", "--session", "0123abcd-0000-0000-0000-000000000000"),
        ("collaborate", "status", "--name", "a"),
        ("watch", "--block", "--name", "a", "--timeout", "1"),
    ],
    ids=lambda args: args[0],
)
def test_daemon_unreachable_exits_2(args: tuple[str, ...], down_env: dict[str, str]) -> None:
    started = time.monotonic()
    result = run_cli(*args, env=down_env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    if args[0] == "status":
        assert "Stopped" in result.stdout
    elif args[0] != "watch":
        assert "not answering" in one_line_error(result, 2)
    assert time.monotonic() - started < 10


def test_hook_verbs_exit_0_when_the_daemon_is_down(down_env: dict[str, str]) -> None:
    started = time.monotonic()
    result = run_cli("check", "--name", "bob", "--hook", env=down_env, input='{"session_id": "x"}')
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert time.monotonic() - started < 5


ERRORS = [
    (("send", "--from", "bad name", "--to", "b", "--body", "x"), "--from must be"),
    (("send", "--from", "a", "--to", "b" * 65, "--body", "x"), "to must be"),
    (("send", "--from", "a", "--to", "b", "--body", "   "), "empty"),
    (("peek", "--name", "no/slash"), "name must be"),
    (("check", "--name", ""), "--name must not be empty"),
    (("whoami",), "no Claude Code session here"),
    (("collaborate", "on", "--name", "nobody"), "no Claude Code session owns"),
    (("watch", "--name", "a"), "watch needs --block"),
]


def test_errors_exit_1_with_one_line(daemon: Daemon) -> None:
    for args, needle in ERRORS:  # one daemon for all: each case is a separate CLI process
        message = one_line_error(run_cli(*args, env=daemon.env()), 1)
        assert needle in message, (args, message)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("send", "--to", "b"),
        ("send", "--from", "a", "--to", "b", "--body", "x", "--bogus"),
        ("peek",),
        ("watch", "--block", "--name", "a", "--timeout", "soon"),
        ("install-hook",),
        ("install-hook", "--name", "a", "--user", "--project"),
        ("prune", "--delivered-older-than", "ages"),
    ],
    ids=lambda args: " ".join(args) or "none",
)
def test_bad_arguments_exit_1_with_one_line(args: tuple[str, ...], down_env: dict[str, str]) -> None:
    result = run_cli(*args, env=down_env)
    message = one_line_error(result, 1)
    assert "--help" in message or "cannot read" in message
    assert result.stdout == ""


def test_help_documents_exit_codes() -> None:
    env = base_env(Path("/nonexistent"))
    top = run_cli("--help", env=env)
    assert top.returncode == 0
    assert "0 ok, 1 error" in top.stdout and "2 daemon unreachable" in top.stdout
    for verb in ("send", "peek", "check", "list", "status", "whoami", "collaborate", "prune"):
        text = run_cli(verb, "--help", env=env).stdout
        assert "exit codes: 0 ok, 1 error" in text and "2 daemon unreachable" in text, verb
        assert "--json" in text, verb
    assert "3 timed out" in run_cli("watch", "--help", env=env).stdout
    assert "always 0" in run_cli("session-announce", "--help", env=env).stdout
    for verb in ("install-hook", "uninstall-hook"):
        assert "Does not need the daemon" in run_cli(verb, "--help", env=env).stdout


def test_version(down_env: dict[str, str]) -> None:
    from claude_mailbox import __version__

    result = run_cli("--version", env=down_env)
    assert result.returncode == 0 and result.stdout.strip() == f"claude-mailbox {__version__}"


# --- the HTTP client: no header or request-line smuggling, failures told apart by type (issue 9.6) ---------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Mailbox": "alice\r\nX-Mailbox: mallory"},
        {"X-Mailbox": "alice\nHost: evil"},
        {"X-Bad\r\nName": "x"},
        {"X Mailbox": "x"},
        {"X-Mailbox": "nul\x00byte"},
    ],
)
def test_header_injection_is_refused_before_anything_is_sent(headers: dict[str, str]) -> None:
    import socket
    import threading

    from claude_mailbox.errors import MailboxError
    from claude_mailbox.httpclient import http_request

    received: list[bytes] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)

        def accept() -> None:
            try:
                conn, _ = server.accept()
                received.append(conn.recv(4096))
                conn.close()
            except OSError:
                pass

        listener = threading.Thread(target=accept)
        listener.start()
        with pytest.raises(MailboxError, match="refusing"):
            http_request(f"http://127.0.0.1:{server.getsockname()[1]}", "GET", "/health", headers=headers)
        listener.join()
    assert received == []  # nothing reached the wire


def test_user_input_in_urls_is_quoted(daemon: Daemon) -> None:
    """A session id with URL syntax and line breaks in it stays one query value: the daemon sees it
    whole (and names it back), nothing is split into a second parameter or header."""
    from claude_mailbox.errors import DaemonError

    hostile = "x&name=other session\r\nX: y"
    with pytest.raises(DaemonError) as raised:
        daemon.client().whoami(hostile)
    assert raised.value.http_status == 404
    assert repr(hostile) in raised.value.message


def test_refused_and_timed_out_are_told_apart_by_type() -> None:
    import socket

    from claude_mailbox.httpclient import ConnectionRefused, TimedOut, http_request

    with pytest.raises(ConnectionRefused):
        http_request(f"http://127.0.0.1:{free_port()}", "GET", "/health", timeout=2.0)
    with socket.socket() as silent:  # accepts (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(TimedOut):
            http_request(f"http://127.0.0.1:{silent.getsockname()[1]}", "GET", "/health", timeout=0.3)


# --- install-autostart / uninstall-autostart (issue 11.6) ------------------------------------------------


def test_install_and_uninstall_autostart_verbs(mailbox_home: Path, tmp_path: Path) -> None:
    from claude_mailbox.setup import autostart

    if autostart.user_systemd_available():
        pytest.skip("a user systemd is reachable here: the verb would register a real unit")
    url = f"http://127.0.0.1:{free_port()}"
    env = base_env(mailbox_home, CLAUDE_MAILBOX_URL=url, HOME=str(tmp_path / "home"))
    try:
        installed = run_cli("install-autostart", "--json", env=env, timeout=60)
        assert installed.returncode == 0, installed.stderr
        data = json.loads(installed.stdout)
        assert data["mechanism"] == "detached process with a pid file" and data["url"] == url
        pid = int((mailbox_home / "daemon.pid").read_text())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and run_cli("peek", "--name", "x", env=env).returncode != 0:
            time.sleep(0.2)
        assert run_cli("peek", "--name", "x", env=env).returncode == 0  # it listens on the resolved port

        again = run_cli("install-autostart", env=env, timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        removed = run_cli("uninstall-autostart", "--purge", env=env, timeout=60)
    assert removed.returncode == 0, removed.stderr
    assert f"Deleted {mailbox_home}" in removed.stdout
    assert not mailbox_home.exists()
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    one_line_error(run_cli("peek", "--name", "x", env=env), 2)
