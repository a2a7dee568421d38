"""Helpers for the push-delivery tests: watchers, hook processes and sessions, all real processes
against the real daemon (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import plugin_env
from harness import REPO, Daemon

HOOK = REPO / "hooks" / "run"


def start_watch(daemon: Daemon, name: str, timeout: float = 30.0) -> subprocess.Popen[str]:
    """`claude-mailbox watch --block --name NAME --timeout T` as a separate process."""
    return subprocess.Popen(
        [sys.executable, "-m", "claude_mailbox", "watch", "--block", "--name", name, "--timeout", f"{timeout:g}"],
        env=daemon.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def kill(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.communicate()


def waiters(daemon: Daemon) -> int:
    """Open long-polls (watchers and Stop waiters) on the daemon."""
    return int(daemon.client().health(detailed=True)["waiters"])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_waiters(daemon: Daemon, count: int, timeout: float = 10.0) -> None:
    wait_until(lambda: waiters(daemon) == count, timeout, f"{count} waiter(s) on the daemon")


def mail_line(sender: str, body: str) -> str:
    """The seed's line for one message."""
    return f"[Claude-Mailbox] Mail from {sender}: {json.dumps(body, ensure_ascii=False)}"


def hook_env(daemon: Daemon, claude_pid: int) -> dict[str, str]:
    return plugin_env.hook_env(daemon.env(), url=daemon.url, claude_pid=claude_pid)


def hook(daemon: Daemon, event: str, payload: dict[str, object], claude_pid: int) -> plugin_env.HookRun:
    """Run the plugin's real hook command (hooks.json: the `hooks/run EVENT` launcher) with `payload`."""
    return plugin_env.run_hook(event, dict(payload), hook_env(daemon, claude_pid))


@dataclass(frozen=True)
class Session:
    session_id: str
    name: str
    claude_pid: int


def start_session(daemon: Daemon, claude_pid: int, source: str = "startup") -> Session:
    """A new session id through the real SessionStart hook; `source="clear"` is /clear's second half."""
    session_id = str(uuid.uuid4())
    payload = {"session_id": session_id, "hook_event_name": "SessionStart", "source": source, "cwd": str(REPO)}
    result = hook(daemon, "session-start", payload, claude_pid)
    assert result.returncode == 0, result.stderr
    name = daemon.client().call("GET", f"/v1/whoami?session={session_id}")["name"]
    return Session(session_id, str(name), claude_pid)


def end_session(daemon: Daemon, session: Session, reason: str = "other") -> None:
    payload = {"session_id": session.session_id, "hook_event_name": "SessionEnd", "reason": reason}
    result = hook(daemon, "session-end", payload, session.claude_pid)
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


def clear(daemon: Daemon, session: Session) -> Session:
    """What /clear does: SessionEnd (reason clear), then SessionStart (source clear) with a new id."""
    end_session(daemon, session, "clear")
    return start_session(daemon, session.claude_pid, source="clear")


@contextlib.contextmanager
def fake_claude_process() -> Iterator[int]:
    """A live process standing in for Claude Code (the pid the hooks report): plugin_env.FakeClaude."""
    claude = plugin_env.FakeClaude()
    try:
        yield claude.pid
    finally:
        claude.kill()
