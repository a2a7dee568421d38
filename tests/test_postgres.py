"""The store on PostgreSQL (issue 13): its migrations and concurrency on their own, then two real
daemons on two ports sharing one real database (started by tests/pgkit.py in a temporary directory,
as an unprivileged user when the tests run as root).

The contract both stores share is tests/test_store.py (parametrized over both); the REST, MCP and
hook suites run against PostgreSQL with MAILBOX_TEST_STORE=postgres (scripts/check does).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pgkit
from claude_mailbox.errors import DaemonError, MailboxError, StoreUnavailable
from claude_mailbox.model import IDEMPOTENCY_SECONDS, FeedFilter, LeaseTerms, SendRequest, iso_before
from faultkit import write_config
from harness import Daemon
from pgkit import PgServer, SyncPgStore
from pushkit import wait_waiters
from race_workers import INBOX
from racekit import PRODUCERS, check_exactly_once, run_race

# --- the store alone ---------------------------------------------------------------------------


@pytest.fixture
def pg(pg_url: str) -> Iterator[SyncPgStore]:
    store = SyncPgStore(pg_url)
    try:
        yield store
    finally:
        store.close()


def test_a_blank_database_gets_the_schema_and_its_version(pg: SyncPgStore) -> None:
    from claude_mailbox.pgstore import SCHEMA_VERSION

    assert pg.schema_version() == SCHEMA_VERSION
    assert pg.sql("SELECT version FROM mailbox_schema") == [(SCHEMA_VERSION,)]
    tables = {row[0] for row in pg.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"mailboxes", "messages", "sessions", "leases", "pending_counts", "idempotency"} <= tables


def test_opening_again_keeps_the_mail_and_changes_nothing(pg: SyncPgStore) -> None:
    sent = pg.send(SendRequest("alice", "bob", "kept")).message
    before = pg.sql("SELECT count(*) FROM pg_class")
    again = SyncPgStore(pg.url)
    try:
        assert again.peek("bob") == (1, sent.created_at)
        assert again.sql("SELECT version FROM mailbox_schema") == pg.sql("SELECT version FROM mailbox_schema")
        assert again.sql("SELECT count(*) FROM pg_class") == before
    finally:
        again.close()


def test_a_newer_schema_is_refused_with_a_clear_error(pg: SyncPgStore) -> None:
    pg.sql("UPDATE mailbox_schema SET version = 99 RETURNING version")
    with pytest.raises(MailboxError) as refused:
        SyncPgStore(pg.url)
    assert "newer claude-mailbox (schema 99)" in refused.value.message


def build_old_numbered(url: str, old: int) -> None:
    """A database as pgstore left it before the shared schema list: its own version 1 (SQLite's steps
    1-3 in one script) or 2 (plus sqlite_imports, without the thread index), with mail."""
    from claude_mailbox import pgstore

    async def build() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute(pgstore._MIGRATIONS[3])
                if old == 2:
                    await conn.execute(pgstore._MIGRATIONS[5])
                    await conn.execute(
                        "INSERT INTO sqlite_imports (import_id, source, host, imported_at)"
                        " VALUES ('i-1', '/old/mailbox.db', 'laptop', '2025-06-01T00:00:00.000Z')"
                    )
                await conn.execute("CREATE TABLE mailbox_schema (version INTEGER NOT NULL)")
                await conn.execute("INSERT INTO mailbox_schema (version) VALUES ($1)", old)
                await conn.execute(
                    "INSERT INTO messages (sender, recipient, body, created_at, chars, quoted)"
                    " VALUES ('alice', 'bob', 'old mail', '2025-06-01T00:00:00.000Z', 8, 10)"
                )
        finally:
            await conn.close()

    asyncio.run(build())


@pytest.mark.parametrize("old", [1, 2])
def test_a_database_of_the_old_numbering_takes_the_shared_one(pg_url: str, old: int) -> None:
    """Old 1 is the shared 3, old 2 the shared 3 and 5: both gain step 4's thread index, then step 6."""
    from claude_mailbox.pgstore import SCHEMA_VERSION

    build_old_numbered(pg_url, old)
    store = SyncPgStore(pg_url)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 6
        assert store.sql("SELECT version FROM mailbox_schema") == [(6,)]
        assert store.sql("SELECT indexname FROM pg_indexes WHERE indexname = 'messages_thread'") == [
            ("messages_thread",)
        ]
        assert store.sql("SELECT import_id FROM sqlite_imports") == ([("i-1",)] if old == 2 else [])
        assert store.peek("bob") == (1, "2025-06-01T00:00:00.000Z")
        thread = store.feed(None, 10, FeedFilter(name="bob", peer="alice"))[0]
        assert [message.body for message in thread] == ["old mail"]
        assert store.send(SendRequest("alice", "bob", "new mail")).message.id == 2
    finally:
        store.close()
    again = SyncPgStore(pg_url)  # opening again changes nothing
    try:
        assert again.sql("SELECT version FROM mailbox_schema") == [(6,)]
        assert again.peek("bob")[0] == 2
    finally:
        again.close()


def test_daemons_starting_together_migrate_once(pg_url: str) -> None:
    stores: list[SyncPgStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(SyncPgStore(pg_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors
        assert stores[0].sql("SELECT count(*) FROM mailbox_schema") == [(1,)]
    finally:
        for store in stores:
            store.close()


def test_concurrent_leases_from_two_stores_never_share_a_message(pg: SyncPgStore) -> None:
    """SKIP LOCKED with the lease on the row: 8 readers over two pools, each message in one lease."""
    other = SyncPgStore(pg.url)
    try:
        ids = {pg.send(SendRequest("alice", "bob", f"m{i}")).message.id for i in range(200)}

        async def reader(store: Any) -> list[int]:
            taken: list[int] = []
            while True:
                lease = await store.lease("bob", LeaseTerms(lease_seconds=60, limit=3))
                if lease.id is None:
                    return taken
                taken.extend(message.id for message in lease.messages)
                assert await store.ack("bob", lease.id) == len(lease.messages)

        async def race() -> list[list[int]]:
            readers = [reader(pg.async_store if i % 2 else other.async_store) for i in range(8)]
            return list(await asyncio.gather(*readers))

        got = pg._loop.run(race())
        flat = [message_id for taken in got for message_id in taken]
        assert sorted(flat) == sorted(ids), "lost or duplicated"
        assert sum(1 for taken in got if taken) >= 2
        assert pg.peek("bob") == (0, None) and pg.pending_counts() == {}
    finally:
        other.close()


def test_a_key_retried_through_two_daemons_at_once_stores_one_message(pg: SyncPgStore) -> None:
    other = SyncPgStore(pg.url)
    try:

        async def both() -> list[Any]:
            sends = [
                store.send(SendRequest("alice", "bob", "once", idempotency_key="retry-1"))
                for store in (pg.async_store, other.async_store) * 4
            ]
            return list(await asyncio.gather(*sends))

        results = pg._loop.run(both())
        assert len({sent.message.id for sent in results}) == 1
        assert sum(not sent.repeated for sent in results) == 1
        assert pg.peek("bob")[0] == 1
    finally:
        other.close()


def test_idempotency_keys_expire_after_24_hours(pg: SyncPgStore) -> None:
    first = pg.send(SendRequest("alice", "bob", "once", idempotency_key="k"))
    pg.sql("UPDATE idempotency SET created_at = $1 RETURNING 1", iso_before(IDEMPOTENCY_SECONDS + 60))
    later = pg.send(SendRequest("alice", "bob", "once", idempotency_key="k"))
    assert not later.repeated and later.message.id != first.message.id
    assert pg.sql("SELECT message_id FROM idempotency") == [(later.message.id,)]


def test_an_unreachable_server_is_a_clear_store_error() -> None:
    from harness import free_port

    with pytest.raises(StoreUnavailable) as caught:
        SyncPgStore(f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none")
    assert "cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1" in caught.value.message
    assert "secret" not in caught.value.message  # the password never reaches a message


# --- two daemons, one database -----------------------------------------------------------------


def _pair_homes(tmp_path: Path, url: str, **settings: Any) -> tuple[Path, Path]:
    """Two data dirs (two machines): A names the database in config.toml, B on the command line;
    both carry the same token, as a user copies it to each machine."""
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    for home in (a, b):
        home.mkdir()
    write_config(a, database_url=url, lease_seconds=2, rate_limit_per_minute=100_000_000, **settings)
    write_config(b, lease_seconds=2, rate_limit_per_minute=100_000_000, **settings)
    return a, b


@pytest.fixture
def pair(tmp_path: Path, pg_url: str) -> Iterator[tuple[Daemon, Daemon]]:
    home_a, home_b = _pair_homes(tmp_path, pg_url)
    a = Daemon(home_a, log_path=home_a / "daemon.log", args=()).start()
    shutil.copy(home_a / "token", home_b / "token")
    b = Daemon(home_b, log_path=home_b / "daemon.log", args=("--database-url", pg_url)).start()
    try:
        yield a, b
    finally:
        for daemon in (a, b):
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()


def test_mail_sent_through_a_is_read_through_b_exactly_once(pair: tuple[Daemon, Daemon]) -> None:
    a, b = pair
    sent = [a.client().send("alice", "bob", f"hello {i}")["id"] for i in range(5)]
    assert b.client().peek("bob")["pending"] == 5
    got = b.client().check("bob")
    assert [m["id"] for m in got["messages"]] == sent
    assert [m["body"] for m in got["messages"]] == [f"hello {i}" for i in range(5)]
    assert a.client().check("bob")["messages"] == [] and b.client().check("bob")["messages"] == []
    names = {box["name"] for box in a.client().list()["mailboxes"]}
    assert {"alice", "bob"} <= names
    for daemon in pair:
        assert "(database postgresql://" in daemon.log()  # the start line names the database
        plain = daemon.client().health()  # without the token: status and version, no URL (issues 20.8, 25)
        assert "database" not in plain and plain["status"] == "ok"
        health = daemon.client().health(detailed=True)
        assert health["database"].startswith("postgresql://") and "dbPath" not in health  # no SQLite file to name
    status = subprocess.run(
        [sys.executable, "-m", "claude_mailbox", "status", "--url", a.url],
        env=a.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    assert "(PostgreSQL)" in status.stdout and "mailbox.db" not in status.stdout


def test_a_watcher_on_b_wakes_on_a_send_through_a(pair: tuple[Daemon, Daemon]) -> None:
    """LISTEN/NOTIFY: B's long-poll returns as soon as A commits, not at its timeout."""
    a, b = pair
    result: dict[str, Any] = {}

    def watch() -> None:
        started = time.perf_counter()
        result["answer"] = b.client(timeout=30).watch("carol", 20)
        result["seconds"] = time.perf_counter() - started

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_waiters(b, 1)  # registered on B: the mail must come to it through the database, not be pending
    sent_at = time.perf_counter()
    a.client().send("alice", "carol", "wake up")
    watcher.join(30)
    woke_after = time.perf_counter() - sent_at
    assert [m["body"] for m in result["answer"]["messages"]] == ["wake up"]
    assert woke_after < 2.0, f"woke {woke_after:.2f} s after the send (timeout 20 s)"


def test_a_lease_that_runs_out_on_a_wakes_a_watcher_on_b(pair: tuple[Daemon, Daemon]) -> None:
    """Mail taken through A and never acknowledged comes back when the lease (2 s) runs out; B's
    long-poll hears of it through the database then, not at its own timeout."""
    a, b = pair
    a.client().send("alice", "erin", "taken, never acknowledged")
    taken = a.client().check("erin", manual=True)
    assert [m["body"] for m in taken["messages"]] == ["taken, never acknowledged"]
    taken_at = time.perf_counter()
    result: dict[str, Any] = {}

    def watch() -> None:
        result["answer"] = b.client(timeout=30).watch("erin", 20)
        result["seconds"] = time.perf_counter() - taken_at

    watcher = threading.Thread(target=watch)
    watcher.start()
    watcher.join(30)
    messages = result["answer"]["messages"]
    assert [m["body"] for m in messages] == ["taken, never acknowledged"]
    assert messages[0]["redelivered"] is True
    assert result["seconds"] < 6.0, f"B woke {result['seconds']:.2f} s after the take (lease 2 s, timeout 20 s)"


def test_kill_9_of_one_daemon_loses_nothing_and_the_other_keeps_serving(pair: tuple[Daemon, Daemon]) -> None:
    a, b = pair
    sent = [a.client().send("alice", "dave", f"m{i}")["id"] for i in range(10)]
    page = a.client().check("dave", manual=True)  # taken through A, never acknowledged
    assert [m["id"] for m in page["messages"]] == sent
    os.kill(a.pid, signal.SIGKILL)
    a.process.wait(10)  # type: ignore[union-attr]
    more = b.client().send("erin", "dave", "after the kill")["id"]
    assert b.client().check("dave")["messages"][0]["id"] == more  # A's lease still holds the ten
    time.sleep(2.2)  # lease_seconds = 2: the dead daemon's lease expires
    back = b.client().check("dave")
    assert [m["id"] for m in back["messages"]] == sent
    assert all(m.get("redelivered") for m in back["messages"])
    assert b.client().peek("dave")["pending"] == 0


# --- presence across machines ---------------------------------------------------------------------


def _session_on(daemon: Daemon, session_id: str, claude_pid: int) -> str:
    """Register a session as its SessionStart hook does; the context Claude Code would get."""
    from plugin_env import start_input
    from rawhttp import request

    reply = request(
        daemon.url,
        "POST",
        "/v1/hooks/session-start",
        json_body=start_input(session_id, "/p/remote"),
        headers={"X-Mailbox-Claude-Pid": str(claude_pid)},
    )
    assert reply.status == 200, reply.body
    return str(reply.json["hookSpecificOutput"]["additionalContext"])


def _listed(daemon: Daemon, session_id: str) -> dict[str, Any]:
    boxes = daemon.client().list()["mailboxes"]
    return next(box for box in boxes if box["name"].endswith(session_id[:8]))


def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_each_host_judges_its_own_sessions_and_a_silent_host_leaves_them_unknown(tmp_path: Path, pg_url: str) -> None:
    """Two daemons with host ids host-a and host-b: a session registered through A is listed by B with
    its host; when its process ends, A (the only one that can check that pid) ends it; when A stops
    heartbeating (kill -9), B lists A's open sessions as unknown, not dead."""
    import uuid

    from claude_mailbox.pgstore import HEARTBEAT_SECONDS
    from claude_mailbox.service import HOST_SILENT_SECONDS
    from plugin_env import FakeClaude

    home_a, home_b = _pair_homes(tmp_path, pg_url)
    for home, host in ((home_a, "host-a"), (home_b, "host-b")):
        with (home / "config.toml").open("a") as config:
            config.write(f'host_id = "{host}"\n')
    a = Daemon(home_a, log_path=home_a / "daemon.log").start()
    shutil.copy(home_a / "token", home_b / "token")
    b = Daemon(home_b, log_path=home_b / "daemon.log", args=("--database-url", pg_url)).start()
    first, second = FakeClaude(), FakeClaude()
    try:
        ending, staying = str(uuid.uuid4()), str(uuid.uuid4())
        _session_on(a, ending, first.pid)
        _session_on(a, staying, second.pid)
        row = _listed(b, ending)
        assert (row["host"], row["state"], row["alive"]) == ("host-a", "alive", True)
        here = FakeClaude()
        try:
            context = _session_on(b, str(uuid.uuid4()), here.pid)  # a session on B sees A's, and where
        finally:
            here.kill()
        assert f'{row["name"]} (running, project "/p/remote", on "host-a")' in context
        first.kill()  # only A can tell: the pid means nothing to B
        assert _until(lambda: _listed(b, ending)["state"] == "ended", HEARTBEAT_SECONDS + 3)
        assert _listed(b, staying)["state"] == "alive"
        os.kill(a.pid, signal.SIGKILL)
        a.process.wait(10)  # type: ignore[union-attr]
        assert _until(lambda: _listed(b, staying)["state"] == "unknown", HOST_SILENT_SECONDS + HEARTBEAT_SECONDS + 3)
        row = _listed(b, staying)
        assert row["alive"] is False and row["host"] == "host-a"
        here = FakeClaude()
        try:
            context = _session_on(b, str(uuid.uuid4()), here.pid)  # a starting session still hears of it
        finally:
            here.kill()
        assert "Sessions on a machine whose daemon stopped answering:" in context
        assert f'{row["name"]} (state unknown, mail waits until it reads, project "/p/remote", on "host-a")' in context
        b.client().send("anyone", row["name"], "still reachable when A comes back")  # sending still works
    finally:
        first.kill()
        second.kill()
        for daemon in (a, b):
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()


# --- 8 consumer processes over both daemons --------------------------------------------------------

PER_PRODUCER = 400


@pytest.mark.slow
def test_eight_consumers_over_both_daemons_lose_nothing_and_duplicate_nothing(
    pair: tuple[Daemon, Daemon], tmp_path: Path, pg_url: str
) -> None:
    result = run_race([(daemon.home, daemon.url) for daemon in pair], "rest", tmp_path / "work", PER_PRODUCER)
    sent = check_exactly_once(result, PRODUCERS * PER_PRODUCER)
    store = SyncPgStore(pg_url)
    try:
        mine = [m for m in store.all_messages() if m.recipient == INBOX]
        assert {m.id for m in mine} == set(sent) and all(m.delivered_at for m in mine)
        assert store.peek(INBOX) == (0, None)
    finally:
        store.close()


# --- a lost database connection ------------------------------------------------------------------


@pytest.mark.slow
def test_a_lost_database_is_a_503_and_the_daemon_reconnects(tmp_path: Path) -> None:
    """The server stops under a running daemon: requests get a clear 503 (not a crash, not a hang),
    /health still answers; once the server is back, the same daemon serves again without a restart."""
    server: PgServer = pgkit.start()  # its own server: this test stops it
    try:
        url = server.fresh_database()
        home = tmp_path / "home"
        home.mkdir()
        write_config(home, database_url=url)
        daemon = Daemon(home, log_path=home / "daemon.log").start()
        try:
            client = daemon.client()
            client.send("alice", "bob", "before")
            server.pg_ctl("stop", "-m", "fast", "-w")
            with pytest.raises(DaemonError) as down:
                client.send("alice", "bob", "while down")
            assert down.value.http_status == 503
            assert down.value.code == "database_unavailable"
            assert "PostgreSQL" in down.value.message
            assert daemon.client().health()["status"] == "ok"
            server.pg_ctl(
                "start",
                "-w",
                "-o",
                f"-p {server.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={server.socket_dir}",
                "-l",
                str(server.root / "log"),
            )
            for _ in range(50):
                try:
                    client.send("alice", "bob", "after")
                    break
                except DaemonError:
                    time.sleep(0.1)
            assert [m["body"] for m in client.check("bob")["messages"]] == ["before", "after"]
        finally:
            daemon.stop()
    finally:
        server.stop()
