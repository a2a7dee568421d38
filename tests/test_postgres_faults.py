"""Several machines under faults (issue 25): two real daemons on one real PostgreSQL (tests/pgkit.py),
one of them killed while it holds leases; database URLs carrying a password; malformed URLs; a server
that accepts and never answers; the database going away under a running daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgkit
from faultkit import write_config
from harness import REPO, Daemon, base_env, free_port, run_cli, token_of
from pgkit import PgServer, SyncPgStore
from plugin_env import FakeClaude, run_hook, start_input
from pushkit import HOOK, hook_env, start_session, wait_waiters
from rawhttp import request

LEASE_SECONDS = 2


def _start_pair(tmp_path: Path, url: str) -> tuple[Daemon, Daemon]:
    """A and B (host ids a and b) on one database, lease_seconds = 2, sharing one token."""
    homes = []
    for host in ("a", "b"):
        home = tmp_path / f"machine-{host}"
        home.mkdir()
        write_config(home, database_url=url, host_id=host, lease_seconds=LEASE_SECONDS)
        homes.append(home)
    a = Daemon(homes[0], log_path=homes[0] / "daemon.log").start()
    shutil.copy(homes[0] / "token", homes[1] / "token")
    b = Daemon(homes[1], log_path=homes[1] / "daemon.log").start()
    return a, b


@pytest.fixture
def pair(tmp_path: Path, pg_url: str) -> Iterator[tuple[Daemon, Daemon]]:
    a, b = _start_pair(tmp_path, pg_url)
    try:
        yield a, b
    finally:
        for daemon in (a, b):
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()


# --- 1. a lease that runs out on a dead daemon ----------------------------------------------------


def test_leases_of_a_killed_daemon_wake_a_watch_and_a_stop_hook_on_the_other(
    pair: tuple[Daemon, Daemon], pg_url: str
) -> None:
    """A takes (and never acknowledges) 5 messages for a watcher's mailbox and 3 for a collaborating
    session's, a `watch --block` and the session's Stop hook wait on B, A is killed -9: both wake
    within 3 s of the expiry with their mail, and each message is delivered exactly once."""
    a, b = pair
    claude = FakeClaude()
    try:
        session = start_session(b, claude.pid)
        collaborate = run_cli("collaborate", "on", "--session", session.session_id, env=b.env())
        assert collaborate.returncode == 0, collaborate.stderr
        watched = [a.client().send("alice", "watched", f"w{i}")["id"] for i in range(5)]
        hooked = [a.client().send("alice", session.name, f"s{i}")["id"] for i in range(3)]
        for name, ids in (("watched", watched), (session.name, hooked)):
            taken = a.client().check(name, manual=True)
            assert [m["id"] for m in taken["messages"]] == ids
        expires_at = time.monotonic() + LEASE_SECONDS  # the later of the two leases, at the latest
        watch = subprocess.Popen(
            [sys.executable, "-m", "claude_mailbox", "watch", "--block", "--name", "watched", "--timeout", "20"],
            env=b.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stop = subprocess.Popen(
            [str(HOOK), "stop"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=hook_env(b, claude.pid),
            text=True,
        )
        assert stop.stdin is not None
        stop.stdin.write(json.dumps({"session_id": session.session_id, "hook_event_name": "Stop"}))
        stop.stdin.close()
        stop.stdin = None
        wait_waiters(b, 2)  # both wait on B, and A's leases still hold the mail
        os.kill(a.pid, signal.SIGKILL)
        a.process.wait(10)  # type: ignore[union-attr]
        woke: dict[str, float] = {}

        def finish(name: str, process: subprocess.Popen[str]) -> tuple[int, str, str]:
            out, err = process.communicate(timeout=expires_at + 8 - time.monotonic())
            woke[name] = time.monotonic() - expires_at
            return process.returncode, out, err

        watch_code, watch_out, watch_err = finish("watch", watch)
        stop_code, stop_out, stop_err = finish("stop", stop)
        assert watch_code == 0, watch_err
        assert [json.loads(line.split(": ", 1)[1]) for line in watch_out.splitlines()][:1] == ["w0"]
        assert stop_code == 2, (stop_out, stop_err)
        assert [json.loads(line.split(": ", 1)[1]) for line in stop_err.splitlines()[1:]] == ["s0", "s1", "s2"]
        assert max(woke.values()) < 3.0, f"woke {woke} s after the lease expired (watch timeout 20 s, Stop 60 s)"
        # Exactly once: whatever the watch did not print is still pending, nothing is leased twice.
        rest = b.client().check("watched")["messages"]
        printed = len(watch_out.splitlines())
        assert [m["body"] for m in rest] == [f"w{i}" for i in range(printed, 5)]
        assert b.client().check(session.name)["messages"] == []
        store = SyncPgStore(pg_url)
        try:
            mine = [m for m in store.all_messages() if m.id in watched + hooked]
            assert len(mine) == 8 and all(m.delivered_at for m in mine)
            assert store.sql("SELECT count(*) FROM leases") == [(0,)]
        finally:
            store.close()
    finally:
        claude.kill()


def test_two_daemons_sweeping_at_once_return_each_expired_lease_once_in_bounded_batches(pg_url: str) -> None:
    import asyncio

    from claude_mailbox.model import LeaseTerms, SendRequest

    first, second = SyncPgStore(pg_url), SyncPgStore(pg_url)
    try:
        boxes = [f"box{i:02d}" for i in range(40)]
        for box in boxes:
            first.send(SendRequest("alice", box, f"for {box}"))
            assert first.lease(box, LeaseTerms(lease_seconds=0.05)).id is not None
        live = first.send(SendRequest("alice", "kept", "under a live lease")).message
        assert first.lease("kept", LeaseTerms(lease_seconds=60)).id is not None
        time.sleep(0.1)
        assert len(first.expire_leases(limit=5)) == 5  # one statement returns at most `limit`

        async def both() -> list[list[str]]:
            return list(
                await asyncio.gather(
                    *(store.async_store.expire_leases(limit=100) for store in (first, second, first, second))
                )
            )

        returned = first._loop.run(both())
        swept = [box for batch in returned for box in batch]
        assert len(swept) == len(set(swept)) == 35  # each lease went back exactly once, whoever won it
        assert first.sql("SELECT mailbox FROM leases") == [("kept",)]
        assert first.sql("SELECT count(*) FROM messages WHERE lease_id IS NOT NULL AND id <> $1", live.id) == [(0,)]
        assert second.expire_leases() == []
    finally:
        first.close()
        second.close()


# --- 2. credentials in the URL ----------------------------------------------------------------------


def test_a_password_in_the_url_query_shows_nowhere(tmp_path: Path, pg_server: PgServer) -> None:
    """`?user=...&password=...` works, and neither /health (without the token: no URL at all; with it:
    the URL without the password), the start-up line, `status` nor an error names the password."""
    database = pg_server.fresh_database().rsplit("/", 1)[1]
    secret = "Pw-9f3e1c"
    url = f"postgresql://127.0.0.1:{pg_server.port}/{database}?user={pg_server.user}&password={secret}&sslmode=disable"
    shown = f"postgresql://127.0.0.1:{pg_server.port}/{database}?user={pg_server.user}&sslmode=disable"
    home = tmp_path / "home"
    home.mkdir()
    write_config(home, database_url=url)
    daemon = Daemon(home, log_path=home / "daemon.log").start()
    try:
        daemon.client().send("alice", "bob", "through a URL with a password")
        public = request(daemon.url, "GET", "/health", auth=False)
        assert public.status == 200 and set(public.json) == {"status", "version"}  # no URL at all (20.8)
        assert "postgresql://" not in public.body.decode() and secret not in public.body.decode()
        trusted = request(daemon.url, "GET", "/health", headers={"Authorization": f"Bearer {token_of(home)}"})
        assert trusted.json["database"] == shown
        status = run_cli("status", env=daemon.env())
        assert status.returncode == 0, status.stderr
        assert f"{shown}  (PostgreSQL)" in status.stdout and secret not in status.stdout
        assert f"(database {shown})" in daemon.log()
    finally:
        daemon.stop()
    assert secret not in daemon.log()
    # Refused logins and unreachable servers: the error names the URL without the password.
    for wrong in (
        f"postgresql://127.0.0.1:{free_port()}/x?user=u&password={secret}",
        f"postgresql://u:{secret}@127.0.0.1:{free_port()}/x",
    ):
        write_config(home, database_url=wrong, database_connect_timeout_seconds=3)
        served = run_cli("serve", "--port", str(free_port()), env=base_env(home), timeout=30)
        assert served.returncode == 1
        assert "cannot connect to PostgreSQL at postgresql://" in served.stderr
        assert secret not in served.stderr + served.stdout and "Traceback" not in served.stderr


# --- 3. malformed URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://u:pw-secret@127.0.0.1:notaport/db", "has port 'notaport'"),
        ("postgresql://u:pw-secret@127.0.0.1:99999/db", "has port '99999'"),
        ("postgresql://u:pw-secret@[::1/db", "has a malformed host"),
    ],
)
def test_a_malformed_url_is_refused_by_serve_in_one_line(tmp_path: Path, url: str, words: str) -> None:
    for args, config in ((("--database-url", url), None), ((), url)):
        home = tmp_path / f"home-{bool(config)}"
        home.mkdir()
        if config:
            write_config(home, database_url=config)
        served = run_cli("serve", "--port", str(free_port()), *args, env=base_env(home), timeout=30)
        assert served.returncode != 0
        lines = served.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], served.stderr
        assert "pw-secret" not in served.stderr and "Traceback" not in served.stderr


# --- 4. a server that accepts and never answers ---------------------------------------------------


def test_a_listening_but_silent_port_is_refused_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        port = silent.getsockname()[1]
        home = tmp_path / "home"
        home.mkdir()
        write_config(home, database_url=f"postgresql://u@127.0.0.1:{port}/db", database_connect_timeout_seconds=2)
        started = time.monotonic()
        served = run_cli("serve", "--port", str(free_port()), env=base_env(home), timeout=60)
        took = time.monotonic() - started
    assert served.returncode == 1
    assert served.stderr.strip() == (
        f"claude-mailbox: cannot connect to PostgreSQL at postgresql://u@127.0.0.1:{port}/db: the connection "
        "and login got no answer within 2 s (database_connect_timeout_seconds)"
    )
    assert took < 12, f"serve took {took:.1f} s to give up (timeout 2 s)"


# --- 5. the database away under a running daemon -----------------------------------------------------


@pytest.mark.slow
def test_session_start_and_status_say_when_the_database_is_unreachable(tmp_path: Path) -> None:
    server: PgServer = pgkit.start()  # its own server: this test stops it
    try:
        url = server.fresh_database()
        home = tmp_path / "home"
        home.mkdir()
        write_config(home, database_url=url)
        daemon = Daemon(home, log_path=home / "daemon.log").start()
        claude = FakeClaude()
        try:
            server.pg_ctl("stop", "-m", "fast", "-w")
            started = run_hook(
                "SessionStart",
                start_input("4b1d0c2e-0000-4000-8000-000000000001", str(REPO)),
                hook_env(daemon, claude.pid),
            )
            assert started.returncode == 0, started.stderr
            context = started.context
            assert "\n" not in context and context.startswith("claude-mailbox: mail is unavailable right now")
            assert "cannot reach its database" in context and "mcp__" not in context
            status = run_cli("status", env=daemon.env())
            assert status.returncode == 0, status.stderr
            (line,) = [line for line in status.stdout.splitlines() if line.strip().startswith("database")]
            assert "UNREACHABLE" in line and "PostgreSQL" in line
        finally:
            claude.kill()
            daemon.stop()
    finally:
        server.stop()
