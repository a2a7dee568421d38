"""Shared fixtures: every test gets its own data dir, and integration tests get a real daemon
process on a free loopback port talking to a real SQLite file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import MailboxError

REPO = Path(__file__).resolve().parent.parent
DAEMON_START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CLAUDE_", "COV_"))}
    env["CLAUDE_MAILBOX_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO / "daemon")
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def mailbox_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test touches the real ~/.claude-mailbox, and no Claude Code variable leaks in."""
    home = tmp_path / "mailbox-home"
    home.mkdir()
    monkeypatch.setenv("CLAUDE_MAILBOX_HOME", str(home))
    for key in list(os.environ):
        if key.startswith("CLAUDE_") and key != "CLAUDE_MAILBOX_HOME":
            monkeypatch.delenv(key)
    return home


@dataclass
class Daemon:
    home: Path
    port: int
    args: tuple[str, ...] = ()
    env_extra: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.home / "mailbox.db"

    def client(self, timeout: float = 10.0) -> MailboxClient:
        return MailboxClient(self.url, timeout=timeout)

    def env(self) -> dict[str, str]:
        return base_env(self.home, CLAUDE_MAILBOX_URL=self.url, **self.env_extra)

    def start(self) -> Daemon:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "claude_mailbox", "serve", "--port", str(self.port), *self.args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                raise RuntimeError(f"daemon exited with {self.process.returncode}: {out}{err}")
            try:
                self.client(timeout=1.0).health()
                return self
            except MailboxError:
                time.sleep(0.05)
        raise RuntimeError("daemon did not answer /health in time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        code = self.process.returncode
        if self.process.stdout:
            self.process.stdout.close()
        if self.process.stderr:
            self.process.stderr.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Daemon:
        self.stop()
        return self.start()


def start_daemon(home: Path, *args: str, port: int | None = None, **env_extra: str) -> Daemon:
    return Daemon(home, port or free_port(), tuple(args), dict(env_extra)).start()


@pytest.fixture
def daemon(mailbox_home: Path) -> Iterator[Daemon]:
    running = start_daemon(mailbox_home)
    try:
        yield running
    finally:
        running.stop()


def run_cli(
    *args: str,
    env: dict[str, str],
    input: str | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """The CLI exactly as a user runs it: a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "claude_mailbox", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
