"""The store on its own: migrations (blank, older, newer database; idempotent), consume semantics,
aliases, presence, the pending index, and prune. Real SQLite files in a temporary folder."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from claude_mailbox.errors import LeaseNotFound, MailboxError, MailboxFull
from claude_mailbox.hooktext import render_message
from claude_mailbox.model import (
    IDEMPOTENCY_SECONDS,
    FeedFilter,
    Lease,
    LeaseTerms,
    Message,
    Registration,
    SendRequest,
    iso_before,
    latest_schema,
    now_iso,
)
from claude_mailbox.store import MIGRATIONS, SCHEMA_VERSION, Store
from pgkit import SyncPgStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "mailbox.db"


# Tests that take `store` run against both stores (issue 13): SQLite, and PostgreSQL through
# pgkit.SyncPgStore (the same calls). SQLite-only tests (pragmas, files, query plans) say so.
sqlite_only = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, db_path: Path) -> Iterator[Store]:
    opened: Any
    if request.param == "postgres":
        opened = SyncPgStore(request.getfixturevalue("pg_server").fresh_database())
    else:
        opened = Store(db_path)
    try:
        yield opened
    finally:
        opened.close()


def schema_snapshot(path: Path) -> tuple[int, list[tuple[Any, ...]]]:
    """user_version and every schema object, read on a separate raw connection."""
    db = apsw.Connection(str(path))
    try:
        version = db.execute("PRAGMA user_version").fetchall()[0][0]
        objects = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        return version, objects
    finally:
        db.close()


def send(store: Store, sender: str, recipient: str, body: str, **options: Any) -> Message:
    return store.send(SendRequest(sender, recipient, body, **options)).message


def take(store: Store, name: str, **options: Any) -> Lease:
    """Lease and acknowledge at once: what a reader that got its answer does."""
    lease = store.lease(name, LeaseTerms(lease_seconds=60, **options))
    if lease.id is not None:
        assert store.ack(name, lease.id) == len(lease.messages)
    return lease


def raw_rows(path: Path, sql: str, bindings: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = apsw.Connection(str(path))
    try:
        return db.execute(sql, bindings).fetchall()
    finally:
        db.close()


def build_version_1_db(path: Path) -> None:
    """A database as the first schema version left it: only MIGRATIONS[0], user_version 1, with mail."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = apsw.Connection(str(path))
    try:
        db.execute("PRAGMA journal_mode=WAL").fetchall()
        MIGRATIONS[0](db)
        db.execute("PRAGMA user_version=1")
        db.execute(
            "INSERT INTO mailboxes (name, created_at, last_seen) VALUES"
            " ('alice', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z'),"
            " ('bob', '2025-01-01T00:00:00.000Z', '2025-01-02T00:00:00.000Z')"
        )
        db.execute(
            "INSERT INTO messages (sender, recipient, body, created_at, delivered_at) VALUES"
            " ('alice', 'bob', 'old and read', '2025-01-01T00:00:01.000Z', '2025-01-01T00:00:02.000Z'),"
            " ('alice', 'bob', 'old and unread', '2025-01-01T00:00:03.000Z', NULL)"
        )
    finally:
        db.close()


# --- migrations ---------------------------------------------------------------------------------


def test_blank_database_gets_the_whole_schema(db_path: Path) -> None:
    Store(db_path).close()
    version, objects = schema_snapshot(db_path)
    assert version == SCHEMA_VERSION == latest_schema("sqlite")  # SQLite skips step 5 (PostgreSQL only)
    tables = {name for kind, name, _, _ in objects if kind == "table"}
    indexes = {name for kind, name, _, _ in objects if kind == "index" and not name.startswith("sqlite_autoindex")}
    assert {"mailboxes", "messages", "sessions"} <= tables
    assert {"messages_pending", "messages_delivered", "sessions_pid", "sessions_mailbox"} <= indexes
    pending_sql = next(sql for kind, name, _, sql in objects if name == "messages_pending")
    assert "WHERE delivered_at IS NULL" in pending_sql  # partial: only undelivered mail is indexed
    assert raw_rows(db_path, "PRAGMA journal_mode")[0][0] == "wal"


def test_older_database_is_upgraded_and_keeps_its_data(db_path: Path) -> None:
    build_version_1_db(db_path)
    assert schema_snapshot(db_path)[0] == 1
    store = Store(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        messages = store.all_messages()
        assert [(m.sender, m.recipient, m.body) for m in messages] == [
            ("alice", "bob", "old and read"),
            ("alice", "bob", "old and unread"),
        ]
        assert messages[0].delivered_at == "2025-01-01T00:00:02.000Z"
        assert messages[1].delivered_at is None
        assert store.peek("bob") == (1, "2025-01-01T00:00:03.000Z")
        boxes = {box.name: box for box in store.mailboxes()}
        assert set(boxes) == {"alice", "bob"}
        assert boxes["bob"].last_seen == "2025-01-02T00:00:00.000Z"
        assert boxes["bob"].alias_of is None  # the column migration 2 added
        # The upgraded database works: the old pending message is consumed, new ids follow the old ones.
        consumed = take(store, "bob")
        assert [m.body for m in consumed.messages] == ["old and unread"]
        assert send(store, "alice", "bob", "new").id == 3
    finally:
        store.close()
    columns = {row[1] for row in raw_rows(db_path, "PRAGMA table_info(mailboxes)")}
    assert "alias_of" in columns


def build_version_2_db(path: Path) -> None:
    """A 0.1.0 database: MIGRATIONS[:2], user_version 2, with delivered and pending mail and a session."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = apsw.Connection(str(path))
    try:
        db.execute("PRAGMA journal_mode=WAL").fetchall()
        for migration in MIGRATIONS[:2]:
            migration(db)
        db.execute("PRAGMA user_version=2")
        at = "2025-06-01T00:00:00.000Z"
        db.execute(
            "INSERT INTO mailboxes (name, created_at, last_seen) VALUES ('alice', ?, ?), ('bob', ?, ?)", (at,) * 4
        )
        db.executemany(
            "INSERT INTO messages (sender, recipient, body, created_at, delivered_at) VALUES (?, ?, ?, ?, ?)",
            [
                ("alice", "bob", "read long ago", at, at),
                ("alice", "bob", 'unread \u00e9\n"quoted"', at, None),
                ("bob", "alice", "unread too", at, None),
                ("alice", "bob", "unread three", at, None),
            ],
        )
        db.execute(
            "INSERT INTO sessions (session_id, mailbox, started_at, collaborate) VALUES ('s1', 'bob', ?, 1)", (at,)
        )
    finally:
        db.close()


def test_a_version_2_database_migrates_in_place(db_path: Path) -> None:
    build_version_2_db(db_path)
    store = Store(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 6
        read, *unread = store.all_messages()
        assert read.delivered_at == "2025-06-01T00:00:00.000Z"  # delivered stays delivered
        assert [m.delivered_at for m in unread] == [None, None, None]  # pending stays pending
        assert store.pending_counts() == {"bob": 2, "alice": 1}
        assert store.peek("bob") == (2, "2025-06-01T00:00:00.000Z")
        assert raw_rows(db_path, "SELECT count(*) FROM inflight") == [(0,)]  # nothing is under a lease
        # Sizes were filled in for the pending mail: the hook budget fits exactly the first line.
        first = store.message(unread[0].id)
        assert first is not None
        line = len(render_message(first)) + 1
        hook = store.lease("bob", LeaseTerms(lease_seconds=60, budget=line, cost="rendered", skip_oversized=True))
        assert [m.body for m in hook.messages] == ['unread \u00e9\n"quoted"']
        assert hook.remaining == 1 and hook.id is not None
        assert store.ack("bob", hook.id) == 1
        assert [m.body for m in take(store, "bob").messages] == ["unread three"]
        assert store.session("s1") is not None and store.session("s1").collaborate  # type: ignore[union-attr]
    finally:
        store.close()
    Store(db_path).close()  # opening again changes nothing
    assert raw_rows(db_path, "SELECT recipient, delivered_at IS NULL FROM messages ORDER BY id") == [
        ("bob", 0),
        ("bob", 0),
        ("alice", 1),
        ("bob", 0),
    ]


def test_a_version_3_database_gets_the_thread_index(db_path: Path) -> None:
    """Schema 4: messages (sender, recipient, id) serves the feed's thread view (name + peer);
    a schema-3 database gains it in place with its mail unchanged."""
    build_version_2_db(db_path)
    db = apsw.Connection(str(db_path))
    with db:
        MIGRATIONS[2](db)
        db.execute("PRAGMA user_version=3")
    db.close()
    assert "messages_thread" not in {name for _, name, _, _ in schema_snapshot(db_path)[1]}
    rows = raw_rows(db_path, "SELECT * FROM messages ORDER BY id")
    store = Store(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 6
        assert store.pending_counts() == {"bob": 2, "alice": 1}
        for index in range(300):  # other traffic, so a scan would not be the cheaper plan
            send(store, f"other-{index % 7}", f"else-{index % 5}", "noise")
        thread = [m.body for m in store.feed(None, 10, FeedFilter(name="bob", peer="alice"))[0]]
        assert thread == ["read long ago", 'unread \u00e9\n"quoted"', "unread too", "unread three"]
        plan = " ".join(
            str(row[3])
            for row in store.db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE id <= 1000 AND ((sender = 'a' AND recipient = 'b')"
                " OR (sender = 'b' AND recipient = 'a')) ORDER BY id DESC LIMIT 50"
            )
        )
        assert "messages_thread" in plan, plan
    finally:
        store.close()
    # Its mail is unchanged (step 6 adds the urgent flag, 0 for older mail).
    assert [row[:-1] for row in raw_rows(db_path, "SELECT * FROM messages ORDER BY id")[:4]] == rows
    assert "messages_thread" in {name for _, name, _, _ in schema_snapshot(db_path)[1]}


def test_opening_twice_changes_nothing(db_path: Path) -> None:
    Store(db_path).close()
    first = schema_snapshot(db_path)
    Store(db_path).close()
    assert schema_snapshot(db_path) == first


def test_opening_an_upgraded_older_database_twice_changes_nothing(db_path: Path) -> None:
    build_version_1_db(db_path)
    Store(db_path).close()
    first = schema_snapshot(db_path)
    rows = raw_rows(db_path, "SELECT * FROM messages ORDER BY id")
    Store(db_path).close()
    assert schema_snapshot(db_path) == first
    assert raw_rows(db_path, "SELECT * FROM messages ORDER BY id") == rows


def test_upgrade_matches_a_fresh_database(tmp_path: Path) -> None:
    fresh, upgraded = tmp_path / "fresh.db", tmp_path / "upgraded.db"
    Store(fresh).close()
    build_version_1_db(upgraded)
    Store(upgraded).close()
    # Same objects; ALTER TABLE ADD COLUMN may spell the table's CREATE statement differently.
    assert {(k, n) for k, n, _, _ in schema_snapshot(fresh)[1]} == {
        (k, n) for k, n, _, _ in schema_snapshot(upgraded)[1]
    }
    assert raw_rows(fresh, "PRAGMA table_info(mailboxes)") == raw_rows(upgraded, "PRAGMA table_info(mailboxes)")


def test_newer_schema_is_refused_with_a_clear_error(db_path: Path) -> None:
    Store(db_path).close()
    db = apsw.Connection(str(db_path))
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    db.close()
    before = schema_snapshot(db_path)
    with pytest.raises(MailboxError) as caught:
        Store(db_path)
    message = caught.value.message
    assert str(db_path) in message
    assert "newer claude-mailbox" in message
    assert str(SCHEMA_VERSION + 5) in message
    assert schema_snapshot(db_path) == before  # refused without touching it


def test_a_file_that_is_not_a_database_is_a_clear_error(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MailboxError) as caught:
        Store(db_path)
    assert str(db_path) in caught.value.message


# --- send / peek / consume --------------------------------------------------------------------


def test_send_creates_mailboxes_and_returns_the_stored_message(store: Store) -> None:
    message = send(store, "alice", "bob", "hello")
    assert message.id > 0
    assert (message.sender, message.recipient, message.body, message.delivered_at) == ("alice", "bob", "hello", None)
    assert store.message(message.id) == message
    assert {box.name for box in store.mailboxes()} == {"alice", "bob"}


def test_peek_counts_without_consuming(store: Store) -> None:
    assert store.peek("bob") == (0, None)
    first = send(store, "alice", "bob", "one")
    send(store, "carol", "bob", "two")
    assert store.peek("bob") == (2, first.created_at)
    assert store.peek("bob") == (2, first.created_at)
    assert store.peek("alice") == (0, None)
    assert [m.delivered_at for m in store.all_messages()] == [None, None]


def test_consume_returns_oldest_first_and_marks_delivered_once(store: Store) -> None:
    sent = [send(store, f"s{i % 3}", "bob", f"message {i}") for i in range(5)]
    send(store, "alice", "other", "not for bob")
    consumed = take(store, "bob")
    assert [m.id for m in consumed.messages] == [m.id for m in sent]
    assert [m.body for m in consumed.messages] == [f"message {i}" for i in range(5)]
    assert all(m.recipient == "bob" and m.attempts == 1 for m in consumed.messages)
    assert all(store.message(m.id).delivered_at for m in consumed.messages)  # type: ignore[union-attr]
    assert consumed.remaining == 0
    assert take(store, "bob").messages == []
    assert store.peek("bob") == (0, None)
    assert store.peek("other")[0] == 1


def test_delivered_mail_is_kept_as_an_audit_log(store: Store) -> None:
    sent = send(store, "alice", "bob", "keep me")
    take(store, "bob")
    kept = store.message(sent.id)
    assert kept is not None
    assert (kept.body, kept.sender, kept.created_at) == ("keep me", "alice", sent.created_at)
    assert kept.delivered_at is not None and kept.delivered_at >= kept.created_at
    assert len(store.all_messages()) == 1


def test_consume_with_a_budget_leaves_the_rest_pending(store: Store) -> None:
    for body in ("aaaa", "bbbb", "cccc", "dddd"):
        send(store, "alice", "bob", body)
    consumed = take(store, "bob", budget=9)  # two 4-char bodies fit, the third would not
    assert [m.body for m in consumed.messages] == ["aaaa", "bbbb"]
    assert consumed.remaining == 2
    assert store.peek("bob")[0] == 2
    rest = take(store, "bob")
    assert [m.body for m in rest.messages] == ["cccc", "dddd"]
    assert rest.remaining == 0


def test_a_first_message_larger_than_the_budget_stays_pending(store: Store) -> None:
    big = send(store, "alice", "bob", "x" * 100)
    send(store, "alice", "bob", "small")
    consumed = take(store, "bob", budget=50)
    assert consumed.messages == []
    assert consumed.remaining == 2
    unlimited = take(store, "bob")
    assert [m.id for m in unlimited.messages] == [big.id, big.id + 1]  # order is kept: the big one is not skipped


def test_lease_limit_and_the_rendered_cost_match_the_hook_lines(store: Store) -> None:
    for i in range(4):
        send(store, "alice", "bob", f"m{i}\n\u00e9")  # escapes count: the hook shows JSON-quoted bodies
    assert [m.body for m in take(store, "bob", limit=1).messages] == ["m0\n\u00e9"]
    line = len(render_message(store.all_messages()[1])) + 1
    consumed = take(store, "bob", budget=2 * line, cost="rendered")
    assert [m.body for m in consumed.messages] == ["m1\n\u00e9", "m2\n\u00e9"]
    assert consumed.remaining == 1
    assert take(store, "bob", budget=line - 1, cost="rendered").messages == []  # one char short


def test_max_bytes_pages_a_big_inbox_and_always_makes_progress(store: Store) -> None:
    for i in range(10):
        send(store, "alice", "bob", f"{i}" * 1000)
    page = take(store, "bob", max_bytes=3500)
    assert [m.body[0] for m in page.messages] == ["0", "1", "2"]
    assert len(json.dumps({"messages": [m.to_json() for m in page.messages]})) <= 3500
    assert page.remaining == 7
    assert len(take(store, "bob", max_bytes=10).messages) == 1  # a page smaller than one message still moves


def test_release_puts_mail_back_at_once_and_counts_the_attempt(store: Store) -> None:
    send(store, "alice", "bob", "again")
    lease = store.lease("bob", LeaseTerms(lease_seconds=60))
    held = store.lease("bob", LeaseTerms(lease_seconds=60)).messages  # what the live lease holds is not handed out
    assert lease.id is not None and held == []
    store.release(lease.id)
    assert store.peek("bob")[0] == 1
    again = take(store, "bob")
    assert [(m.body, m.attempts, m.to_json()["redelivered"]) for m in again.messages] == [("again", 2, True)]
    with pytest.raises(LeaseNotFound):
        store.ack("bob", lease.id)  # a released lease cannot be acknowledged afterwards


# --- leases and acknowledgement ----------------------------------------------------------------


def test_an_unacknowledged_lease_expires_and_its_mail_comes_back_in_order(store: Store) -> None:
    sent = [send(store, "alice", "bob", f"m{i}") for i in range(5)]
    first = store.lease("bob", LeaseTerms(lease_seconds=1.0, limit=3))  # outlives the next two calls
    assert [m.id for m in first.messages] == [m.id for m in sent[:3]]
    assert all(m.attempts == 1 and "redelivered" not in m.to_json() for m in first.messages)
    assert first.remaining == 2
    second = store.lease("bob", LeaseTerms(lease_seconds=60))  # the rest, not what the first lease holds
    assert [m.id for m in second.messages] == [m.id for m in sent[3:]]
    assert second.remaining == 0
    assert store.peek("bob")[0] == 5  # leased is not delivered
    time.sleep(1.05)
    back = store.lease("bob", LeaseTerms(lease_seconds=60))
    assert [m.id for m in back.messages] == [m.id for m in sent[:3]]  # original order
    assert [(m.attempts, m.to_json()["redelivered"]) for m in back.messages] == [(2, True)] * 3
    assert back.id is not None and second.id is not None and first.id is not None
    with pytest.raises(LeaseNotFound) as expired:
        store.ack("bob", first.id)
    assert expired.value.http_status == 409 and expired.value.code == "lease_not_found"
    assert store.ack("bob", back.id) == 3
    assert store.ack("bob", second.id) == 2
    assert store.peek("bob") == (0, None)
    assert all(m.delivered_at for m in store.all_messages())


def test_ack_refuses_unknown_foreign_and_repeated_leases(store: Store) -> None:
    send(store, "alice", "bob", "hi")
    lease = store.lease("bob", LeaseTerms(lease_seconds=60))
    assert lease.id is not None
    for name, lease_id in (("bob", "no-such-lease"), ("mallory", lease.id)):
        with pytest.raises(LeaseNotFound):
            store.ack(name, lease_id)
    assert store.ack("bob", lease.id) == 1
    with pytest.raises(LeaseNotFound):
        store.ack("bob", lease.id)
    assert store.lease("bob", LeaseTerms(lease_seconds=60)) == Lease(None, "bob", None, [], 0, 0)


@sqlite_only
def test_expire_leases_returns_mail_without_a_new_read(store: Store) -> None:
    send(store, "alice", "bob", "hi")
    store.lease("bob", LeaseTerms(lease_seconds=0.05))
    time.sleep(0.1)
    store.expire_leases()
    assert raw_rows(store.path, "SELECT count(*) FROM leases") == [(0,)]
    assert raw_rows(store.path, "SELECT lease_id, attempts FROM inflight") == [(None, 1)]


def test_two_connections_never_hold_the_same_message(db_path: Path) -> None:
    first, second = Store(db_path), Store(db_path)
    try:
        for i in range(20):
            send(first, "alice", "bob", f"m{i}")
        a = first.lease("bob", LeaseTerms(lease_seconds=60, limit=7))
        b = second.lease("bob", LeaseTerms(lease_seconds=60))
        assert {m.id for m in a.messages}.isdisjoint(m.id for m in b.messages)
        assert len(a.messages) + len(b.messages) == 20
    finally:
        first.close()
        second.close()


# --- idempotent send ---------------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_original_and_stores_nothing(store: Store) -> None:
    first = store.send(SendRequest("alice", "bob", "once", idempotency_key="k-1"))
    again = store.send(SendRequest("alice", "bob", "once", idempotency_key="k-1"))
    assert not first.repeated and again.repeated
    assert again.message == first.message
    assert store.peek("bob")[0] == 1
    other_sender = store.send(SendRequest("carol", "bob", "once", idempotency_key="k-1"))  # keys are per sender
    assert not other_sender.repeated and other_sender.message.id != first.message.id
    assert not store.send(SendRequest("alice", "bob", "twice", idempotency_key="k-2")).repeated
    assert store.peek("bob")[0] == 3


@sqlite_only
def test_idempotency_keys_expire_after_24_hours(store: Store) -> None:
    first = store.send(SendRequest("alice", "bob", "once", idempotency_key="k"))
    store.db.execute("UPDATE idempotency SET created_at = ?", (iso_before(IDEMPOTENCY_SECONDS + 60),))
    later = store.send(SendRequest("alice", "bob", "once", idempotency_key="k"))
    assert not later.repeated and later.message.id != first.message.id
    assert raw_rows(store.path, "SELECT message_id FROM idempotency") == [(later.message.id,)]  # the old one pruned


# --- kept pending counts -----------------------------------------------------------------------


def _counted(store: Store) -> dict[str, int]:
    if isinstance(store, SyncPgStore):
        query = "SELECT recipient, count(*) FROM messages WHERE delivered_at IS NULL GROUP BY 1"
        return dict(store.sql(query))  # type: ignore[arg-type]
    rows = raw_rows(store.path, "SELECT recipient, count(*) FROM messages WHERE delivered_at IS NULL GROUP BY 1")
    return dict(rows)


def test_pending_counts_are_kept_through_send_ack_rename_and_prune(store: Store) -> None:
    _register(store, "s-old", "old")
    for i in range(6):
        send(store, "alice", "old", f"m{i}")
    send(store, "old", "alice", "reply")
    assert store.pending_counts() == _counted(store) == {"old": 6, "alice": 1}
    take(store, "old", limit=2)
    lease = store.lease("old", LeaseTerms(lease_seconds=60, limit=1))  # leased is still pending
    assert store.pending_counts() == _counted(store) == {"old": 4, "alice": 1}
    _register(store, "s-new", "new", rename_from="old")
    assert store.pending_counts() == _counted(store) == {"new": 4, "alice": 1}
    assert lease.id is not None and store.ack("old", lease.id) == 1
    assert store.pending_counts() == _counted(store) == {"new": 3, "alice": 1}
    assert store.prune("9999-12-31T23:59:59.999Z") == 3
    assert store.pending_counts() == _counted(store)
    assert {box.name: box.pending for box in store.mailboxes()}["new"] == 3


@sqlite_only
def test_send_does_not_count_the_inbox(store: Store) -> None:
    statements: list[str] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        statements.append(sql)
        return True

    store.db.exec_trace = trace
    try:
        send(store, "alice", "bob", "hi", max_pending=10)
    finally:
        store.db.exec_trace = None
    assert statements and not any("count(" in sql.lower() for sql in statements), statements
    with pytest.raises(MailboxFull):
        for _ in range(10):
            send(store, "alice", "bob", "more", max_pending=10)
    assert store.peek("bob")[0] == 10


# --- a full inbox stays cheap ----------------------------------------------------------------------


def test_a_budgeted_read_of_a_10000_message_inbox_reads_only_what_it_returns(db_path: Path) -> None:
    """10,000 bodies of 9.5 KB (each spills into overflow pages): a read that returns three of them
    reads a few hundred pages, not the 20,000+ the bodies occupy."""
    store = Store(db_path)
    send(store, "alice", "bob", "first")
    take(store, "bob")
    at, body = now_iso(), "b" * 8192
    with store.db:  # one transaction; the triggers keep the pending count as for any send
        store.db.executemany(
            "INSERT INTO messages (sender, recipient, body, created_at, chars, quoted) VALUES (?, ?, ?, ?, ?, ?)",
            (("alice", "bob", f"{i:05d}{body}", at, 9505, 9507) for i in range(10_000)),
        )
    assert store.peek("bob")[0] == 10_000
    store.close()
    page_size, pages = raw_rows(db_path, "PRAGMA page_size")[0][0], raw_rows(db_path, "PRAGMA page_count")[0][0]
    assert pages > 20_000, (pages, page_size)
    fresh = Store(db_path)  # an empty page cache
    try:
        fresh.db.execute("PRAGMA cache_size = -200000")
        fresh.db.status(apsw.SQLITE_DBSTATUS_CACHE_MISS, True)
        lease = fresh.lease("bob", LeaseTerms(lease_seconds=60, budget=3 * 9505))
        misses = fresh.db.status(apsw.SQLITE_DBSTATUS_CACHE_MISS, True)[0]
        assert [m.body[:5] for m in lease.messages] == ["00000", "00001", "00002"]
        assert lease.remaining == 9_997
        assert misses < 1_000, misses  # the bodies alone are over 20,000 pages
        hook = fresh.lease("bob", LeaseTerms(lease_seconds=60, budget=9_400, cost="rendered", skip_oversized=True))
        assert hook.messages == [] and hook.oversized == 9_997  # too big for the hook: counted, not loaded
        assert fresh.db.status(apsw.SQLITE_DBSTATUS_CACHE_MISS, True)[0] < 1_000
    finally:
        fresh.close()


# --- aliases (renames after /clear) --------------------------------------------------------------


def _register(store: Store, session_id: str, mailbox: str, rename_from: str | None = None) -> Any:
    source = "clear" if rename_from else "startup"
    return store.register_session(Registration(session_id, mailbox, 4242, 1.0, "/work", "/work", source), rename_from)


def test_rename_moves_pending_mail_and_aliases_the_old_name(store: Store) -> None:
    assert _register(store, "s-old", "claude-old") is None
    for body in ("first", "second", "third"):
        send(store, "alice", "claude-old", body)
    read = take(store, "claude-old", budget=len("first"))
    assert [m.body for m in read.messages] == ["first"]

    rename = _register(store, "s-new", "claude-new", rename_from="claude-old")
    assert rename is not None
    assert (rename.old, rename.new, rename.moved) == ("claude-old", "claude-new", 2)
    assert store.peek("claude-old") == (0, None)
    assert store.peek("claude-new")[0] == 2
    assert store.alias_target("claude-old") == "claude-new"
    assert store.alias_target("claude-new") is None
    # Delivered history stays with the name it was delivered to.
    assert store.message(read.messages[0].id).recipient == "claude-old"  # type: ignore[union-attr]

    later = send(store, "bob", "claude-old", "sent after the rename")
    assert later.recipient == "claude-new"
    assert [m.body for m in take(store, "claude-new").messages] == ["second", "third", "sent after the rename"]
    boxes = {box.name: box for box in store.mailboxes()}
    assert boxes["claude-old"].alias_of == "claude-new"
    assert store.session_for_pid(4242).mailbox == "claude-new"  # type: ignore[union-attr]


def test_chained_renames_point_every_old_name_at_the_newest(store: Store) -> None:
    _register(store, "s1", "n1")
    _register(store, "s2", "n2", rename_from="n1")
    _register(store, "s3", "n3", rename_from="n2")
    assert store.alias_target("n1") == "n3"
    assert store.alias_target("n2") == "n3"
    assert send(store, "x", "n1", "to the first name").recipient == "n3"


def test_a_resumed_mailbox_is_no_longer_an_alias(store: Store) -> None:
    _register(store, "s1", "n1")
    _register(store, "s2", "n2", rename_from="n1")
    _register(store, "s1", "n1")  # the first conversation is resumed
    assert store.alias_target("n1") is None
    assert send(store, "x", "n1", "hi").recipient == "n1"


# --- presence ---------------------------------------------------------------------------------


def _last_seen(store: Store, name: str) -> str:
    return {box.name: box.last_seen for box in store.mailboxes()}[name]


def _tick() -> None:
    """Timestamps have millisecond resolution."""
    time.sleep(0.005)


def test_last_seen_follows_sender_checker_and_touch(store: Store) -> None:
    send(store, "alice", "bob", "hi")
    alice_0, bob_0 = _last_seen(store, "alice"), _last_seen(store, "bob")
    _tick()
    send(store, "alice", "carol", "again")
    assert _last_seen(store, "alice") > alice_0
    assert _last_seen(store, "bob") == bob_0  # being written to is not being present
    _tick()
    take(store, "bob")
    assert _last_seen(store, "bob") > bob_0
    bob_1 = _last_seen(store, "bob")
    _tick()
    take(store, "bob")  # an empty check is still presence
    assert _last_seen(store, "bob") > bob_1
    _tick()
    before = now_iso()
    _tick()
    store.touch("dave")
    assert _last_seen(store, "dave") > before
    carol_0 = _last_seen(store, "carol")
    _tick()
    store.peek("carol")
    assert _last_seen(store, "carol") == carol_0  # peek names no caller


def test_mailboxes_list_pending_counts(store: Store) -> None:
    send(store, "alice", "bob", "1")
    send(store, "alice", "bob", "2")
    send(store, "bob", "alice", "3")
    assert store.pending_counts() == {"bob": 2, "alice": 1}
    pending = {box.name: box.pending for box in store.mailboxes()}
    assert pending == {"bob": 2, "alice": 1}


# --- the pending index ------------------------------------------------------------------------


@sqlite_only
def test_pending_queries_use_the_partial_index(store: Store) -> None:
    for i in range(300):
        send(store, "alice", "bob" if i % 2 else "carol", f"m{i}")
    take(store, "carol")  # delivered history
    store.db.execute("ANALYZE")
    statements: list[tuple[str, Any]] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        statements.append((sql, bindings))
        return True

    store.db.exec_trace = trace
    try:
        store.peek("bob")
        take(store, "bob", limit=5)
        send(store, "alice", "bob", "with a pending limit", max_pending=1000)
    finally:
        store.db.exec_trace = None
    pending_queries = [
        (sql, bindings)
        for sql, bindings in statements
        if sql.lstrip().upper().startswith("SELECT") and "FROM messages" in sql and "delivered_at IS NULL" in sql
    ]
    assert len(pending_queries) >= 2, statements  # peek's oldest, the lease's selection
    for sql, bindings in pending_queries:
        plan = " | ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", bindings))
        assert "messages_pending" in plan, (sql, plan)
        assert "SCAN messages" not in plan.replace("USING COVERING INDEX messages_pending", ""), (sql, plan)


# --- prune ------------------------------------------------------------------------------------


def test_prune_deletes_only_delivered_mail(store: Store) -> None:
    read = send(store, "alice", "bob", "read")
    take(store, "bob")
    pending = send(store, "alice", "bob", "unread")
    _tick()
    cutoff = now_iso()
    assert store.prune(cutoff, dry_run=True) == 1
    assert len(store.all_messages()) == 2
    assert store.prune(cutoff) == 1
    assert store.message(read.id) is None
    assert store.message(pending.id) == pending
    # Even a cutoff far in the future never touches pending mail.
    assert store.prune("9999-12-31T23:59:59.999Z") == 0
    assert store.peek("bob") == (1, pending.created_at)


def test_prune_keeps_mail_delivered_after_the_cutoff(store: Store) -> None:
    send(store, "alice", "bob", "read")
    cutoff = now_iso()
    _tick()
    take(store, "bob")
    assert store.prune(cutoff) == 0
    assert len(store.all_messages()) == 1


# --- durability setting -------------------------------------------------------------------------


@pytest.mark.parametrize(("durability", "expected"), [("normal", 1), ("full", 2)])
def test_durability_sets_synchronous(db_path: Path, durability: str, expected: int) -> None:
    store = Store(db_path, durability=durability)
    try:
        assert store.db.execute("PRAGMA synchronous").fetchall()[0][0] == expected
        assert store.db.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
        assert store.db.execute("PRAGMA busy_timeout").fetchall()[0][0] == 2000
    finally:
        store.close()
