"""Every file the daemon writes is 0600, wherever `db_path` points (issue 20.2): a real detached
daemon (it writes its own log and pid file) on a database in a 0755 directory outside the data dir,
then a restart that tightens files an older version left 0644."""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_mailbox import paths
from claude_mailbox.setup import autostart
from harness import free_port, token_of
from rawhttp import request

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """The usual login umask, whatever the test runner has: the daemon must not rely on it."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _start(port: int, db_path: Path) -> str:
    autostart.start_detached(Path(sys.executable), ("--port", str(port), "--db-path", str(db_path)))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if request(url, "GET", "/health", auth=False).status == 200 and paths.url_file().exists():
                return url
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(paths.log_file().read_text())


def _send(url: str, home: Path) -> None:
    headers = {"X-Mailbox": "modes-a", "Authorization": f"Bearer {token_of(home)}"}
    reply = request(url, "POST", "/v1/send", json_body={"to": "modes-b", "body": "secret"}, headers=headers)
    assert reply.status == 201, reply.body


def test_every_file_the_daemon_writes_is_private_wherever_db_path_points(
    mailbox_home: Path, tmp_path: Path, wide_umask: None
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)  # a directory other users can list and read
    db = shared / "mailbox.db"
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), paths.log_file(), paths.pid_file(), paths.url_file()]
    files.append(mailbox_home / "token")
    port = free_port()
    url = _start(port, db)
    try:
        _send(url, mailbox_home)
        assert {str(f): oct(_mode(f)) for f in files} == {str(f): "0o600" for f in files}
    finally:
        assert autostart.stop()

    # An older version left them 0644 (the url file goes with the stop; the rest stays): a start tightens them.
    for path in files:
        if path.exists():
            os.chmod(path, 0o644)
    url = _start(port, db)
    try:
        _send(url, mailbox_home)
        assert {str(f): oct(_mode(f)) for f in files} == {str(f): "0o600" for f in files}
    finally:
        assert autostart.stop()
