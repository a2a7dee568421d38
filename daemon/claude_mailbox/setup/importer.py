"""`claude-mailbox import-sqlite`: copy one machine's SQLite mailbox into PostgreSQL, once, when its
user moves to several machines (README "Several machines").

What is copied, in ONE PostgreSQL transaction (all or nothing):
- mailboxes (aliases left by /clear, created/last-seen times; a name PostgreSQL already has is merged)
  and sessions (so `list` still shows their project, state and collaboration mode; their host is this
  machine's, whose daemon alone judges their Claude Code processes);
- every message, pending and delivered (the feed, `tail` and the page show the history; `prune` and
  `retention_days` age it as before), in id order, with sender, recipient, body, times and attempts.
  PostgreSQL assigns the ids (it may hold other machines' mail): they come from its own sequence, so
  nothing clashes, and are handed out in the old order, so each inbox reads in the same order;
- idempotency keys still in their 24 h window, pointing at the new ids (a retried send answers
  "repeated").
Leases are not copied: mail handed out and never acknowledged is pending again, as after a lease
expiry (its attempts kept, so it comes back marked redelivered). Pending counts are kept by
PostgreSQL's own triggers as the rows go in.

Run twice, copy once: the SQLite file gets a `pg_import` row with an id (committed) BEFORE the copy,
and the copy inserts a `sqlite_imports` row with that id in its own transaction; after the PostgreSQL
commit the SQLite row is marked finished, and later runs refuse. A run that died between the commit and
that mark finds the id in PostgreSQL when run again: it copies nothing and marks it. A copy known to
have rolled back (PostgreSQL refused a row) frees the row, so the file may go to another database; an
unfinished row that names another database is refused (its copy may have committed there). While it
copies it holds SQLite's write lock, so a daemon started meanwhile cannot take mail that would stay behind.

The SQLite data is read through a read-only APSW connection; the only write to the file is that row
(and, for a file an older version wrote, the daemon's own migrations). Imported by the CLI's
`import-sqlite` verb only: apsw and asyncpg never load for the light verbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from claude_mailbox import store
from claude_mailbox.client import probe_health
from claude_mailbox.config import redact_url
from claude_mailbox.errors import ConfigError, InvalidInput, MailboxError, StoreBusy, StoreUnavailable

MARKER_TABLE = "pg_import"
BATCH_ROWS = 5000  # rows per PostgreSQL command
BUSY_TIMEOUT_MS = 5000  # a starting daemon holds the write lock briefly (its migration)
STOP_HINT = (
    "stop it first (`claude-mailbox stop`, or end the `claude-mailbox serve` run by hand), "
    "then run import-sqlite again: mail it stored after the copy would not reach PostgreSQL"
)


@dataclass(frozen=True)
class Imported:
    """What one run did. `recovered`: an earlier run's copy had committed but was not yet noted in the
    SQLite file; this run noted it and copied nothing."""

    source: str
    database: str  # the PostgreSQL URL without its password
    imported_at: str
    mailboxes: int
    sessions: int
    pending: int
    delivered: int
    keys: int
    recovered: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "database": self.database,
            "importedAt": self.imported_at,
            "mailboxes": self.mailboxes,
            "sessions": self.sessions,
            "pending": self.pending,
            "delivered": self.delivered,
            "idempotencyKeys": self.keys,
            "recovered": self.recovered,
        }


@dataclass(frozen=True)
class Snapshot:
    """The SQLite file's rows, read under its write lock."""

    mailboxes: list[tuple[Any, ...]]
    sessions: list[tuple[Any, ...]]
    messages: list[tuple[Any, ...]]  # id, sender, recipient, body, created_at, delivered_at, attempts
    keys: list[tuple[Any, ...]]  # sender, key, message_id, created_at


@dataclass
class Progress:
    """How far the PostgreSQL side got. `copying`: PostgreSQL had no copy under this id and this run's
    transaction is writing one; a failure before `may_have_committed` certainly rolled it back."""

    copying: bool = False
    may_have_committed: bool = False

    @property
    def rolled_back(self) -> bool:
        return self.copying and not self.may_have_committed


def run(source: Path, url: str, *, host: str | None = None, daemon_url: str | None = None) -> Imported:
    """Copy the SQLite mailbox at `source` into the PostgreSQL database at `url` (see the module doc).
    `daemon_url`: the located daemon, refused when it runs on `source`."""
    label = redact_url(url)
    if daemon_url:
        _refuse_if_served(source, daemon_url)  # first: nothing may touch a file a daemon is using
    reader = _open_source(source)
    try:
        _refuse_if_done(reader, source, label)
        try:
            from claude_mailbox.pgstore import PgStore  # the optional extra: only this verb loads asyncpg
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise ConfigError(
                "import-sqlite needs the PostgreSQL driver: pip install 'claude-mailbox[postgres]'"
            ) from None
        return asyncio.run(_import(PgStore, reader, source, url, label, host))
    finally:
        reader.close()


async def _import(
    pg_store: Any, reader: apsw.Connection, source: Path, url: str, label: str, host: str | None
) -> Imported:
    import asyncpg  # installed: pgstore imported it

    # Connect (and create or migrate the schema, as a daemon would) before writing anything to SQLite.
    pg = await pg_store.open(url, host=host, max_connections=1)
    try:
        with _sqlite(source, writing=True):
            writer = apsw.Connection(str(source))
        try:
            writer.set_busy_timeout(BUSY_TIMEOUT_MS)
            import_id = _claim(writer, source, label)
            with _sqlite(source, writing=True):
                writer.execute("BEGIN IMMEDIATE")  # no daemon writes this file until the note is made
            progress = Progress()
            try:
                _refuse_if_done(writer, source, label)
                snapshot = _read(reader, source)
                try:
                    result = await _copy(pg, import_id, snapshot, str(source), label, progress)
                except asyncpg.PostgresError as exc:  # e.g. a value PostgreSQL cannot store; rolled back
                    raise StoreUnavailable(
                        f"PostgreSQL at {label} refused the copy, nothing was imported: {exc.__class__.__name__}: {exc}"
                    ) from None
                except StoreUnavailable as exc:
                    if not progress.may_have_committed:
                        raise
                    raise StoreUnavailable(
                        f"lost PostgreSQL at {label} while committing the copy ({exc.message}); run import-sqlite "
                        "again: it finds out whether the copy is there and never copies twice"
                    ) from None
                try:
                    with _sqlite(source, writing=True):
                        writer.execute(
                            f"UPDATE {MARKER_TABLE} SET finished_at = ?, counts = ? WHERE import_id = ?",
                            (result.imported_at, json.dumps(result.to_json()), import_id),
                        )
                        writer.execute("COMMIT")
                except MailboxError as exc:
                    raise StoreUnavailable(
                        f"the mail was copied into {label}, but noting that in {source} failed ({exc.message}); "
                        "run import-sqlite again: it notes it without copying twice"
                    ) from None
            except BaseException:
                with contextlib.suppress(apsw.Error):
                    if progress.rolled_back and writer.in_transaction:
                        # Certainly rolled back: free the note (under our lock), so the file may go elsewhere.
                        writer.execute(
                            f"DELETE FROM {MARKER_TABLE} WHERE import_id = ? AND finished_at IS NULL", (import_id,)
                        )
                        writer.execute("COMMIT")
                    elif writer.in_transaction:
                        writer.execute("ROLLBACK")
                raise
        finally:
            writer.close()
    finally:
        await pg.close()
    return result


# --- the SQLite side ------------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite(path: Path, *, writing: bool = False) -> Iterator[None]:
    """SQLite failures as one line naming the file (`writing`: the import's note in it)."""
    try:
        yield
    except MailboxError:
        raise
    except apsw.BusyError:
        raise StoreBusy(f"{path} is locked by another process (a daemon using it?): {STOP_HINT}") from None
    except (apsw.NotADBError, apsw.CorruptError) as exc:
        raise StoreUnavailable(f"{path} is not a valid claude-mailbox database ({exc})") from None
    except (apsw.ReadOnlyError, apsw.CantOpenError, apsw.PermissionsError) as exc:
        if not writing:
            raise StoreUnavailable(f"cannot open {path}: {exc}") from None
        raise StoreUnavailable(
            f"cannot write to {path} ({exc}): import-sqlite notes the import in it, so a second run cannot "
            "copy the mail twice; make it writable by this user and run again"
        ) from None
    except apsw.Error as exc:
        raise StoreUnavailable(f"cannot read {path}: {exc}") from None


def _open_source(path: Path) -> apsw.Connection:
    """A read-only connection to a claude-mailbox SQLite file at the current schema (an older file is
    first migrated by the daemon's own store code, as its next start would)."""
    if not path.exists():
        raise InvalidInput(f"no SQLite mailbox at {path}: nothing to import (--from names another file)")
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file (--from names the SQLite mailbox, e.g. ~/.claude-mailbox/mailbox.db)")
    if not os.access(path, os.R_OK):
        raise InvalidInput(f"cannot read {path}: permission denied")
    with _sqlite(path):
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        with _sqlite(path):
            tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            found: list[Any] = db.execute("PRAGMA user_version").fetchall()
            version = int(found[0][0])
        if not {"mailboxes", "messages"} <= tables:
            raise InvalidInput(f"{path} is not a claude-mailbox database (it has no mailboxes and messages tables)")
        if version > store.SCHEMA_VERSION:
            raise InvalidInput(f"{path} was written by a newer claude-mailbox (schema {version}); upgrade to import it")
        if version < store.SCHEMA_VERSION:
            db.close()
            store.Store(path).close()  # the daemon's migrations: its leases, counts and key tables exist after
            with _sqlite(path):
                db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        return db
    except BaseException:
        db.close()
        raise


def _marker(db: apsw.Connection, path: Path) -> tuple[Any, ...] | None:
    """The file's import note (import_id, database, started_at, finished_at), None before any run."""
    with _sqlite(path):
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (MARKER_TABLE,)).fetchall():
            return None
        rows = db.execute(f"SELECT import_id, database, started_at, finished_at FROM {MARKER_TABLE}").fetchall()
    return tuple(rows[0]) if rows else None


def _refuse_if_done(db: apsw.Connection, path: Path, label: str) -> tuple[Any, ...] | None:
    """Refuse a file already imported, or whose unfinished import went to another database (its copy
    may have committed there: copying here too would put the mail in two databases). The note, if any."""
    marker = _marker(db, path)
    if marker is None:
        return None
    if marker[3]:
        raise InvalidInput(
            f"{path} was already imported into {marker[1]} at {marker[3]}; nothing copied again "
            "(its mail is there: set database_url in config.toml and start the daemon)"
        )
    if marker[1] != label:
        raise InvalidInput(
            f"an import of {path} into {marker[1]} started at {marker[2]} did not finish: run import-sqlite "
            "again with --database-url for that database (it completes it without copying twice)"
        )
    return marker


def _refuse_if_served(path: Path, daemon_url: str) -> None:
    """A daemon on this file would keep taking mail that the copy does not carry."""
    health = probe_health(daemon_url, timeout=2.0)
    served = health.get("dbPath") if health else None
    if not served:
        return
    try:
        same = Path(str(served)).resolve() == path.resolve()
    except OSError:
        same = str(served) == str(path)
    if same:
        raise InvalidInput(f"the daemon at {daemon_url} is running on {path}: {STOP_HINT}")


def _claim(writer: apsw.Connection, path: Path, label: str) -> str:
    """The id of this file's import, noted (and committed) before the copy: a new one, or the one of a
    run that did not finish (its copy may have committed: PostgreSQL's sqlite_imports row tells)."""
    with _sqlite(path, writing=True):
        writer.execute("BEGIN IMMEDIATE")
        try:
            writer.execute(
                f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (import_id TEXT PRIMARY KEY, database TEXT NOT NULL,"
                " started_at TEXT NOT NULL, finished_at TEXT, counts TEXT)"
            )
            marker = _refuse_if_done(writer, path, label)
            if marker is None:
                import_id = secrets.token_hex(16)
                writer.execute(
                    f"INSERT INTO {MARKER_TABLE} (import_id, database, started_at) VALUES (?, ?, ?)",
                    (import_id, label, store.now_iso()),
                )
            else:
                import_id = str(marker[0])
            writer.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(apsw.Error):
                if writer.in_transaction:
                    writer.execute("ROLLBACK")
            raise
    return import_id


def _read(db: apsw.Connection, path: Path) -> Snapshot:
    fresh_keys = store.iso_before(store.IDEMPOTENCY_SECONDS)  # older keys no longer answer "repeated"
    with _sqlite(path):
        return Snapshot(
            mailboxes=db.execute(
                "SELECT name, created_at, last_seen, alias_of FROM mailboxes ORDER BY rowid"
            ).fetchall(),
            sessions=db.execute(
                "SELECT session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source, started_at,"
                " ended_at, end_reason, collaborate FROM sessions ORDER BY started_at, rowid"
            ).fetchall(),
            # Attempts survive, leases do not: mail under a lease is pending again, as after its expiry.
            messages=db.execute(
                "SELECT m.id, m.sender, m.recipient, m.body, m.created_at, m.delivered_at, coalesce(f.attempts, 0)"
                " FROM messages m LEFT JOIN inflight f ON f.message_id = m.id ORDER BY m.id"
            ).fetchall(),
            keys=db.execute(
                "SELECT sender, key, message_id, created_at FROM idempotency WHERE created_at >= ?", (fresh_keys,)
            ).fetchall(),
        )


# --- the PostgreSQL side ----------------------------------------------------------------------------


async def _copy(pg: Any, import_id: str, snap: Snapshot, source: str, label: str, progress: Progress) -> Imported:
    at = store.now_iso()
    async with pg.transaction() as conn:
        # First the note: a second run with the same id waits here for this one, then copies nothing.
        fresh = await conn.fetchval(
            "INSERT INTO sqlite_imports (import_id, source, host, imported_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (import_id) DO NOTHING RETURNING 1",
            import_id,
            source,
            pg.host,
            at,
        )
        if not fresh:
            progress.may_have_committed = True  # an earlier run's copy is there
            row = await conn.fetchrow(
                "SELECT imported_at, mailboxes, sessions, pending, delivered, keys FROM sqlite_imports"
                " WHERE import_id = $1",
                import_id,
            )
            return Imported(
                source,
                label,
                imported_at=row[0],
                mailboxes=int(row[1]),
                sessions=int(row[2]),
                pending=int(row[3]),
                delivered=int(row[4]),
                keys=int(row[5]),
                recovered=True,
            )
        progress.copying = True
        mailboxes = await _copy_mailboxes(conn, snap)
        sessions = await _copy_sessions(conn, snap, pg.host)
        new_ids = await _copy_messages(conn, snap)
        keys = await _copy_keys(conn, snap, new_ids)
        pending = sum(1 for row in snap.messages if row[5] is None)
        result = Imported(source, label, at, mailboxes, sessions, pending, len(snap.messages) - pending, keys)
        await conn.execute(
            "UPDATE sqlite_imports SET mailboxes = $2, sessions = $3, pending = $4, delivered = $5, keys = $6"
            " WHERE import_id = $1",
            import_id,
            mailboxes,
            sessions,
            result.pending,
            result.delivered,
            keys,
        )
        progress.may_have_committed = True  # from here the COMMIT may reach the server, whatever we hear
    return result


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one list per column, for unnest($1::type[], ...)."""
    return [[row[i] for row in rows] for i in range(width)]


async def _copy_mailboxes(conn: Any, snap: Snapshot) -> int:
    # A name PostgreSQL already has (the same mailbox used on another machine) is merged: the earliest
    # creation, the latest sighting; its alias stays as the shared database has it.
    await conn.execute(
        "INSERT INTO mailboxes (name, created_at, last_seen, alias_of)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
        " ON CONFLICT (name) DO UPDATE SET created_at = least(mailboxes.created_at, excluded.created_at),"
        " last_seen = greatest(mailboxes.last_seen, excluded.last_seen)",
        # SQLite's sends read an empty alias as none (nullif); PostgreSQL's would follow it.
        *_columns([(name, created, seen, alias or None) for name, created, seen, alias in snap.mailboxes], 4),
    )
    return len(snap.mailboxes)


async def _copy_sessions(conn: Any, snap: Snapshot, host: str) -> int:
    # SQLite's loose typing: a pid start time may have been stored as an integer.
    rows_in = [
        (*row[:3], None if row[3] is None else float(row[3]), *row[4:10], int(row[10] or 0)) for row in snap.sessions
    ]
    rows = await conn.fetch(
        "INSERT INTO sessions (session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source, started_at,"
        " ended_at, end_reason, collaborate, host)"
        " SELECT *, $12::text FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[], $5::text[],"
        " $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int[])"
        " ON CONFLICT (session_id) DO NOTHING RETURNING 1",
        *_columns(rows_in, 11),
        host,
    )
    return len(rows)


async def _copy_messages(conn: Any, snap: Snapshot) -> dict[int, int]:
    """Old id -> new id. The new ids come from PostgreSQL's sequence (never another machine's) and are
    given out in the old order, so every inbox keeps its order."""
    if not snap.messages:
        return {}
    allocated = await conn.fetch(
        "SELECT nextval(pg_get_serial_sequence('messages', 'id')) FROM generate_series(1, $1::int)",
        len(snap.messages),
    )
    new_ids = sorted(int(row[0]) for row in allocated)
    records = [
        (new_id, sender, recipient, body, created_at, delivered_at, len(body), len(json.dumps(body)), int(attempts))
        for new_id, (_, sender, recipient, body, created_at, delivered_at, attempts) in zip(
            new_ids, snap.messages, strict=True
        )
    ]
    # COPY fires the insert trigger row by row: pending counts and wake-ups as for a send. In batches, so
    # each command stays well within the pool's command_timeout whatever the file's size.
    for start in range(0, len(records), BATCH_ROWS):
        await conn.copy_records_to_table(
            "messages",
            records=records[start : start + BATCH_ROWS],
            columns=["id", "sender", "recipient", "body", "created_at", "delivered_at", "chars", "quoted", "attempts"],
        )
    return {int(row[0]): new_id for row, new_id in zip(snap.messages, new_ids, strict=True)}


async def _copy_keys(conn: Any, snap: Snapshot, new_ids: dict[int, int]) -> int:
    mapped = [(sender, key, new_ids[old], at) for sender, key, old, at in snap.keys if old in new_ids]
    copied = 0
    for start in range(0, len(mapped), BATCH_ROWS):
        rows = await conn.fetch(
            "INSERT INTO idempotency (sender, key, message_id, created_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])"
            " ON CONFLICT (sender, key) DO NOTHING RETURNING 1",
            *_columns(mapped[start : start + BATCH_ROWS], 4),
        )
        copied += len(rows)
    return copied
