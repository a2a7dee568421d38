"""The only module that touches SQLite (through APSW). It owns every SQL statement and the migrations.

Concurrency: every write runs inside `BEGIN IMMEDIATE`, so several processes may share one database
file and each message is still delivered exactly once. Pending lookups use a partial index on
undelivered mail, so their cost does not grow with the delivered history.

Delivery is lease, then acknowledgement: `lease()` hands pending mail out under a lease stored in the
database, `ack()` marks it delivered. A lease that expires (the reader died, the daemon was killed, the
answer was lost) gives its messages back, in their original order, counted in `attempts`. Lease state
lives in the small `inflight` table, not in `messages`: SQLite rewrites a whole row on UPDATE, and a
row holds a body of up to 64 KiB. Budgets are met in SQL from body sizes kept in the pending index
(`chars`, `quoted`), so a read of a full inbox loads only the bodies it returns.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw

from claude_mailbox import fsutil, rowmap
from claude_mailbox.errors import (
    InvalidInput,
    LeaseNotFound,
    MailboxError,
    MailboxFull,
    StorageFull,
    StoreBusy,
    StoreUnavailable,
)
from claude_mailbox.hooktext import RENDERED_OVERHEAD, URGENT_RENDERED_COST
from claude_mailbox.model import (
    IDEMPOTENCY_SECONDS,
    JSON_OVERHEAD,
    URGENT_JSON_COST,
    Cost,
    FeedFilter,
    ImportMarker,
    ImportSnapshot,
    Lease,
    LeaseTerms,
    Mailbox,
    Message,
    Registration,
    Rename,
    SendRequest,
    Sent,
    Session,
    iso_after,
    iso_before,
    latest_schema,
    now_iso,
    schema_steps,
)

# What a message costs against a budget (model.Cost), from the body sizes kept in the pending index:
# the per-message overheads are defined next to the text they measure.
_COST_SQL: dict[Cost, str] = {
    "chars": "m.chars",
    "rendered": f"m.quoted + length(m.sender) + length(m.id) + {RENDERED_OVERHEAD} + {URGENT_RENDERED_COST} * m.urgent",
    "json": f"m.quoted + length(m.sender) + length(m.id) + {JSON_OVERHEAD} + {URGENT_JSON_COST} * m.urgent",
}
_M_COLUMNS = ", ".join(f"m.{column}" for column in rowmap.MESSAGE_COLUMNS.split(", "))  # joined with another table


# --- migrations: model.SCHEMA_STEPS, each idempotent, recorded in PRAGMA user_version ---------------


def _migration_1_messages(db: apsw.Connection) -> None:
    """The seed's model: mailboxes created on first use, messages kept after delivery."""
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS mailboxes (
            name TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            last_seen TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at TEXT NOT NULL,
            delivered_at TEXT
        );
        CREATE INDEX IF NOT EXISTS messages_pending ON messages (recipient, id) WHERE delivered_at IS NULL;
        """
    )


def _migration_2_sessions(db: apsw.Connection) -> None:
    """Claude Code sessions (pid -> mailbox, liveness, collaboration) and aliases left by /clear."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(mailboxes)")}
    if "alias_of" not in columns:
        db.execute("ALTER TABLE mailboxes ADD COLUMN alias_of TEXT")
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS sessions (
            session_id TEXT PRIMARY KEY,
            mailbox TEXT NOT NULL,
            claude_pid INTEGER,
            pid_started REAL,
            cwd TEXT,
            project_dir TEXT,
            source TEXT,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            end_reason TEXT,
            collaborate INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS sessions_pid ON sessions (claude_pid, started_at);
        CREATE INDEX IF NOT EXISTS sessions_mailbox ON sessions (mailbox, started_at);
        CREATE INDEX IF NOT EXISTS messages_delivered ON messages (delivered_at) WHERE delivered_at IS NOT NULL;
        """
    )


def _migration_3_delivery(db: apsw.Connection) -> None:
    """Leases then acknowledgement, kept pending counts, body sizes in the pending index, and
    idempotency keys. Delivered mail stays delivered, pending mail stays pending (no lease)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    for column in ("chars", "quoted"):
        if column not in columns:
            db.execute(f"ALTER TABLE messages ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
    # Sizes of the mail that is still pending (delivered mail is never budgeted again).
    sizes = [
        (len(body), len(json.dumps(body)), message_id)
        for message_id, body in db.execute("SELECT id, body FROM messages WHERE delivered_at IS NULL")
    ]
    db.executemany("UPDATE messages SET chars = ?, quoted = ? WHERE id = ?", sizes)
    db.execute(
        """
        DROP INDEX IF EXISTS messages_pending;
        CREATE INDEX messages_pending ON messages (recipient, id, chars, quoted, sender)
            WHERE delivered_at IS NULL;
        CREATE TABLE IF NOT EXISTS leases (
            id TEXT PRIMARY KEY,
            mailbox TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            created_at TEXT NOT NULL,
            count INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);
        CREATE INDEX IF NOT EXISTS leases_mailbox ON leases (mailbox, expires_at);
        CREATE TABLE IF NOT EXISTS inflight (
            message_id INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
            lease_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS inflight_lease ON inflight (lease_id) WHERE lease_id IS NOT NULL;
        CREATE TABLE IF NOT EXISTS pending_counts (
            mailbox TEXT PRIMARY KEY,
            pending INTEGER NOT NULL
        ) WITHOUT ROWID;
        DELETE FROM pending_counts;
        INSERT INTO pending_counts (mailbox, pending)
            SELECT recipient, count(*) FROM messages WHERE delivered_at IS NULL GROUP BY recipient;
        CREATE TABLE IF NOT EXISTS idempotency (
            sender TEXT NOT NULL,
            key TEXT NOT NULL,
            message_id INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (sender, key)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency (created_at);
        -- The pending count of a mailbox changes in the same transaction as the mail, whoever writes it.
        CREATE TRIGGER IF NOT EXISTS pending_on_insert AFTER INSERT ON messages WHEN new.delivered_at IS NULL
        BEGIN
            INSERT INTO pending_counts (mailbox, pending) VALUES (new.recipient, 1)
                ON CONFLICT (mailbox) DO UPDATE SET pending = pending + 1;
        END;
        CREATE TRIGGER IF NOT EXISTS pending_on_update AFTER UPDATE OF recipient, delivered_at ON messages
        WHEN (old.delivered_at IS NULL) != (new.delivered_at IS NULL) OR old.recipient != new.recipient
        BEGIN
            UPDATE pending_counts SET pending = pending - 1
                WHERE mailbox = old.recipient AND old.delivered_at IS NULL;
            INSERT INTO pending_counts (mailbox, pending) SELECT new.recipient, 1 WHERE new.delivered_at IS NULL
                ON CONFLICT (mailbox) DO UPDATE SET pending = pending + 1;
        END;
        CREATE TRIGGER IF NOT EXISTS pending_on_delete AFTER DELETE ON messages WHEN old.delivered_at IS NULL
        BEGIN
            UPDATE pending_counts SET pending = pending - 1 WHERE mailbox = old.recipient;
        END;
        """
    )


def _migration_4_threads(db: apsw.Connection) -> None:
    """The thread view of the feed (GET /v1/feed?name=A&peer=B): mail between two mailboxes by id,
    from an index instead of a scan of all mail (each direction is one index range)."""
    db.execute("CREATE INDEX IF NOT EXISTS messages_thread ON messages (sender, recipient, id)")


def _migration_6_urgent(db: apsw.Connection) -> None:
    """Urgent mail: a flag on the message, kept in the pending index (the hook budgets read it there)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    if "urgent" not in columns:
        db.execute("ALTER TABLE messages ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """
        DROP INDEX IF EXISTS messages_pending;
        CREATE INDEX messages_pending ON messages (recipient, id, chars, quoted, sender, urgent)
            WHERE delivered_at IS NULL;
        """
    )


# model.SCHEMA_STEPS that SQLite takes, in order (tests/test_schema.py checks the names match).
MIGRATIONS: list[Callable[[apsw.Connection], None]] = [
    _migration_1_messages,
    _migration_2_sessions,
    _migration_3_delivery,
    _migration_4_threads,
    _migration_6_urgent,
]
_STEPS = dict(zip((step.version for step in schema_steps("sqlite")), MIGRATIONS, strict=True))
SCHEMA_VERSION = latest_schema("sqlite")


# Exactly one row: the recipient's alias (or NULL), whether its mailbox row exists, and the pending
# count of the mailbox the mail goes to (the alias's target if any).
_SEND_TARGET = (
    "SELECT m.alias_of, m.name IS NOT NULL, coalesce(p.pending, 0) FROM (SELECT ? AS name) q"
    " LEFT JOIN mailboxes m ON m.name = q.name"
    " LEFT JOIN pending_counts p ON p.mailbox = coalesce(nullif(m.alias_of, ''), q.name)"
)


def _rows(db: apsw.Connection, sql: str, bindings: tuple[Any, ...] | dict[str, Any] = ()) -> list[Any]:
    """All result rows, typed loosely: SQLite values are checked where they are used."""
    rows: list[Any] = db.execute(sql, bindings).fetchall()
    return rows


@contextlib.contextmanager
def _translated_errors(path: Path, db: apsw.Connection | None = None) -> Iterator[None]:
    """SQLite failures become MailboxErrors that say what happened and what still works."""
    try:
        yield
    except apsw.BusyError:
        raise StoreBusy("the database is locked by another process; try again shortly", retry_after=1) from None
    except apsw.FullError:
        raise _disk_full(path) from None
    except (apsw.NotADBError, apsw.CorruptError):
        raise StoreUnavailable(f"{path} is not a valid claude-mailbox database (corrupted?)") from None
    except apsw.ReadOnlyError:
        raise _read_only(path, f"{path} is read-only; nothing was saved") from None
    except apsw.CantOpenError as exc:
        raise _read_only(path, f"cannot open {path}: {exc} (is {path.parent} writable?)") from None
    except apsw.IOError as exc:
        # SQLite reports a write refused by the file-size limit (EFBIG) as a plain I/O error.
        failed = db.system_errno if db is not None else 0
        if failed == errno.EFBIG:
            raise StorageFull(f"{path} reached the file-size limit (ulimit -f); nothing was saved") from None
        if failed == errno.ENOSPC:
            raise _disk_full(path) from None
        raise StoreUnavailable(f"cannot write {path}: {exc}") from None


def _read_only(path: Path, otherwise: str) -> StoreUnavailable:
    """Name the files this user cannot write: a database once opened read-only, by another user or
    by root leaves -wal/-shm files behind that keep every later start refusing (issue 12.6)."""
    parent = path.parent
    blocked = [
        str(candidate)
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if candidate.exists() and not os.access(candidate, os.W_OK)
    ]
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        blocked.append(f"{parent}/")
    if not blocked:
        return StoreUnavailable(otherwise)
    files = " ".join(blocked)
    leftovers = any(name.endswith(("-wal", "-shm")) for name in blocked)
    return StoreUnavailable(
        f"cannot write the database {path}: {files} {'is' if len(blocked) == 1 else 'are'} not writable by this "
        f"user (left by a read-only start, or by another user's process?); fix: stop other daemons, then "
        f"chown $(id -un) {files} && chmod u+w {files}"
        + (", or remove the -wal/-shm files" if leftovers else "")
        + ", and start again"
    )


def _disk_full(path: Path) -> StorageFull:
    return StorageFull(f"the disk holding {path} is full; nothing was saved (free some space, then retry)")


def quick_check(path: Path, limit: int = 3) -> str | None:
    """Damage found by `PRAGMA quick_check` on a connection of its own (a long check on a big file
    must not hold the daemon's database thread; WAL lets it read beside the writer): None when the
    file is sound, else SQLite's first findings on one line."""
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        return f"cannot open it to check: {exc}"
    try:
        problems = [str(row[0]) for row in db.execute(f"PRAGMA quick_check({int(limit)})").fetchall()]
    except apsw.Error as exc:  # a damaged header or page makes the check itself fail
        return f"{type(exc).__name__}: {exc}"
    finally:
        db.close()
    if problems == ["ok"]:
        return None
    return "; ".join(" ".join(problem.split()) for problem in problems)


def _file_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at `path`; None when there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _make_private(path: Path) -> None:
    """Mail is this user's alone, wherever db_path points (issue 20.2): create the database file 0600
    before SQLite opens it (SQLite gives -wal and -shm the database file's mode), and tighten the
    three files an older version left readable."""
    with contextlib.suppress(OSError):  # a directory that refuses it fails the open with its reason
        os.close(fsutil.open_private(path, os.O_RDWR))
    for name in (f"{path}-wal", f"{path}-shm"):
        fsutil.make_private(name)


class WriteGroup:
    """Group commit for dbthread.DbThread: several sends in one transaction, each in a savepoint
    (Store._write), committed once. Nothing is answered before the COMMIT has succeeded."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def begin(self) -> None:
        store = self.store
        store._refuse_if_lost()
        with _translated_errors(store.path, store.db):
            store.db.execute("BEGIN IMMEDIATE")
        store._grouped = True

    def commit(self) -> None:
        store = self.store
        if not store._grouped:
            raise StoreUnavailable("the group's transaction ended before its commit")
        store._grouped = False
        with _translated_errors(store.path, store.db):
            try:
                store.db.execute("COMMIT")
            except BaseException:
                store._rollback()
                raise
        store.check_file()

    def intact(self) -> bool:
        return self.store._grouped


class Store:
    """A connection to the mailbox database. Not shared between threads: give each its own."""

    def __init__(self, path: Path, *, durability: str = "normal", busy_timeout_ms: int = 2000) -> None:
        self.path = path
        with _translated_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            _make_private(path)
            self.db = apsw.Connection(str(path))
            self.db.set_busy_timeout(busy_timeout_ms)
            # Fail here, with the file's name, if it is not a database or is damaged (before any write,
            # so a damaged file is left exactly as it was for its owner to inspect or restore).
            self.db.execute("PRAGMA schema_version").fetchall()
            problems = self.db.execute("PRAGMA quick_check(1)").fetchall()
            if problems != [("ok",)]:
                first = " ".join(str(problems[0][0]).split())  # SQLite's report spans lines
                raise StoreUnavailable(
                    f"{path} is not a valid claude-mailbox database (corrupted: {first}); "
                    "it was left untouched: restore it or move it aside"
                )
            self.db.execute("PRAGMA journal_mode=WAL").fetchall()
            self.db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._grouped = False  # inside a WriteGroup's shared transaction (group commit)
            self._file = _file_id(path)  # the file this connection holds (see check_file)
            self.lost: str | None = None  # why the database is unavailable, once its file is gone
            self._migrate()
        self.group = WriteGroup(self)

    def close(self) -> None:
        self.db.close()

    # --- transactions ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[apsw.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so concurrent consumers never interleave.
        Inside a WriteGroup's transaction: a savepoint, so a failure undoes only this write."""
        if self._grouped:
            with _translated_errors(self.path, self.db):
                self.db.execute("SAVEPOINT job")
                try:
                    yield self.db
                    self.db.execute("RELEASE job")
                except BaseException:
                    try:
                        if not self.db.in_transaction:  # SQLite already rolled the whole group back
                            raise apsw.SQLError("the group's transaction has ended")
                        self.db.execute("ROLLBACK TO job")
                        self.db.execute("RELEASE job")
                    except apsw.Error:
                        self._grouped = False  # the group's earlier writes are lost: dbthread fails them
                        self._rollback()
                    raise
            return
        self._refuse_if_lost()
        with _translated_errors(self.path, self.db):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        self.check_file()

    def check_file(self) -> None:
        """After a commit: is the file at the path still the one this connection writes? A database
        deleted or replaced under the daemon takes commits into an unlinked file that a restart
        never sees (issue 20.5), so the write is not answered as stored, nor is anything after it.
        One stat per commit (a group's sends share it)."""
        if self.lost is None and _file_id(self.path) != self._file:
            state = "deleted" if not os.path.lexists(self.path) else "replaced by another file"
            self.lost = (
                f"the database {self.path} was {state} while the daemon ran; nothing is saved until the "
                "daemon restarts (claude-mailbox stop, then start) and opens the file at that path"
            )
        self._refuse_if_lost()

    def _refuse_if_lost(self) -> None:
        if self.lost is not None:
            raise StoreUnavailable(self.lost)

    def _rollback(self) -> None:
        """After a failed statement or COMMIT (disk full, I/O error) the transaction may still be open,
        or SQLite may already have rolled it back: either way, leave the connection usable."""
        if self.db.in_transaction:
            with contextlib.suppress(apsw.Error):
                self.db.execute("ROLLBACK")

    def _read(self, sql: str, bindings: tuple[Any, ...] | dict[str, Any] = ()) -> list[Any]:
        self._refuse_if_lost()
        with _translated_errors(self.path, self.db):
            return _rows(self.db, sql, bindings)

    def _migrate(self) -> None:
        with self._write() as db:
            version = int(_rows(db, "PRAGMA user_version")[0][0])
            if version > SCHEMA_VERSION:
                raise MailboxError(
                    f"{self.path} was written by a newer claude-mailbox (schema {version}); upgrade to open it"
                )
            for number, migration in _STEPS.items():
                if number > version:
                    migration(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version")[0][0])

    def checkpoint(self) -> None:
        """Move WAL pages into the database file without blocking writers; on this timer an idle
        daemon also notices that its file was deleted or replaced (/health says so)."""
        self.check_file()
        with _translated_errors(self.path, self.db):
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # --- mailboxes ----------------------------------------------------------------------------

    def _touch(self, db: apsw.Connection, name: str, at: str) -> None:
        db.execute(
            "INSERT INTO mailboxes (name, created_at, last_seen) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
            (name, at, at),
        )

    def _ensure(self, db: apsw.Connection, name: str, at: str) -> None:
        """Create a mailbox on first use without marking it as seen (a recipient is not present)."""
        db.execute(
            "INSERT INTO mailboxes (name, created_at, last_seen) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (name, at, at),
        )

    def touch(self, name: str) -> None:
        with self._write() as db:
            self._touch(db, name, now_iso())

    def alias_target(self, name: str) -> str | None:
        """The mailbox a /clear renamed `name` to (mail to the old name reaches it), else None."""
        rows = self._read("SELECT alias_of FROM mailboxes WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    # --- messages -----------------------------------------------------------------------------

    def send(self, request: SendRequest) -> Sent:
        """Store one message (model.SendRequest says what a repeated key and max_pending do)."""
        sender, recipient, body = request.sender, request.recipient, request.body
        max_pending, idempotency_key = request.max_pending, request.idempotency_key
        at = now_iso()
        with self._write() as db:
            if idempotency_key is not None:
                original = self._idempotent_original(db, sender, idempotency_key)
                if original is not None:
                    return Sent(original, repeated=True)
            # One statement for the recipient's alias, whether it exists and the target's kept pending
            # count (fewer statements per send: each is a GIL hand-off on the database thread).
            alias, known, pending = _rows(db, _SEND_TARGET, (recipient,))[0]
            target: str = alias or recipient
            if max_pending is not None and pending >= max_pending:
                raise MailboxFull(
                    f"mailbox {target!r} already holds {pending} unread messages (the limit); "
                    "it must read some before it can receive more"
                )
            self._touch(db, sender, at)
            if not known or alias:  # a new recipient (an alias's target is created here if it was forgotten)
                self._ensure(db, target, at)
            row = _rows(
                db,
                "INSERT INTO messages (sender, recipient, body, created_at, chars, quoted, urgent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (sender, target, body, at, len(body), len(json.dumps(body)), int(request.urgent)),
            )
            if idempotency_key is not None:
                db.execute(
                    "INSERT OR REPLACE INTO idempotency (sender, key, message_id, created_at) VALUES (?, ?, ?, ?)",
                    (sender, idempotency_key, row[0][0], at),
                )
        return Sent(Message(row[0][0], sender, target, body, at, urgent=request.urgent), repeated=False)

    def _idempotent_original(self, db: apsw.Connection, sender: str, key: str) -> Message | None:
        # Keys older than the window are forgotten here (an index range, usually empty): no timer needed.
        db.execute("DELETE FROM idempotency WHERE created_at < ?", (iso_before(IDEMPOTENCY_SECONDS),))
        rows = _rows(
            db,
            f"SELECT {_M_COLUMNS} FROM idempotency k JOIN messages m ON m.id = k.message_id"
            " WHERE k.sender = ? AND k.key = ?",
            (sender, key),
        )
        return rowmap.message(rows[0]) if rows else None

    @staticmethod
    def _pending_count(db: apsw.Connection, name: str) -> int:
        """Kept, not counted: one row per mailbox, maintained by triggers on `messages`."""
        rows = _rows(db, "SELECT pending FROM pending_counts WHERE mailbox = ?", (name,))
        return int(rows[0][0]) if rows else 0

    # --- delivery: lease, then acknowledge ------------------------------------------------------

    def lease(self, name: str, terms: LeaseTerms) -> Lease:
        """Hand out pending mail not under a live lease, oldest first, under a new lease of
        `terms.lease_seconds`, within `terms` (LeaseTerms). Only the chosen messages' bodies are read."""
        budget, cost, limit, max_bytes = terms.budget, terms.cost, terms.limit, terms.max_bytes
        skip_oversized = terms.skip_oversized
        at = now_iso()
        with self._write() as db:
            self._touch(db, name, at)
            self._expire(db, at)
            cost_sql = _COST_SQL[cost]
            fits = f" AND {cost_sql} <= :budget" if skip_oversized and budget is not None else ""
            free = (
                "FROM messages m INDEXED BY messages_pending"
                " WHERE m.recipient = :name AND m.delivered_at IS NULL AND NOT EXISTS"
                " (SELECT 1 FROM inflight f WHERE f.message_id = m.id AND f.lease_id IS NOT NULL)"
                + (" AND m.urgent = 1" if terms.urgent_only else "")
            )
            bindings = {"name": name, "budget": budget}
            chosen: list[int] = []
            used = used_bytes = 0
            selection = f"SELECT m.id, {cost_sql}, {_COST_SQL['json']} {free}{fits} ORDER BY m.id"
            for message_id, size, json_size in db.execute(selection, bindings):
                if limit is not None and len(chosen) >= limit:
                    break
                if budget is not None and used + size > budget:
                    break
                if max_bytes is not None and chosen and used_bytes + json_size > max_bytes:
                    break
                used += size
                used_bytes += json_size
                chosen.append(message_id)
            oversized = newest_oversized = 0
            if fits:
                found = _rows(db, f"SELECT count(*), coalesce(max(m.id), 0) {free} AND {cost_sql} > :budget", bindings)
                oversized, newest_oversized = int(found[0][0]), int(found[0][1])
            live = "SELECT coalesce(sum(count), 0) FROM leases WHERE mailbox = ? AND expires_at > ?"
            leased = int(_rows(db, live, (name, at))[0][0])
            remaining = self._pending_count(db, name) - leased - len(chosen)
            if not chosen:
                return Lease(None, name, None, [], max(0, remaining), oversized, newest_oversized)
            lease_id = secrets.token_urlsafe(18)
            expires_at = iso_after(terms.lease_seconds)
            db.execute(
                "INSERT INTO leases (id, mailbox, expires_at, created_at, count) VALUES (?, ?, ?, ?, ?)",
                (lease_id, name, expires_at, at, len(chosen)),
            )
            db.executemany(
                "INSERT INTO inflight (message_id, lease_id, attempts) VALUES (?, ?, 1)"
                " ON CONFLICT (message_id) DO UPDATE SET lease_id = excluded.lease_id, attempts = attempts + 1",
                [(message_id, lease_id) for message_id in chosen],
            )
            rows: list[Any] = db.execute(
                "SELECT m.id, m.sender, m.body, m.created_at, f.attempts, m.urgent FROM inflight f"
                " JOIN messages m ON m.id = f.message_id WHERE f.lease_id = ? ORDER BY m.id",
                (lease_id,),
            ).fetchall()
        messages = [rowmap.leased(row, name) for row in rows]
        return Lease(lease_id, name, expires_at, messages, max(0, remaining), oversized, newest_oversized)

    def ack(self, name: str, lease_id: str) -> int:
        """Mark a live lease's messages delivered; returns how many. A lease that is unknown,
        expired (its mail went back to the inbox) or another mailbox's is LeaseNotFound."""
        at = now_iso()
        with self._write() as db:
            found: list[Any] = db.execute("SELECT mailbox, expires_at FROM leases WHERE id = ?", (lease_id,)).fetchall()
            if not found or found[0][0] != name or found[0][1] <= at:
                raise LeaseNotFound(
                    f"no open lease {lease_id!r} for mailbox {name!r}: it was never given out, is already "
                    "acknowledged, or expired (then its messages went back to the inbox and come again)"
                )
            db.execute(
                "UPDATE messages SET delivered_at = ? WHERE id IN (SELECT message_id FROM inflight WHERE lease_id = ?)"
                " AND delivered_at IS NULL",
                (at, lease_id),
            )
            acked = int(db.changes())
            db.execute("DELETE FROM inflight WHERE lease_id = ?", (lease_id,))
            db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
        return acked

    def release(self, lease_id: str) -> None:
        """Give a lease's messages back at once (the answer carrying them could not be written)."""
        with self._write() as db:
            self._return(db, "lease_id = ?", (lease_id,))
            db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def expire_leases(self) -> list[str]:
        """Give the messages of every expired lease back (also done by each `lease`); the mailboxes
        they came back to."""
        at = now_iso()
        with self._write() as db:
            rows = db.execute("SELECT DISTINCT mailbox FROM leases WHERE expires_at <= ?", (at,)).fetchall()
            self._expire(db, at)
        return sorted(str(row[0]) for row in rows)

    def _expire(self, db: apsw.Connection, at: str) -> None:
        self._return(db, "lease_id IN (SELECT id FROM leases WHERE expires_at <= ?)", (at,))
        db.execute("DELETE FROM leases WHERE expires_at <= ?", (at,))

    @staticmethod
    def _return(db: apsw.Connection, condition: str, bindings: tuple[Any, ...]) -> None:
        db.execute(f"UPDATE inflight SET lease_id = NULL WHERE {condition}", bindings)

    def peek(self, name: str) -> tuple[int, str | None]:
        """(pending count, oldest pending time) without taking anything. Mail under a live lease is
        still pending: it is delivered only when acknowledged."""
        with _translated_errors(self.path, self.db):
            count = self._pending_count(self.db, name)
        if not count:
            return 0, None
        rows = self._read(
            "SELECT created_at FROM messages WHERE recipient = ? AND delivered_at IS NULL ORDER BY id LIMIT 1", (name,)
        )
        return count, rows[0][0] if rows else None

    def pending_counts(self) -> dict[str, int]:
        rows = self._read("SELECT mailbox, pending FROM pending_counts WHERE pending > 0")
        return {name: int(count) for name, count in rows}

    def message(self, message_id: int) -> Message | None:
        rows = self._read(f"SELECT {rowmap.MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        return rowmap.message(rows[0]) if rows else None

    def all_messages(self) -> list[Message]:
        """Every message, for audits and the fault tests."""
        return [rowmap.message(row) for row in self._read(f"SELECT {rowmap.MESSAGE_COLUMNS} FROM messages ORDER BY id")]

    def prune(self, delivered_before: str, *, dry_run: bool = False) -> int:
        """Delete delivered mail delivered before the given time. Pending mail is never pruned."""
        condition = "delivered_at IS NOT NULL AND delivered_at < ?"
        if dry_run:
            return int(self._read(f"SELECT count(*) FROM messages WHERE {condition}", (delivered_before,))[0][0])
        with self._write() as db:
            db.execute(f"DELETE FROM messages WHERE {condition}", (delivered_before,))
            return int(db.changes())

    def forget_mailbox(self, name: str) -> bool:
        """Delete a mailbox that only ever wrote to itself (doctor's smoke test), with those messages,
        so it is not listed as a peer afterwards. Refused (False) for a mailbox that a session owns,
        that is an alias, that has pending mail, or that exchanged mail with anyone else."""
        refusals = (
            "SELECT 1 FROM sessions WHERE mailbox = :name LIMIT 1",
            "SELECT 1 FROM mailboxes WHERE name = :name AND alias_of IS NOT NULL",
            "SELECT 1 FROM pending_counts WHERE mailbox = :name AND pending > 0",
            "SELECT 1 FROM messages WHERE (sender = :name OR recipient = :name) AND sender != recipient LIMIT 1",
        )
        with self._write() as db:
            if any(db.execute(sql, {"name": name}).fetchall() for sql in refusals):
                return False
            db.execute("DELETE FROM messages WHERE sender = ? AND recipient = ?", (name, name))
            db.execute("DELETE FROM mailboxes WHERE name = ?", (name,))
            return bool(db.changes())

    def mailboxes(self) -> list[Mailbox]:
        """Every mailbox with its pending count and its newest session (if it belongs to one)."""
        rows = self._read(
            """
            SELECT m.name, m.created_at, m.last_seen, m.alias_of,
                   coalesce((SELECT pending FROM pending_counts WHERE mailbox = m.name), 0),
                   s.session_id, s.claude_pid, s.pid_started, s.project_dir, s.ended_at, s.collaborate
            FROM mailboxes m
            LEFT JOIN sessions s ON s.session_id = (
                SELECT session_id FROM sessions WHERE mailbox = m.name ORDER BY started_at DESC LIMIT 1)
            ORDER BY m.last_seen DESC, m.name
            """
        )
        return [rowmap.mailbox(row) for row in rows]

    # --- sessions ----------------------------------------------------------------------------

    def session(self, session_id: str) -> Session | None:
        rows = self._read(f"SELECT {rowmap.SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,))
        return rowmap.session(rows[0]) if rows else None

    def session_for_pid(self, claude_pid: int) -> Session | None:
        """The newest session of a Claude Code process (after /clear, the new one)."""
        rows = self._read(
            f"SELECT {rowmap.SESSION_COLUMNS} FROM sessions WHERE claude_pid = ? ORDER BY started_at DESC, rowid DESC"
            " LIMIT 1",
            (claude_pid,),
        )
        return rowmap.session(rows[0]) if rows else None

    def session_for_mailbox(self, mailbox: str) -> Session | None:
        rows = self._read(
            f"SELECT {rowmap.SESSION_COLUMNS} FROM sessions WHERE mailbox = ? ORDER BY started_at DESC, rowid DESC"
            " LIMIT 1",
            (mailbox,),
        )
        return rowmap.session(rows[0]) if rows else None

    def register_session(self, start: Registration, rename_from: str | None = None) -> Rename | None:
        """Record a session start. With `rename_from` (after /clear), move that mailbox's pending mail
        here and leave the old name as an alias, so nothing sent to either name is lost."""
        at = now_iso()
        session_id, mailbox = start.session_id, start.mailbox
        with self._write() as db:
            self._touch(db, mailbox, at)
            db.execute(
                """
                INSERT INTO sessions (session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source,
                                      started_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (session_id) DO UPDATE SET
                    mailbox = excluded.mailbox, claude_pid = excluded.claude_pid,
                    pid_started = excluded.pid_started, cwd = excluded.cwd, project_dir = excluded.project_dir,
                    source = excluded.source, started_at = excluded.started_at, ended_at = NULL, end_reason = NULL
                """,
                (*start.row(), at),
            )
            # A resumed mailbox is live again: it is no longer an alias of anything.
            db.execute("UPDATE mailboxes SET alias_of = NULL WHERE name = ?", (mailbox,))
            if not rename_from or rename_from == mailbox:
                return None
            db.execute(
                "UPDATE messages SET recipient = ? WHERE recipient = ? AND delivered_at IS NULL",
                (mailbox, rename_from),
            )
            moved = db.changes()
            self._ensure(db, rename_from, at)
            db.execute(
                "UPDATE mailboxes SET alias_of = ? WHERE name = ? OR alias_of = ?", (mailbox, rename_from, rename_from)
            )
            # Collaboration mode follows the conversation into its new mailbox.
            db.execute(
                "UPDATE sessions SET collaborate = (SELECT max(collaborate) FROM sessions WHERE mailbox = ?)"
                " WHERE session_id = ?",
                (rename_from, session_id),
            )
            db.execute("UPDATE sessions SET collaborate = 0 WHERE mailbox = ?", (rename_from,))
        return Rename(rename_from, mailbox, moved)

    def end_session(self, session_id: str, reason: str | None) -> Session | None:
        with self._write() as db:
            # After /clear (reason "clear") collaboration mode moves to the new session at its SessionStart.
            db.execute(
                "UPDATE sessions SET ended_at = ?, end_reason = ?,"
                " collaborate = CASE WHEN ? = 'clear' THEN collaborate ELSE 0 END WHERE session_id = ?",
                (now_iso(), reason, reason, session_id),
            )
        return self.session(session_id)

    def set_collaborate(self, mailbox: str, on: bool) -> bool:
        """Turn collaboration mode on/off for the session that owns `mailbox`. False if none does."""
        with self._write() as db:
            db.execute(
                "UPDATE sessions SET collaborate = ? WHERE session_id = ("
                " SELECT session_id FROM sessions WHERE mailbox = ? ORDER BY started_at DESC LIMIT 1)",
                (1 if on else 0, mailbox),
            )
            return db.changes() > 0

    # --- the human view (issue 14): read-only, never leases or acknowledges ----------------------

    def feed(self, after_id: int | None, limit: int, only: FeedFilter | None = None) -> tuple[list[Message], int]:
        """Mail in id order for people watching (the web page, `tail`), and the cursor to continue after.

        `after_id` None: the newest `limit` messages; else the oldest `limit` after it (pages forward).
        Reads only: `delivered_at` tells whether the recipient has read a message; nothing is taken.
        """
        name, peer, since = (only.name, only.peer, only.since) if only else (None, None, None)
        with _translated_errors(self.path, self.db):
            # The newest id first, and nothing newer read: a send between the two reads is not skipped.
            newest = int(_rows(self.db, "SELECT coalesce(max(id), 0) FROM messages")[0][0])
            where = ["id <= :newest"]
            if after_id is not None:
                where.append("id > :after")
            if name is not None and peer is not None:
                where.append("((sender = :name AND recipient = :peer) OR (sender = :peer AND recipient = :name))")
            elif name is not None:
                where.append("(sender = :name OR recipient = :name)")
            if since is not None:
                where.append("created_at >= :since")
            order = "ASC" if after_id is not None else "DESC"
            rows = _rows(
                self.db,
                f"SELECT {rowmap.MESSAGE_COLUMNS} FROM messages"
                f" WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT :limit",
                {"newest": newest, "after": after_id, "limit": limit, "name": name, "peer": peer, "since": since},
            )
        messages = [rowmap.message(row) for row in rows]
        if order == "DESC":
            messages.reverse()
            return messages, newest
        full_page = limit > 0 and len(messages) == limit
        return messages, messages[-1].id if full_page else max(newest, after_id or 0)


# --- `import-sqlite` (setup/importer.py): the SQLite side of the move into PostgreSQL ----------------

IMPORT_MARKER = "pg_import"  # the file's note of its import: one row, committed before the copy
IMPORT_BUSY_TIMEOUT_MS = 5000  # a starting daemon holds the write lock briefly (its migration)


class ImportFile:
    """A SQLite mailbox being copied into PostgreSQL: its rows are read on a read-only connection (an
    older file is first migrated by Store, as its next start would); the only write is the import's
    note, on a second connection that also holds the write lock while the copy runs, so a daemon
    started meanwhile cannot take mail that would stay behind. Failures name the file; `busy_hint`
    says what to do when another process holds it."""

    def __init__(self, path: Path, busy_hint: str) -> None:
        self.path = path
        self._hint = busy_hint
        self._writer: apsw.Connection | None = None
        self._reader = self._open_reader()

    @contextlib.contextmanager
    def _errors(self, *, writing: bool = False) -> Iterator[None]:
        """SQLite failures as one line naming the file (`writing`: the import's note in it)."""
        path = self.path
        try:
            yield
        except MailboxError:
            raise
        except apsw.BusyError:
            raise StoreBusy(f"{path} is locked by another process (a daemon using it?): {self._hint}") from None
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

    def _open_reader(self) -> apsw.Connection:
        path = self.path
        with self._errors():
            db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            with self._errors():
                tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                version = int(_rows(db, "PRAGMA user_version")[0][0])
            if not {"mailboxes", "messages"} <= tables:
                raise InvalidInput(f"{path} is not a claude-mailbox database (it has no mailboxes and messages tables)")
            if version > SCHEMA_VERSION:
                raise InvalidInput(
                    f"{path} was written by a newer claude-mailbox (schema {version}); upgrade to import it"
                )
            if version < SCHEMA_VERSION:
                db.close()
                Store(path).close()  # the daemon's migrations: its leases, counts and key tables exist after
                with self._errors():
                    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
            return db
        except BaseException:
            db.close()
            raise

    def marker(self, *, on_writer: bool = False) -> ImportMarker | None:
        """The file's import note, None before any run (read on the writing connection: under its lock)."""
        db = self._writer if on_writer and self._writer is not None else self._reader
        with self._errors():
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (IMPORT_MARKER,)).fetchall():
                return None
            rows = _rows(db, f"SELECT import_id, database, started_at, finished_at FROM {IMPORT_MARKER}")
        return ImportMarker(*rows[0]) if rows else None

    def open_writer(self) -> None:
        with self._errors(writing=True):
            self._writer = apsw.Connection(str(self.path))
        self._writer.set_busy_timeout(IMPORT_BUSY_TIMEOUT_MS)

    def _writing(self) -> apsw.Connection:
        if self._writer is None:
            raise RuntimeError("open_writer() first")
        return self._writer

    def claim(self, database: str, check: Callable[[ImportMarker | None], None]) -> str:
        """The id of this file's import into `database`, noted (and committed) before the copy: a new
        one, or that of a run that did not finish (its copy may have committed: PostgreSQL's
        sqlite_imports row tells). `check` may refuse the note found, under the write lock."""
        writer = self._writing()
        with self._errors(writing=True):
            writer.execute("BEGIN IMMEDIATE")
            try:
                writer.execute(
                    f"CREATE TABLE IF NOT EXISTS {IMPORT_MARKER} (import_id TEXT PRIMARY KEY, database TEXT NOT NULL,"
                    " started_at TEXT NOT NULL, finished_at TEXT, counts TEXT)"
                )
                marker = self.marker(on_writer=True)
                check(marker)
                if marker is None:
                    import_id = secrets.token_hex(16)
                    writer.execute(
                        f"INSERT INTO {IMPORT_MARKER} (import_id, database, started_at) VALUES (?, ?, ?)",
                        (import_id, database, now_iso()),
                    )
                else:
                    import_id = marker.import_id
                writer.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(apsw.Error):
                    if writer.in_transaction:
                        writer.execute("ROLLBACK")
                raise
        return import_id

    def lock(self) -> None:
        """Take the write lock until finish() or abandon(): no daemon writes this file meanwhile."""
        with self._errors(writing=True):
            self._writing().execute("BEGIN IMMEDIATE")

    def snapshot(self) -> ImportSnapshot:
        fresh_keys = iso_before(IDEMPOTENCY_SECONDS)  # older keys no longer answer "repeated"
        db = self._reader
        with self._errors():
            return ImportSnapshot(
                mailboxes=_rows(db, "SELECT name, created_at, last_seen, alias_of FROM mailboxes ORDER BY rowid"),
                sessions=_rows(
                    db,
                    "SELECT session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source, started_at,"
                    " ended_at, end_reason, collaborate FROM sessions ORDER BY started_at, rowid",
                ),
                # Attempts survive, leases do not: mail under a lease is pending again, as after its expiry.
                messages=_rows(
                    db,
                    "SELECT m.id, m.sender, m.recipient, m.body, m.created_at, m.delivered_at, coalesce(f.attempts, 0),"
                    " m.urgent FROM messages m LEFT JOIN inflight f ON f.message_id = m.id ORDER BY m.id",
                ),
                keys=_rows(
                    db,
                    "SELECT sender, key, message_id, created_at FROM idempotency WHERE created_at >= ?",
                    (fresh_keys,),
                ),
            )

    def finish(self, import_id: str, finished_at: str, counts: str) -> None:
        """Note the copy as committed (`counts`: its JSON summary) and release the lock."""
        writer = self._writing()
        with self._errors(writing=True):
            writer.execute(
                f"UPDATE {IMPORT_MARKER} SET finished_at = ?, counts = ? WHERE import_id = ?",
                (finished_at, counts, import_id),
            )
            writer.execute("COMMIT")

    def abandon(self, import_id: str, *, rolled_back: bool) -> None:
        """Release the lock after a failure. A copy certainly `rolled_back` frees the note (under our
        lock), so the file may go to another database; otherwise the note stays for the next run."""
        writer = self._writing()
        with contextlib.suppress(apsw.Error):
            if rolled_back and writer.in_transaction:
                writer.execute(f"DELETE FROM {IMPORT_MARKER} WHERE import_id = ? AND finished_at IS NULL", (import_id,))
                writer.execute("COMMIT")
            elif writer.in_transaction:
                writer.execute("ROLLBACK")

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        self.close_writer()
        self._reader.close()
