"""The store on its own: migrations (blank, older, newer database; idempotent), consume semantics,
aliases, presence, the pending index, and prune. Real SQLite files in a temporary folder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from claude_mailbox.errors import MailboxError
from claude_mailbox.store import MIGRATIONS, SCHEMA_VERSION, Store, now_iso


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "mailbox.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
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
    assert version == SCHEMA_VERSION == len(MIGRATIONS)
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
        consumed = store.consume("bob")
        assert [m.body for m in consumed.messages] == ["old and unread"]
        assert store.send("alice", "bob", "new").id == 3
    finally:
        store.close()
    columns = {row[1] for row in raw_rows(db_path, "PRAGMA table_info(mailboxes)")}
    assert "alias_of" in columns


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
    message = store.send("alice", "bob", "hello")
    assert message.id > 0
    assert (message.sender, message.recipient, message.body, message.delivered_at) == ("alice", "bob", "hello", None)
    assert store.message(message.id) == message
    assert {box.name for box in store.mailboxes()} == {"alice", "bob"}


def test_peek_counts_without_consuming(store: Store) -> None:
    assert store.peek("bob") == (0, None)
    first = store.send("alice", "bob", "one")
    store.send("carol", "bob", "two")
    assert store.peek("bob") == (2, first.created_at)
    assert store.peek("bob") == (2, first.created_at)
    assert store.peek("alice") == (0, None)
    assert [m.delivered_at for m in store.all_messages()] == [None, None]


def test_consume_returns_oldest_first_and_marks_delivered_once(store: Store) -> None:
    sent = [store.send(f"s{i % 3}", "bob", f"message {i}") for i in range(5)]
    store.send("alice", "other", "not for bob")
    consumed = store.consume("bob")
    assert [m.id for m in consumed.messages] == [m.id for m in sent]
    assert [m.body for m in consumed.messages] == [f"message {i}" for i in range(5)]
    assert all(m.recipient == "bob" and m.delivered_at for m in consumed.messages)
    assert consumed.remaining == 0
    assert store.consume("bob").messages == []
    assert store.peek("bob") == (0, None)
    assert store.peek("other")[0] == 1


def test_delivered_mail_is_kept_as_an_audit_log(store: Store) -> None:
    sent = store.send("alice", "bob", "keep me")
    delivered = store.consume("bob").messages[0]
    kept = store.message(sent.id)
    assert kept is not None
    assert (kept.body, kept.sender, kept.created_at) == ("keep me", "alice", sent.created_at)
    assert kept.delivered_at == delivered.delivered_at
    assert kept.delivered_at is not None and kept.delivered_at >= kept.created_at
    assert len(store.all_messages()) == 1


def test_consume_with_a_budget_leaves_the_rest_pending(store: Store) -> None:
    for body in ("aaaa", "bbbb", "cccc", "dddd"):
        store.send("alice", "bob", body)
    consumed = store.consume("bob", budget=9)  # two 4-char bodies fit, the third would not
    assert [m.body for m in consumed.messages] == ["aaaa", "bbbb"]
    assert consumed.remaining == 2
    assert store.peek("bob")[0] == 2
    rest = store.consume("bob")
    assert [m.body for m in rest.messages] == ["cccc", "dddd"]
    assert rest.remaining == 0


def test_a_first_message_larger_than_the_budget_stays_pending(store: Store) -> None:
    big = store.send("alice", "bob", "x" * 100)
    store.send("alice", "bob", "small")
    consumed = store.consume("bob", budget=50)
    assert consumed.messages == []
    assert consumed.remaining == 2
    unlimited = store.consume("bob")
    assert [m.id for m in unlimited.messages] == [big.id, big.id + 1]  # order is kept: the big one is not skipped


def test_consume_limit_and_custom_cost(store: Store) -> None:
    for i in range(4):
        store.send("alice", "bob", f"m{i}")
    assert [m.body for m in store.consume("bob", limit=1).messages] == ["m0"]
    consumed = store.consume("bob", budget=20, cost=lambda m: 10)
    assert [m.body for m in consumed.messages] == ["m1", "m2"]
    assert consumed.remaining == 1


def test_undeliver_puts_mail_back(store: Store) -> None:
    store.send("alice", "bob", "again")
    taken = store.consume("bob").messages
    store.undeliver([m.id for m in taken])
    assert store.peek("bob")[0] == 1
    assert [m.body for m in store.consume("bob").messages] == ["again"]


# --- aliases (renames after /clear) --------------------------------------------------------------


def _register(store: Store, session_id: str, mailbox: str, rename_from: str | None = None) -> Any:
    return store.register_session(
        session_id=session_id,
        mailbox=mailbox,
        claude_pid=4242,
        pid_started=1.0,
        cwd="/work",
        project_dir="/work",
        source="clear" if rename_from else "startup",
        rename_from=rename_from,
    )


def test_rename_moves_pending_mail_and_aliases_the_old_name(store: Store) -> None:
    assert _register(store, "s-old", "claude-old") is None
    for body in ("first", "second", "third"):
        store.send("alice", "claude-old", body)
    read = store.consume("claude-old", budget=len("first"))
    assert [m.body for m in read.messages] == ["first"]

    rename = _register(store, "s-new", "claude-new", rename_from="claude-old")
    assert rename is not None
    assert (rename.old, rename.new, rename.moved) == ("claude-old", "claude-new", 2)
    assert store.peek("claude-old") == (0, None)
    assert store.peek("claude-new")[0] == 2
    assert store.resolve("claude-old") == "claude-new"
    assert store.alias_target("claude-old") == "claude-new"
    assert store.alias_target("claude-new") is None
    # Delivered history stays with the name it was delivered to.
    assert store.message(read.messages[0].id).recipient == "claude-old"  # type: ignore[union-attr]

    later = store.send("bob", "claude-old", "sent after the rename")
    assert later.recipient == "claude-new"
    assert [m.body for m in store.consume("claude-new").messages] == ["second", "third", "sent after the rename"]
    boxes = {box.name: box for box in store.mailboxes()}
    assert boxes["claude-old"].alias_of == "claude-new"
    assert store.session_for_pid(4242).mailbox == "claude-new"  # type: ignore[union-attr]


def test_chained_renames_point_every_old_name_at_the_newest(store: Store) -> None:
    _register(store, "s1", "n1")
    _register(store, "s2", "n2", rename_from="n1")
    _register(store, "s3", "n3", rename_from="n2")
    assert store.resolve("n1") == "n3"
    assert store.resolve("n2") == "n3"
    assert store.send("x", "n1", "to the first name").recipient == "n3"


def test_a_resumed_mailbox_is_no_longer_an_alias(store: Store) -> None:
    _register(store, "s1", "n1")
    _register(store, "s2", "n2", rename_from="n1")
    _register(store, "s1", "n1")  # the first conversation is resumed
    assert store.alias_target("n1") is None
    assert store.send("x", "n1", "hi").recipient == "n1"


# --- presence ---------------------------------------------------------------------------------


def _last_seen(store: Store, name: str) -> str:
    return {box.name: box.last_seen for box in store.mailboxes()}[name]


def _tick() -> None:
    """Timestamps have millisecond resolution."""
    time.sleep(0.005)


def test_last_seen_follows_sender_checker_and_touch(store: Store) -> None:
    store.send("alice", "bob", "hi")
    alice_0, bob_0 = _last_seen(store, "alice"), _last_seen(store, "bob")
    _tick()
    store.send("alice", "carol", "again")
    assert _last_seen(store, "alice") > alice_0
    assert _last_seen(store, "bob") == bob_0  # being written to is not being present
    _tick()
    store.consume("bob")
    assert _last_seen(store, "bob") > bob_0
    bob_1 = _last_seen(store, "bob")
    _tick()
    store.consume("bob")  # an empty check is still presence
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
    store.send("alice", "bob", "1")
    store.send("alice", "bob", "2")
    store.send("bob", "alice", "3")
    assert store.pending_counts() == {"bob": 2, "alice": 1}
    pending = {box.name: box.pending for box in store.mailboxes()}
    assert pending == {"bob": 2, "alice": 1}


# --- the pending index ------------------------------------------------------------------------


def test_pending_queries_use_the_partial_index(store: Store) -> None:
    for i in range(300):
        store.send("alice", "bob" if i % 2 else "carol", f"m{i}")
    store.consume("carol")  # delivered history
    store.db.execute("ANALYZE")
    statements: list[tuple[str, Any]] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        statements.append((sql, bindings))
        return True

    store.db.exec_trace = trace
    try:
        store.peek("bob")
        store.consume("bob", limit=5)
        store.send("alice", "bob", "with a pending limit", max_pending=1000)
    finally:
        store.db.exec_trace = None
    pending_queries = [
        (sql, bindings)
        for sql, bindings in statements
        if sql.lstrip().upper().startswith("SELECT") and "FROM messages" in sql and "delivered_at IS NULL" in sql
    ]
    assert len(pending_queries) >= 3, statements  # peek, consume (select + remaining), send's limit check
    for sql, bindings in pending_queries:
        plan = " | ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", bindings))
        assert "messages_pending" in plan, (sql, plan)
        assert "SCAN messages" not in plan.replace("USING COVERING INDEX messages_pending", ""), (sql, plan)


# --- prune ------------------------------------------------------------------------------------


def test_prune_deletes_only_delivered_mail(store: Store) -> None:
    read = store.send("alice", "bob", "read")
    store.consume("bob")
    pending = store.send("alice", "bob", "unread")
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
    store.send("alice", "bob", "read")
    cutoff = now_iso()
    _tick()
    store.consume("bob")
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
