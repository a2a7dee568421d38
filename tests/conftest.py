"""Shared fixtures: every test gets its own data dir, and integration tests get a real daemon
process on a free loopback port talking to a real SQLite file."""

from __future__ import annotations

import _socket
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgkit
import tiers
from claude_code import require_claude
from harness import Daemon, InProcessDaemon, in_process_daemon


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test gets its tier's marker (tests/tiers.py): `scripts/check --fast` runs `-m inprocess`."""
    tiers.apply(items)


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


@pytest.fixture
def daemon(mailbox_home: Path) -> Iterator[Daemon]:
    with Daemon(mailbox_home) as running:  # Daemon's context manager: start, then stop
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for a whole module (tests keep apart by their own mailbox names); its output goes
    to `daemon.log` in its data dir, which `.log()` reads (e.g. for tracebacks after fuzzing)."""
    home = tmp_path_factory.mktemp("server-home")
    with Daemon(home, log_path=home / "daemon.log") as running:
        yield running


@pytest.fixture
def claude_bin() -> Path:
    """The pinned Claude Code CLI (tests/claude_code.py): a failure under CI where it is missing, else a skip."""
    return require_claude()


@pytest.fixture(scope="session")
def pg_server() -> pgkit.PgServer:
    """One PostgreSQL server for the whole run (skipped where initdb/pg_ctl are not installed)."""
    if not pgkit.available():
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    return pgkit.shared_server()


@pytest.fixture
def pg_url(pg_server: pgkit.PgServer) -> str:
    """A fresh, empty database on the run's one PostgreSQL server."""
    return pg_server.fresh_database()


@pytest.fixture
def fake_claude() -> Iterator[int]:
    """The pid of a live process standing in for Claude Code (what CLAUDE_PID carries)."""
    from pushkit import fake_claude_process

    with fake_claude_process() as pid:
        yield pid


@pytest.fixture
def app_server(mailbox_home: Path) -> Iterator[InProcessDaemon]:
    """A fresh in-process app on the test's own data dir."""
    with in_process_daemon(mailbox_home) as running:
        yield running


@pytest.fixture(scope="module")
def app_module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    """One in-process app for a whole module (tests keep apart by their own mailbox names)."""
    with in_process_daemon(tmp_path_factory.mktemp("app-home")) as running:
        yield running


# --- the user's own daemon is out of bounds (issue 11.7) ------------------------------------------

USERS_DAEMON_PORT = 37849  # the default port: a real mailbox daemon may listen there while tests run
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


@pytest.fixture(autouse=True)
def never_the_users_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test whose process connects to the default port: it would read or change the mail of
    the user's running daemon. The connect is refused here too, so nothing reaches that daemon.
    (Subprocesses get a CLAUDE_MAILBOX_HOME of their own and a daemon on a free port instead.)"""
    attempts: list[object] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def forbidden(address: object) -> bool:
        hit = isinstance(address, tuple) and len(address) >= 2 and address[1] == USERS_DAEMON_PORT
        if hit and str(address[0]) in _LOOPBACK_NAMES:  # type: ignore[index]
            attempts.append(address)
            return True
        return False

    def connect(self: socket.socket, address: object) -> None:
        if forbidden(address):
            raise ConnectionRefusedError(f"tests may not connect to the user's daemon port {USERS_DAEMON_PORT}")
        real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        if forbidden(address):
            return errno.ECONNREFUSED
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    class RawSocket(_socket.socket):  # httpclient (the hooks' and CLI's HTTP) uses _socket directly
        def connect(self, address: object) -> None:  # type: ignore[override]
            if forbidden(address):
                raise ConnectionRefusedError(f"tests may not connect to the user's daemon port {USERS_DAEMON_PORT}")
            super().connect(address)  # type: ignore[arg-type]

        def connect_ex(self, address: object) -> int:  # type: ignore[override]
            return errno.ECONNREFUSED if forbidden(address) else super().connect_ex(address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(_socket, "socket", RawSocket)
    yield
    if attempts:
        pytest.fail(f"the test connected to the default daemon port {USERS_DAEMON_PORT}: {attempts}", pytrace=False)
