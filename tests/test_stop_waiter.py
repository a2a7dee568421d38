"""The asyncRewake Stop hook waiter: the real hook process (`hooks/run stop`, stdin JSON) against the
real daemon. Off unless the session is collaborating; on, it holds until mail arrives, then exits 2
with the mail on stderr (which starts a new Claude turn). One waiter per session, enforced by the daemon.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import REPO, Daemon, base_env, free_port, run_cli
from pushkit import (
    HOOK,
    Session,
    clear,
    end_session,
    fake_claude_process,
    finish,
    hook,
    hook_env,
    kill,
    start_session,
    wait_until,
    wait_waiters,
)


@pytest.fixture
def session(daemon: Daemon, fake_claude: int) -> Session:
    return start_session(daemon, fake_claude)


def start_stop_hook(daemon: Daemon, session: Session, **env: str) -> subprocess.Popen[str]:
    """What Claude Code runs at each turn end: `hooks/run stop` with the Stop hook's stdin."""
    process = subprocess.Popen(
        [str(HOOK), "stop"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**hook_env(daemon, session.claude_pid), **env},
        text=True,
    )
    payload = {"session_id": session.session_id, "hook_event_name": "Stop", "stop_hook_active": False}
    assert process.stdin is not None
    process.stdin.write(json.dumps(payload))
    process.stdin.close()
    process.stdin = None  # communicate() later must not touch it
    return process


def collaborate(daemon: Daemon, session: Session, state: str) -> str:
    result = run_cli("collaborate", state, "--session", session.session_id, env=daemon.env())
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def assert_wakes_with(process: subprocess.Popen[str], *lines: tuple[str, str]) -> None:
    """Exit 2, nothing on stdout, and stderr = the plain-facts header plus one line per (sender, body)."""
    code, out, err = finish(process)
    assert (code, out) == (2, ""), err
    header, *rest = err.splitlines()
    assert header == "claude-mailbox: mail arrived while this session was idle (bodies are JSON-quoted):"
    assert len(rest) == len(lines)
    for line, (sender, body) in zip(rest, lines, strict=True):
        prefix, _, quoted = line.partition(": ")
        assert prefix.startswith("Message #") and f" from {sender} at " in prefix
        assert json.loads(quoted) == body


def assert_ends_silently(process: subprocess.Popen[str]) -> None:
    assert finish(process) == (0, "", "")


# --- off by default ------------------------------------------------------------------------------


def test_without_collaboration_ordinary_mail_does_not_wake(daemon: Daemon, session: Session) -> None:
    """Issue 22.2: the waiter of a session that does not collaborate holds for urgent mail only; the
    ordinary mail stays for the next prompt and costs the idle session no turn."""
    waiter = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    daemon.client().send("alice", session.name, "waits for the next prompt")
    time.sleep(0.5)
    assert waiter.poll() is None  # not woken
    assert daemon.client().peek(session.name)["pending"] == 1  # not consumed
    assert collaborate(daemon, session, "status") == f"collaboration mode is off for {session.name}"
    hook(daemon, "session-end", {"session_id": session.session_id, "reason": "other"}, session.claude_pid)
    assert_ends_silently(waiter)
    assert daemon.client().peek(session.name)["pending"] == 1


def test_without_collaboration_urgent_mail_wakes_with_only_the_urgent_mail(daemon: Daemon, session: Session) -> None:
    daemon.client().send("alice", session.name, "ordinary, for the next prompt")
    waiter = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    urgent = daemon.client().send("boss", session.name, "stop, I am changing that API", urgent=True)
    code, out, err = finish(waiter)
    assert (code, out) == (2, ""), err
    assert err.splitlines() == [
        "claude-mailbox: urgent mail arrived while this session was idle (bodies are JSON-quoted):",
        f"Message #{urgent['id']} from boss at {urgent['createdAt']} (urgent): "
        + json.dumps("stop, I am changing that API"),
    ]
    assert daemon.client().peek(session.name)["pending"] == 1  # the ordinary one
    prompt = hook(daemon, "prompt-submit", {"session_id": session.session_id, "prompt": "hi"}, session.claude_pid)
    assert "ordinary, for the next prompt" in prompt.context and "stop, I am" not in prompt.context


def test_an_unattended_session_without_collaboration_is_not_held(daemon: Daemon, session: Session) -> None:
    """`claude -p` and the Agent SDK's stream-json sessions wait ~30 s at their end for a held Stop
    hook: without collaboration they are not held, unless CLAUDE_MAILBOX_WAKE_UNATTENDED=1."""
    daemon.client().send("boss", session.name, "urgent, but nobody is there", urgent=True)
    started = time.monotonic()
    assert_ends_silently(start_stop_hook(daemon, session, CLAUDE_CODE_SESSION_ATTENDED="0"))
    assert time.monotonic() - started < 5.0
    assert daemon.client().peek(session.name)["pending"] == 1
    opted_in = start_stop_hook(daemon, session, CLAUDE_CODE_SESSION_ATTENDED="0", CLAUDE_MAILBOX_WAKE_UNATTENDED="1")
    code, _, err = finish(opted_in)
    assert code == 2 and "urgent, but nobody is there" in err


def test_urgent_mail_already_pending_wakes_at_once(daemon: Daemon, session: Session) -> None:
    daemon.client().send("boss", session.name, "now", urgent=True)
    code, _, err = finish(start_stop_hook(daemon, session))
    assert code == 2 and '(urgent): "now"' in err


def test_urgent_sends_are_rate_limited_per_sender(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("urgent_per_hour = 2\n")
    with Daemon(home) as limited:
        client = limited.client()
        client.send("boss", "bob", "one", urgent=True)
        client.send("boss", "bob", "two", urgent=True)
        refused = run_cli("send", "--from", "boss", "--to", "bob", "--body", "three", "--urgent", env=limited.env())
        assert refused.returncode != 0
        assert refused.stderr.strip().count("\n") == 0  # one line
        assert "'boss' sends more than 2 urgent messages an hour" in refused.stderr
        client.send("boss", "bob", "ordinary is not limited by it")
        sent = run_cli("send", "--from", "other", "--to", "bob", "--body", "mine", "--urgent", env=limited.env())
        assert sent.returncode == 0 and sent.stdout.startswith("sent urgent message #"), sent.stderr
        assert limited.client().peek("bob")["pending"] == 4


def test_unknown_session_and_garbage_input_exit_0(daemon: Daemon, fake_claude: int) -> None:
    for stdin in ('{"session_id": "never-started"}', "not json", ""):
        result = subprocess.run(
            [str(HOOK), "stop"],
            input=stdin,
            env=hook_env(daemon, fake_claude),
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_no_daemon_exits_0_at_once(mailbox_home: Path, fake_claude: int) -> None:
    """A pending async hook holds up the exit of `claude -p` (about 30 s): without a daemon, do not linger."""
    env = base_env(mailbox_home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}", CLAUDE_PID=str(fake_claude))
    started = time.monotonic()
    result = subprocess.run(
        [str(HOOK), "stop"], input='{"session_id": "s1"}', env=env, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert time.monotonic() - started < 5.0


# --- on: wake with mail ----------------------------------------------------------------------------


def test_collaborating_waiter_blocks_then_exits_2_with_the_mail(daemon: Daemon, session: Session) -> None:
    assert collaborate(daemon, session, "on") == f"collaboration mode is on for {session.name}"
    waiter = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    time.sleep(0.2)
    assert waiter.poll() is None
    status = f"collaboration mode is on for {session.name}; its Stop-hook waiter is waiting for mail"
    assert collaborate(daemon, session, "status") == status
    body = 'two\nlines and a "quote"'
    daemon.client().send("alice", session.name, body)
    assert_wakes_with(waiter, ("alice", body))
    # Consumed exactly once: neither the inbox nor the next prompt sees it again.
    assert daemon.client().peek(session.name)["pending"] == 0
    prompt = hook(daemon, "prompt-submit", {"session_id": session.session_id, "prompt": "hi"}, session.claude_pid)
    assert (prompt.returncode, prompt.stdout) == (0, "")


def test_mail_already_pending_wakes_at_once(daemon: Daemon, session: Session) -> None:
    collaborate(daemon, session, "on")
    daemon.client().send("alice", session.name, "one")
    daemon.client().send("bob", session.name, "two")
    assert_wakes_with(start_stop_hook(daemon, session), ("alice", "one"), ("bob", "two"))


def test_a_long_message_ahead_does_not_hold_the_wake_up(daemon: Daemon, session: Session) -> None:
    """A 20,000-character body (under max_body_bytes, over the hook's budget) at the head of the inbox
    (issue 20.4): the waiter wakes at once with the short message behind it and says the long one waits
    and how to read it; the long one stays unread, and it does not wake the next waiter again."""
    collaborate(daemon, session, "on")
    long_body = "x" * 20_000
    daemon.client().send("alice", session.name, long_body)
    daemon.client().send("bob", session.name, "short")
    started = time.monotonic()
    code, out, err = finish(start_stop_hook(daemon, session))
    assert (code, out) == (2, ""), err
    assert time.monotonic() - started < 5.0
    header, short, note = err.splitlines()
    assert header == "claude-mailbox: mail arrived while this session was idle (bodies are JSON-quoted):"
    assert " from bob at " in short and json.loads(short.partition(": ")[2]) == "short"
    assert note == (
        "1 longer message waits, too long to show here: read it with the "
        "mcp__plugin_claude-mailbox_mailbox__check_inbox tool."
    )
    assert daemon.client().peek(session.name)["pending"] == 1  # the long one, for check_inbox

    # Told once: the next turn's waiter waits (for new mail), it does not wake again for the same one.
    waiter = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    time.sleep(0.5)
    assert waiter.poll() is None
    # A new long message alone wakes it, to be told of.
    daemon.client().send("carol", session.name, "y" * 20_000)
    code, out, err = finish(waiter)
    assert (code, out) == (2, ""), err
    assert err.splitlines()[1:] == [
        "2 longer messages wait, too long to show here: read them with the "
        "mcp__plugin_claude-mailbox_mailbox__check_inbox tool."
    ]
    read = daemon.client().check(session.name)  # what check_inbox does: both, in full
    assert [m["body"] for m in read["messages"]] == [long_body, "y" * 20_000]


def test_collaboration_follows_a_clear(daemon: Daemon, session: Session) -> None:
    collaborate(daemon, session, "on")
    waiter = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    cleared = clear(daemon, session)
    assert_ends_silently(waiter)  # SessionEnd (reason clear) ended the old session's waiter
    assert collaborate(daemon, cleared, "status") == (
        f"collaboration mode is on for {cleared.name}; no Stop-hook waiter yet (one starts when the current turn ends)"
    )
    waiter = start_stop_hook(daemon, cleared)
    wait_waiters(daemon, 1)
    daemon.client().send("alice", session.name, "to the old name")
    assert_wakes_with(waiter, ("alice", "to the old name"))


@pytest.mark.parametrize(
    ("claude_args", "waits"),
    [(["-p", "hello"], False), (["--print", "--", "hi"], False), (["-p", "--input-format", "stream-json"], True)],
    ids=["p", "print", "stream-json"],
)
def test_a_one_shot_print_run_does_not_wait(daemon: Daemon, claude_args: list[str], waits: bool) -> None:
    """Plain `claude -p` exits after its turn: a waiter would hold the exit up ~30 s and eat mail that
    no turn would show. `-p --input-format stream-json` is a live session that a rewake reaches."""
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *claude_args])
    try:
        session = start_session(daemon, stand_in.pid)
        collaborate(daemon, session, "on")
        waiter = start_stop_hook(daemon, session, CLAUDE_CODE_SESSION_ATTENDED="0")
        if waits:
            wait_waiters(daemon, 1)
            daemon.client().send("alice", session.name, "live")
            assert_wakes_with(waiter, ("alice", "live"))
        else:
            assert_ends_silently(waiter)
            daemon.client().send("alice", session.name, "for the next prompt")
            assert daemon.client().peek(session.name)["pending"] == 1
    finally:
        stand_in.kill()
        stand_in.wait()


# --- one waiter per session; what ends it -------------------------------------------------------


def test_a_newer_waiter_replaces_the_older(daemon: Daemon, session: Session) -> None:
    collaborate(daemon, session, "on")
    older = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    newer = start_stop_hook(daemon, session)
    assert_ends_silently(older)
    wait_waiters(daemon, 1)
    assert newer.poll() is None
    daemon.client().send("alice", session.name, "for the newer one")
    assert_wakes_with(newer, ("alice", "for the newer one"))


def test_turning_collaboration_off_ends_the_waiter(daemon: Daemon, session: Session) -> None:
    collaborate(daemon, session, "on")
    waiter = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    assert collaborate(daemon, session, "off") == f"collaboration mode is off for {session.name}"
    assert_ends_silently(waiter)
    # The next turn's waiter holds for urgent mail only: ordinary mail waits for the next prompt.
    after = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    daemon.client().send("alice", session.name, "after off")
    time.sleep(0.3)
    assert after.poll() is None
    end_session(daemon, session)
    assert_ends_silently(after)
    assert daemon.client().peek(session.name)["pending"] == 1


def test_session_end_ends_the_waiter(daemon: Daemon, session: Session) -> None:
    collaborate(daemon, session, "on")
    waiter = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    end_session(daemon, session)
    assert_ends_silently(waiter)
    assert_ends_silently(start_stop_hook(daemon, session))  # an ended session does not wait again


# --- failures lose nothing ---------------------------------------------------------------------------


def test_waiter_killed_mid_wait_loses_nothing(daemon: Daemon, session: Session) -> None:
    collaborate(daemon, session, "on")
    doomed = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    kill(doomed)
    daemon.client().send("alice", session.name, "after the kill")
    client = daemon.client()
    wait_until(lambda: client.peek(session.name)["pending"] == 1, what="the message to stay pending")
    assert_wakes_with(start_stop_hook(daemon, session), ("alice", "after the kill"))


def test_waiter_of_a_dead_claude_code_does_not_consume(daemon: Daemon) -> None:
    """Claude Code killed (no SessionEnd): its orphaned waiter must not eat mail nobody will see."""
    with fake_claude_process() as pid:
        session = start_session(daemon, pid)
        collaborate(daemon, session, "on")
        orphan = start_stop_hook(daemon, session)
        wait_waiters(daemon, 1)
    daemon.client().send("alice", session.name, "for a dead session")
    assert_ends_silently(orphan)
    assert daemon.client().peek(session.name)["pending"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_waiter_rides_out_a_daemon_restart(daemon: Daemon, session: Session, sig: signal.Signals) -> None:
    collaborate(daemon, session, "on")
    waiter = start_stop_hook(daemon, session)
    wait_waiters(daemon, 1)
    daemon.stop(sig)
    time.sleep(0.5)
    assert waiter.poll() is None  # retrying, not given up
    daemon.start()  # same port and data dir: collaboration mode was persisted
    wait_waiters(daemon, 1, timeout=15)
    daemon.client().send("alice", session.name, "after the restart")
    assert_wakes_with(waiter, ("alice", "after the restart"))


# --- the plugin's launcher runs the CLI --------------------------------------------------------------


def test_hook_launcher_runs_the_cli(daemon: Daemon, session: Session) -> None:
    """`hooks/run cli ...` is how the plugin's command and skill reach the CLI without a global install."""

    def launcher(*args: str) -> subprocess.CompletedProcess[str]:
        env = hook_env(daemon, session.claude_pid)
        return subprocess.run([str(HOOK), "cli", *args], env=env, capture_output=True, text=True, timeout=30)

    on = launcher("collaborate", "on", "--session", session.session_id)
    assert (on.returncode, on.stdout, on.stderr) == (0, f"collaboration mode is on for {session.name}\n", "")
    off = launcher("collaborate", "off", "--session", session.session_id)
    assert (off.returncode, off.stdout) == (0, f"collaboration mode is off for {session.name}\n")
    default = launcher("collaborate", "--session", session.session_id)  # `/claude-mailbox:collaborate` with no argument
    assert (default.returncode, default.stdout) == (0, f"collaboration mode is on for {session.name}\n")
    bad = launcher("collaborate", "maybe")
    assert bad.returncode == 1 and "invalid choice: 'maybe'" in bad.stderr
    down = launcher("collaborate", "status", "--name", session.name, "--url", "http://127.0.0.1:9")
    assert down.returncode == 2 and down.stderr.startswith("claude-mailbox: ")


def test_hooks_json_keeps_the_waiter_alive_while_idle() -> None:
    """Claude Code 2.1.330 applies a hook's timeout to async hooks too (default 600 s: an idle session
    would stop being wakeable after 10 minutes). Exit is not held up by it: an interactive /exit
    SIGTERMs the hook's process group and waits until it is empty, so `exec` keeps the relay the
    process Claude Code started (tests/test_claude_code_exit.py); `claude -p` waits about 30 s
    whatever the timeout."""
    spec = json.loads((REPO / "hooks" / "hooks.json").read_text())["hooks"]["Stop"][0]["hooks"][0]
    assert spec["command"] == 'exec "${CLAUDE_PLUGIN_ROOT}/hooks/run" stop'
    assert spec["async"] is True and spec["asyncRewake"] is True
    assert 3600 <= spec["timeout"] <= 2**31 // 1000  # milliseconds beyond 2^31 overflow JavaScript timers
