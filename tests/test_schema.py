"""One schema-version list (model.SCHEMA_STEPS) that both stores follow: the same number means the
same step on SQLite and PostgreSQL, and /health reports the version the store is at. PostgreSQL's
upgrade from its old numbering is in tests/test_postgres.py (it needs the server)."""

from __future__ import annotations

from pathlib import Path

import apsw

import pgkit
from claude_mailbox import store
from claude_mailbox.model import SCHEMA_STEPS, LeaseTerms, SendRequest, latest_schema, schema_steps
from harness import sqlite_rows
from rawhttp import request


def test_the_steps_are_numbered_once_in_order() -> None:
    assert [step.version for step in SCHEMA_STEPS] == list(range(1, len(SCHEMA_STEPS) + 1))
    assert len({step.name for step in SCHEMA_STEPS}) == len(SCHEMA_STEPS)


def test_sqlite_takes_its_steps_under_their_numbers() -> None:
    steps = schema_steps("sqlite")
    assert [migration.__name__ for migration in store.MIGRATIONS] == [
        f"_migration_{step.version}_{step.name}" for step in steps
    ]
    assert store.SCHEMA_VERSION == latest_schema("sqlite") == 6


def test_postgresql_takes_every_step_under_the_same_numbers() -> None:
    from claude_mailbox import pgstore

    numbers = {step.version for step in schema_steps("postgres")}
    assert numbers == {step.version for step in SCHEMA_STEPS}  # PostgreSQL takes them all
    scripts = pgstore._MIGRATIONS
    assert set(scripts) <= numbers
    assert min(scripts) == 3  # its first script is steps 1-3 at once (PostgreSQL began at SQLite's 3)
    assert set(range(min(scripts), max(scripts) + 1)) == set(scripts)  # every later step has its script
    assert pgstore.SCHEMA_VERSION == max(scripts) == latest_schema("postgres") == 6
    assert "messages_thread" in scripts[4]  # SQLite's step 4, the thread index


def test_an_old_sqlite_database_ends_at_the_shared_number(tmp_path: Path) -> None:
    path = tmp_path / "mailbox.db"
    db = apsw.Connection(str(path))
    with db:
        for migration in store.MIGRATIONS[:3]:
            migration(db)
        db.execute("PRAGMA user_version=3")
    db.close()
    opened = store.Store(path)
    try:
        assert opened.schema_version() == latest_schema("sqlite")
    finally:
        opened.close()
    assert sqlite_rows(path, "PRAGMA user_version") == [(latest_schema("sqlite"),)]
    assert sqlite_rows(path, "SELECT name FROM sqlite_master WHERE name = 'messages_thread'") == [("messages_thread",)]


def test_health_reports_the_schema_version(app_module_server: object) -> None:
    reply = request(app_module_server.url, "GET", "/health")  # type: ignore[attr-defined]
    assert reply.status == 200
    on_postgres = pgkit.daemon_database(app_module_server) is not None
    assert reply.json["schema"] == latest_schema("postgres" if on_postgres else "sqlite")


def test_a_schema_4_sqlite_database_gains_the_urgent_flag_with_its_mail_unchanged(tmp_path: Path) -> None:
    """Step 6: pending mail of an older database stays pending and is not urgent; new urgent mail is
    stored as such, and the pending index the hook budget reads carries the flag."""
    path = tmp_path / "mailbox.db"
    db = apsw.Connection(str(path))
    with db:
        for migration in store.MIGRATIONS[:4]:
            migration(db)
        db.execute(
            "INSERT INTO messages (sender, recipient, body, created_at, chars, quoted) VALUES"
            " ('alice', 'bob', 'old', '2026-01-01T00:00:00.000Z', 3, 5)"
        )
        db.execute("PRAGMA user_version=4")
    db.close()
    opened = store.Store(path)
    try:
        assert opened.schema_version() == 6
        (old,) = opened.all_messages()
        assert (old.body, old.urgent, old.delivered_at) == ("old", False, None)
        sent = opened.send(SendRequest("carol", "bob", "now", urgent=True))
        assert sent.message.urgent and opened.message(sent.message.id).urgent  # type: ignore[union-attr]
        urgent = opened.lease("bob", LeaseTerms(lease_seconds=60, urgent_only=True))
        assert [(m.body, m.urgent) for m in urgent.messages] == [("now", True)]
    finally:
        opened.close()
    index = sqlite_rows(path, "SELECT sql FROM sqlite_master WHERE name = 'messages_pending'")[0][0]
    assert "urgent" in index
