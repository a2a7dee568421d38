"""`claude-mailbox tail` and `open` as a user runs them: subprocesses against the real daemon.
tail follows mail as it is sent (woken by the daemon's long-poll answer) and never consumes."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from claude_mailbox import auth
from harness import Daemon, base_env, free_port, run_cli

SHOWN_WITHIN = 1.0  # seconds from send to the line on tail's stdout (issue 14)


class Tail:
    """A running `tail` whose stdout lines arrive on a queue."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "claude_mailbox", "tail", *args],
            env=daemon.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))

    def line(self, within: float) -> str:
        return self.lines.get(timeout=within)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def tails(daemon: Daemon) -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        tail.stop()


def wait_for_feed_waiter(daemon: Daemon, count: int = 1) -> None:
    """tail is following once its long-poll waits in the daemon (/health counts waiters)."""
    deadline = time.monotonic() + 15
    while daemon.client().health(detailed=True)["waiters"] < count:
        assert time.monotonic() < deadline, "tail never started its long-poll"
        time.sleep(0.02)


def test_tail_shows_a_send_within_a_second_and_consumes_nothing(daemon: Daemon, tails: list[Tail]) -> None:
    client = daemon.client()
    client.send("alice", "bob", "before tail started")
    tails.append(Tail(daemon))
    wait_for_feed_waiter(daemon)
    body = "line one\nline two \x1b[31mred\u202e"
    sent_at = time.monotonic()
    client.send("carol", "bob", body)
    line = tails[0].line(within=SHOWN_WITHIN)
    elapsed = time.monotonic() - sent_at
    assert elapsed < SHOWN_WITHIN
    # One line: time, sender -> recipient, the body JSON-quoted with every control escaped.
    created, rest = line.split(" ", 1)
    assert created.endswith("Z") and created[:4].isdigit()
    assert rest == 'carol -> bob: "line one\\nline two \\u001b[31mred\\u202e"  (unread)'
    assert "\x1b" not in line
    with pytest.raises(queue.Empty):  # mail from before the start is not replayed without --since
        tails[0].line(within=0.3)
    assert client.peek("bob")["pending"] == 2  # followed, not consumed


def test_tail_marks_urgent_mail(daemon: Daemon, tails: list[Tail]) -> None:
    client = daemon.client()
    client.send("boss", "bob", "stop now", urgent=True)
    client.send("alice", "bob", "whenever")
    tails.append(Tail(daemon, "--since", "10m"))
    urgent, ordinary = (tails[0].line(within=10).split(" ", 1)[1] for _ in range(2))
    assert (urgent, ordinary) == ('boss -> bob (urgent): "stop now"  (unread)', 'alice -> bob: "whenever"  (unread)')
    tails.append(Tail(daemon, "--since", "10m", "--json"))
    shown = [json.loads(tails[1].line(within=10)) for _ in range(2)]
    assert [m.get("urgent") for m in shown] == [True, None]


def test_tail_since_name_json(daemon: Daemon, tails: list[Tail]) -> None:
    client = daemon.client()
    client.send("alice", "bob", "one")
    client.send("carol", "dave", "not about bob")
    client.send("bob", "alice", "two")
    check = run_cli("check", "--name", "alice", env=daemon.env())
    assert check.returncode == 0 and '"two"' in check.stdout
    tails.append(Tail(daemon, "--since", "10m", "--name", "bob", "--json"))
    first, second = (json.loads(tails[0].line(within=10)) for _ in range(2))
    assert (first["from"], first["to"], first["body"], first["read"]) == ("alice", "bob", "one", False)
    assert (second["from"], second["to"], second["body"], second["read"]) == ("bob", "alice", "two", True)
    assert second["deliveredAt"] and first["deliveredAt"] is None
    wait_for_feed_waiter(daemon)
    client.send("erin", "frank", "still not about bob")
    client.send("erin", "bob", "three\u2028")
    third = tails[0].line(within=SHOWN_WITHIN + 1)
    assert '"three\\u2028"' in third  # --json escapes unsafe characters too (textsafe.dumps)
    assert json.loads(third)["body"] == "three\u2028"
    assert client.peek("bob")["pending"] == 2


def test_tail_without_a_daemon_exits_2(mailbox_home: object) -> None:
    env = base_env(mailbox_home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}")  # type: ignore[arg-type]
    result = run_cli("tail", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("claude-mailbox: ") and len(result.stderr.strip().splitlines()) == 1


def test_tail_rejects_a_bad_since(daemon: Daemon) -> None:
    result = run_cli("tail", "--since", "soon", env=daemon.env())
    assert result.returncode == 1 and "soon" in result.stderr


def test_open_prints_the_login_link(daemon: Daemon) -> None:
    result = run_cli("open", "--no-browser", env=daemon.env())
    assert result.returncode == 0, result.stderr
    token = auth.read_token(str(daemon.home))
    assert result.stdout.strip() == (f"{daemon.url}/#token={token}" if token else f"{daemon.url}/")
    down = base_env(daemon.home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}")
    assert run_cli("open", "--no-browser", env=down).returncode == 2
