"""`claude-mailbox import-sqlite` (setup/importer.py): a single machine's SQLite mailbox moved into
PostgreSQL. Real parts only: a daemon on SQLite in a temporary home takes the mail, is stopped, the
CLI copies the file into a fresh database of a real PostgreSQL server (tests/pgkit.py), and a daemon on
PostgreSQL with the same home and token serves it afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import pgkit
from harness import Daemon, base_env, free_port, run_cli, sqlite_rows
from plugin_env import start_input
from rawhttp import request


@pytest.fixture(autouse=True)
def sqlite_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemons here run on SQLite unless given a URL, even under MAILBOX_TEST_STORE=postgres."""
    monkeypatch.delenv(pgkit.STORE_OPTION, raising=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("claude-mailbox: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def importing(home: Path, *args: str, daemon_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """The verb as a user runs it, in a separate process, locating the daemon as the CLI does."""
    env = base_env(home, CLAUDE_MAILBOX_URL=daemon_url or f"http://127.0.0.1:{free_port()}")
    return run_cli("import-sqlite", *args, env=env, timeout=60)


def session_start(daemon: Daemon, session_id: str, claude_pid: int, source: str = "startup") -> str:
    """Register a session as its SessionStart hook does; its mailbox name."""
    reply = request(
        daemon.url,
        "POST",
        "/v1/hooks/session-start",
        json_body=start_input(session_id, "/p/laptop", source),
        headers={"X-Mailbox-Claude-Pid": str(claude_pid)},
    )
    assert reply.status == 200, reply.body
    return str(daemon.client().whoami(session_id))


def pg_count(url: str, sql: str, *args: Any) -> int:
    return int(pgkit.query(url, sql, *args)[0][0])


def public_tables(url: str) -> int:
    return pg_count(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")


def marker_rows(db_path: Path) -> list[tuple[Any, ...]]:
    if not sqlite_rows(db_path, "SELECT 1 FROM sqlite_master WHERE name = 'pg_import'"):
        return []
    return sqlite_rows(db_path, "SELECT import_id, database, finished_at FROM pg_import")


# --- the move, end to end ---------------------------------------------------------------------------


def test_a_moved_mailbox_reads_on_postgresql_as_it_did_on_sqlite(tmp_path: Path, pg_url: str, fake_claude: int) -> None:
    home = tmp_path / "laptop"
    home.mkdir()
    laptop = Daemon(home, log_path=home / "daemon.log").start()
    try:
        client = laptop.client()
        sent_bob = [{**client.send("alice", "bob", body), "body": body} for body in ("b1", "b2", "b3")]
        keyed = client.send("carol", "bob", "b4 with a key", idempotency_key="move-key-1")
        sent_bob.append({**keyed, "body": "b4 with a key"})
        for body in ("d1", "d2"):
            client.send("alice", "dave", body)
        assert [m["body"] for m in client.check("dave")["messages"]] == ["d1", "d2"]  # delivered
        client.send("alice", "erin", "e1 leased")
        leased = client.check("erin", manual=True)  # handed out, never acknowledged
        assert leased["leaseId"] and [m["body"] for m in leased["messages"]] == ["e1 leased"]
        # A session mailbox, then /clear in the same Claude Code process: the old name becomes an alias.
        first = session_start(laptop, str(uuid.uuid4()), fake_claude)
        second = session_start(laptop, str(uuid.uuid4()), fake_claude, source="clear")
        assert first != second
        client.send("alice", first, "to the old name")  # follows the alias to the new mailbox
    finally:
        laptop.stop()
    sent_keys = sqlite_rows(home / "mailbox.db", "SELECT count(*) FROM idempotency")[0][0]

    done = importing(home, "--database-url", pg_url, "--json")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["pending"] == 6 and counts["delivered"] == 2  # b1-b4, e1, the alias's; d1, d2
    assert counts["idempotencyKeys"] == sent_keys == 8  # the client library keys every send
    assert counts["mailboxes"] == 7 and counts["sessions"] == 2
    assert counts["database"] == pg_url and not counts["recovered"]
    assert marker_rows(home / "mailbox.db")[0][1:] == (pg_url, counts["importedAt"])

    moved = Daemon(home, log_path=home / "daemon-pg.log", args=("--database-url", pg_url)).start()
    try:
        client = moved.client()
        assert client.peek("bob") == {"pending": 4, "oldestAt": sent_bob[0]["createdAt"]}
        assert client.peek("erin")["pending"] == 1 and client.peek("dave")["pending"] == 0
        bob = client.check("bob")["messages"]
        assert [(m["from"], m["body"], m["createdAt"]) for m in bob] == [
            (m["from"], m["body"], m["createdAt"]) for m in sent_bob
        ]
        assert [m["id"] for m in bob] == sorted(m["id"] for m in bob)
        assert not any(m.get("redelivered") for m in bob)  # never handed out before
        erin = client.check("erin")["messages"]
        assert [(m["body"], m.get("redelivered"), m.get("attempts")) for m in erin] == [("e1 leased", True, 2)]
        assert client.check("dave")["messages"] == []  # delivered stays delivered
        # The retried send after the move: 200, repeated, the new id of the message it first stored.
        again = request(
            moved.url,
            "POST",
            "/v1/send",
            json_body={"to": "bob", "body": "b4 with a key"},
            headers={"X-Mailbox": "carol", "Idempotency-Key": "move-key-1"},
        )
        assert again.status == 200, again.body
        assert again.json["id"] == bob[3]["id"] and again.json["createdAt"] == keyed["createdAt"]
        assert client.peek("bob")["pending"] == 0
        # Mailboxes, the session's project, the alias, and the alias still routes mail.
        boxes = {box["name"]: box for box in client.list()["mailboxes"]}
        assert {"alice", "bob", "carol", "dave", "erin", first, second} <= set(boxes)
        assert boxes[first]["aliasOf"] == second and boxes[second]["projectDir"] == "/p/laptop"
        assert [m["body"] for m in client.check(second)["messages"]] == ["to the old name"]
        client.send("alice", first, "after the move")
        assert [m["body"] for m in client.check(second)["messages"]] == ["after the move"]
        # The history: delivered mail is in the feed, read.
        feed = client.call("GET", "/v1/feed?name=dave")["messages"]
        assert [(m["body"], m["read"]) for m in feed] == [("d1", True), ("d2", True)]
    finally:
        moved.stop()

    # Run twice, copy once.
    rows_before = pg_count(pg_url, "SELECT count(*) FROM messages")
    refused = one_line_error(importing(home, "--database-url", pg_url))
    assert "already imported into" in refused and "nothing copied again" in refused
    assert "--again" not in refused
    assert pg_count(pg_url, "SELECT count(*) FROM messages") == rows_before
    # The note does not stop the file from serving again on SQLite (a user who goes back).
    back = Daemon(home, log_path=home / "daemon-back.log").start()
    try:
        assert back.client().health(detailed=True)["dbPath"] == str(home / "mailbox.db")
        assert back.client().peek("dave")["pending"] == 0
    finally:
        back.stop()


# --- refusals -----------------------------------------------------------------------------------------


def test_import_refuses_while_the_sqlite_daemon_runs_and_writes_nothing(tmp_path: Path, pg_url: str) -> None:
    home = tmp_path / "laptop"
    home.mkdir()
    laptop = Daemon(home, log_path=home / "daemon.log").start()
    try:
        laptop.client().send("alice", "bob", "still served here")
        message = one_line_error(importing(home, "--database-url", pg_url, daemon_url=laptop.url))
        assert f"the daemon at {laptop.url} is running on {home / 'mailbox.db'}" in message
        assert "stop it first" in message
        assert public_tables(pg_url) == 0  # not even the schema
        assert marker_rows(home / "mailbox.db") == []
        assert laptop.client().peek("bob")["pending"] == 1
    finally:
        laptop.stop()


def _sqlite_mailbox(home: Path) -> Path:
    """A SQLite mailbox with one pending message, written by the daemon's own store code."""
    from claude_mailbox.model import SendRequest
    from claude_mailbox.store import Store

    path = home / "mailbox.db"
    db = Store(path)
    try:
        db.send(SendRequest("alice", "bob", "hello"))
    finally:
        db.close()
    return path


def test_a_wrong_url_is_one_line_without_the_password(mailbox_home: Path) -> None:
    path = _sqlite_mailbox(mailbox_home)
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none"
    message = one_line_error(importing(mailbox_home, "--database-url", url))
    assert f"cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:{url.rsplit(':', 1)[1]}" in message
    assert "secret" not in message
    assert marker_rows(path) == []  # nothing noted in the file before PostgreSQL answered


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "no PostgreSQL database to import into: pass --database-url"),
        (("--database-url", "mysql://x@h/db"), "database_url must be a postgresql://"),
        (("--database-url", "postgresql://u@127.0.0.1:1/d", "--from", "/nonexistent/mailbox.db"), "no SQLite mailbox"),
    ],
    ids=["no url", "not postgresql", "no file"],
)
def test_bad_input_is_one_line(mailbox_home: Path, args: tuple[str, ...], needle: str) -> None:
    assert needle in one_line_error(importing(mailbox_home, *args))


def test_a_file_that_is_not_a_mailbox_is_one_line(mailbox_home: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, just some words that fill a page " * 100)
    message = one_line_error(
        importing(mailbox_home, "--database-url", "postgresql://u@127.0.0.1:1/d", "--from", str(text))
    )
    assert "is not a valid claude-mailbox database" in message
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    message = one_line_error(
        importing(mailbox_home, "--database-url", "postgresql://u@127.0.0.1:1/d", "--from", str(empty))
    )
    assert "is not a claude-mailbox database" in message


def test_without_asyncpg_it_names_the_extra(mailbox_home: Path) -> None:
    """The driver absent (an import of it fails, as in an install without the extra)."""
    _sqlite_mailbox(mailbox_home)
    code = (
        "import sys; sys.modules['asyncpg'] = None\n"
        "from claude_mailbox.cli import main\n"
        "sys.exit(main(['import-sqlite', '--database-url', 'postgresql://u@127.0.0.1:1/d']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=base_env(mailbox_home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "pip install 'claude-mailbox[postgres]'" in one_line_error(result)


# --- PostgreSQL that already holds another machine's mail ----------------------------------------------


def test_import_into_a_database_with_another_machines_mail_keeps_both(tmp_path: Path, pg_url: str) -> None:
    devbox_home, laptop_home = tmp_path / "devbox", tmp_path / "laptop"
    devbox_home.mkdir()
    laptop_home.mkdir()
    devbox = Daemon(devbox_home, log_path=devbox_home / "daemon.log", args=("--database-url", pg_url)).start()
    try:
        theirs = [devbox.client().send("zed", "bob", f"devbox {i}")["id"] for i in range(3)]
        laptop = Daemon(laptop_home, log_path=laptop_home / "daemon.log").start()
        try:
            for i in range(3):
                laptop.client().send("alice", "bob", f"laptop {i}")
            laptop.client().send("alice", "only-here", "x")
        finally:
            laptop.stop()
        (laptop_home / "config.toml").write_text(f'database_url = "{pg_url}"\n')  # set first, then import
        done = importing(laptop_home)  # the URL from config.toml; the devbox daemon keeps running
        assert done.returncode == 0, done.stderr
        assert "imported 3 mailboxes (0 sessions), 4 pending and 0 delivered messages" in done.stdout
        assert done.stdout.rstrip().endswith("start the daemon (config.toml names this database)")
        assert devbox.client().peek("bob")["pending"] == 6  # the devbox's daemon sees the laptop's mail
        got = devbox.client().check("bob")["messages"]
        assert [m["body"] for m in got] == [f"devbox {i}" for i in range(3)] + [f"laptop {i}" for i in range(3)]
        ids = [m["id"] for m in got]
        assert ids[:3] == theirs and ids == sorted(ids) and len(set(ids)) == 6
        names = {box["name"] for box in devbox.client().list()["mailboxes"]}
        assert {"zed", "alice", "bob", "only-here"} <= names
        assert devbox.client().peek("only-here")["pending"] == 1
    finally:
        devbox.stop()


# --- the crash window between the PostgreSQL commit and the note in the SQLite file ---------------------


def test_a_run_that_died_after_the_commit_is_finished_without_copying_twice(mailbox_home: Path, pg_url: str) -> None:
    import apsw

    path = _sqlite_mailbox(mailbox_home)
    assert importing(mailbox_home, "--database-url", pg_url).returncode == 0
    copied = pg_count(pg_url, "SELECT count(*) FROM messages")
    # What a crash right after PostgreSQL's COMMIT leaves: the note says started, not finished.
    db = apsw.Connection(str(path))
    try:
        db.execute("UPDATE pg_import SET finished_at = NULL")
    finally:
        db.close()
    again = importing(mailbox_home, "--database-url", pg_url)
    assert again.returncode == 0, again.stderr
    assert "noted now, nothing copied twice" in again.stdout
    assert pg_count(pg_url, "SELECT count(*) FROM messages") == copied == 1
    assert pg_count(pg_url, "SELECT pending FROM pending_counts WHERE mailbox = 'bob'") == 1
    assert marker_rows(path)[0][2] is not None
    assert "already imported" in one_line_error(importing(mailbox_home, "--database-url", pg_url))


def test_an_unfinished_run_into_another_database_is_not_copied_elsewhere(mailbox_home: Path, pg_url: str) -> None:
    import apsw

    path = _sqlite_mailbox(mailbox_home)
    assert importing(mailbox_home, "--database-url", pg_url).returncode == 0
    db = apsw.Connection(str(path))
    try:
        db.execute("UPDATE pg_import SET finished_at = NULL")
    finally:
        db.close()
    other = pgkit.fresh_database_url()
    message = one_line_error(importing(mailbox_home, "--database-url", other))
    assert f"an import of {path} into {pg_url}" in message and "did not finish" in message
    assert public_tables(other) == 0  # refused before connecting


def test_a_copy_postgresql_refuses_halfway_leaves_nothing_behind(mailbox_home: Path, pg_url: str) -> None:
    """All or nothing: a body PostgreSQL cannot store (a NUL character, which SQLite keeps) after good
    mail rolls the whole copy back, and the file's note is freed for another try."""
    from claude_mailbox.model import SendRequest
    from claude_mailbox.store import Store

    path = mailbox_home / "mailbox.db"
    db = Store(path)
    try:
        db.send(SendRequest("alice", "bob", "fine"))
        db.send(SendRequest("alice", "bob", "a NUL \x00 here"))
        db.send(SendRequest("alice", "carol", "fine too"))
    finally:
        db.close()
    message = one_line_error(importing(mailbox_home, "--database-url", pg_url))
    assert f"PostgreSQL at {pg_url} refused the copy, nothing was imported" in message
    for table in ("messages", "mailboxes", "pending_counts", "idempotency", "sqlite_imports"):
        assert pg_count(pg_url, f"SELECT count(*) FROM {table}") == 0, table
    assert marker_rows(path) == []
