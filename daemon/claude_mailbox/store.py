"""The only module that touches SQLite (through APSW). It owns every SQL statement and the migrations.

Concurrency: every write runs inside `BEGIN IMMEDIATE`, so several processes may share one database
file and each message is still delivered exactly once. Pending lookups use a partial index on
undelivered mail, so their cost does not grow with the delivered history.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw

from claude_mailbox.errors import MailboxError, MailboxFull, StorageFull, StoreBusy, StoreUnavailable
from claude_mailbox.messages import Message


def now_iso() -> str:
    """UTC with milliseconds; lexicographic order is time order."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"  # 2x faster than strftime


def iso_before(seconds: float) -> str:
    moment = datetime.fromtimestamp(time.time() - seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Consumed:
    messages: list[Message]
    remaining: int  # still pending after this call (left for the next check)
    oversized: int = 0  # of those, skipped because each alone exceeds the budget (skip_oversized)


@dataclass(frozen=True)
class Mailbox:
    name: str
    created_at: str
    last_seen: str
    pending: int
    alias_of: str | None
    session_id: str | None
    claude_pid: int | None
    pid_started: float | None
    project_dir: str | None
    ended_at: str | None
    collaborate: bool


@dataclass(frozen=True)
class Session:
    session_id: str
    mailbox: str
    claude_pid: int | None
    pid_started: float | None
    cwd: str | None
    project_dir: str | None
    source: str | None
    started_at: str
    ended_at: str | None
    collaborate: bool


@dataclass(frozen=True)
class Rename:
    old: str
    new: str
    moved: int  # pending messages moved to the new name


# --- migrations: ordered, each idempotent, recorded in PRAGMA user_version ----------------------


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


MIGRATIONS: list[Callable[[apsw.Connection], None]] = [_migration_1_messages, _migration_2_sessions]
SCHEMA_VERSION = len(MIGRATIONS)


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
        raise StoreUnavailable(f"{path} is read-only; nothing was saved") from None
    except apsw.CantOpenError as exc:
        raise StoreUnavailable(f"cannot open {path}: {exc} (is {path.parent} writable?)") from None
    except apsw.IOError as exc:
        # SQLite reports a write refused by the file-size limit (EFBIG) as a plain I/O error.
        failed = db.system_errno if db is not None else 0
        if failed == errno.EFBIG:
            raise StorageFull(f"{path} reached the file-size limit (ulimit -f); nothing was saved") from None
        if failed == errno.ENOSPC:
            raise _disk_full(path) from None
        raise StoreUnavailable(f"cannot write {path}: {exc}") from None


def _disk_full(path: Path) -> StorageFull:
    return StorageFull(f"the disk holding {path} is full; nothing was saved (free some space, then retry)")


class Store:
    """A connection to the mailbox database. Not shared between threads: give each its own."""

    def __init__(self, path: Path, *, durability: str = "normal", busy_timeout_ms: int = 2000) -> None:
        self.path = path
        with _translated_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
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
            self._migrate()

    def close(self) -> None:
        self.db.close()

    # --- transactions ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[apsw.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so concurrent consumers never interleave."""
        with _translated_errors(self.path, self.db):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        """After a failed statement or COMMIT (disk full, I/O error) the transaction may still be open,
        or SQLite may already have rolled it back: either way, leave the connection usable."""
        if self.db.in_transaction:
            with contextlib.suppress(apsw.Error):
                self.db.execute("ROLLBACK")

    def _read(self, sql: str, bindings: tuple[Any, ...] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with _translated_errors(self.path, self.db):
            return self.db.execute(sql, bindings).fetchall()

    def _migrate(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchall()[0][0]
            if version > SCHEMA_VERSION:
                raise MailboxError(
                    f"{self.path} was written by a newer claude-mailbox (schema {version}); upgrade to open it"
                )
            for migration in MIGRATIONS[version:]:
                migration(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version")[0][0])

    def checkpoint(self) -> None:
        """Move WAL pages into the database file without blocking writers."""
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

    def resolve(self, name: str) -> str:
        """Follow the alias a /clear left behind: mail to the old name reaches the new one."""
        rows = self._read("SELECT alias_of FROM mailboxes WHERE name = ?", (name,))
        return rows[0][0] if rows and rows[0][0] else name

    def alias_target(self, name: str) -> str | None:
        rows = self._read("SELECT alias_of FROM mailboxes WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    # --- messages -----------------------------------------------------------------------------

    def send(self, sender: str, recipient: str, body: str, *, max_pending: int | None = None) -> Message:
        at = now_iso()
        with self._write() as db:
            alias = db.execute("SELECT alias_of FROM mailboxes WHERE name = ?", (recipient,)).fetchall()
            target = alias[0][0] if alias and alias[0][0] else recipient
            if max_pending is not None:
                pending = self._pending_count(db, target)
                if pending >= max_pending:
                    raise MailboxFull(
                        f"mailbox {target!r} already holds {pending} unread messages (the limit); "
                        "it must read some before it can receive more"
                    )
            self._touch(db, sender, at)
            self._ensure(db, target, at)
            row = db.execute(
                "INSERT INTO messages (sender, recipient, body, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                (sender, target, body, at),
            ).fetchall()
        return Message(row[0][0], sender, target, body, at)

    @staticmethod
    def _pending_count(db: apsw.Connection, name: str) -> int:
        return int(
            db.execute(
                "SELECT count(*) FROM messages WHERE recipient = ? AND delivered_at IS NULL", (name,)
            ).fetchall()[0][0]
        )

    def consume(
        self,
        name: str,
        *,
        budget: int | None = None,
        cost: Callable[[Message], int] = lambda message: len(message.body),
        limit: int | None = None,
        skip_oversized: bool = False,
    ) -> Consumed:
        """Mark pending mail delivered and return it, oldest first, exactly once across processes.

        With a `budget`, messages are taken in order while their summed `cost` fits (the hook's
        context cap); the rest stay pending for the next call. A first message that alone exceeds
        the budget is left pending too, for a reader without that limit. With `skip_oversized`,
        such a message (one that can never fit) is stepped over instead of blocking the mail
        behind it, and counted in `oversized`.
        """
        at = now_iso()
        with self._write() as db:
            self._touch(db, name, at)
            rows = db.execute(
                "SELECT id, sender, body, created_at FROM messages"
                " WHERE recipient = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
                (name, limit if limit is not None else -1),
            ).fetchall()
            taken: list[Message] = []
            used = oversized = 0
            for message_id, sender, body, created_at in rows:
                message = Message(message_id, sender, name, body, created_at, at)
                if budget is not None:
                    size = cost(message)
                    if skip_oversized and size > budget:
                        oversized += 1
                        continue
                    used += size
                    if used > budget:
                        break
                taken.append(message)
            if taken:
                db.executemany("UPDATE messages SET delivered_at = ? WHERE id = ?", [(at, m.id) for m in taken])
            remaining = self._pending_count(db, name)
        return Consumed(taken, remaining, oversized)

    def undeliver(self, message_ids: list[int]) -> None:
        """Put messages back in the inbox (a watcher vanished before it could receive them)."""
        with self._write() as db:
            db.executemany("UPDATE messages SET delivered_at = NULL WHERE id = ?", [(i,) for i in message_ids])

    def peek(self, name: str) -> tuple[int, str | None]:
        """(pending count, oldest pending time) without consuming anything."""
        rows = self._read(
            "SELECT count(*), min(created_at) FROM messages WHERE recipient = ? AND delivered_at IS NULL", (name,)
        )
        return int(rows[0][0]), rows[0][1]

    def pending_counts(self) -> dict[str, int]:
        rows = self._read("SELECT recipient, count(*) FROM messages WHERE delivered_at IS NULL GROUP BY recipient")
        return {name: int(count) for name, count in rows}

    def message(self, message_id: int) -> Message | None:
        rows = self._read(
            "SELECT id, sender, recipient, body, created_at, delivered_at FROM messages WHERE id = ?", (message_id,)
        )
        return Message(*rows[0]) if rows else None

    def all_messages(self) -> list[Message]:
        """Every message, for audits and the fault tests."""
        return [
            Message(*row)
            for row in self._read(
                "SELECT id, sender, recipient, body, created_at, delivered_at FROM messages ORDER BY id"
            )
        ]

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
            "SELECT 1 FROM messages WHERE recipient = :name AND delivered_at IS NULL LIMIT 1",
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
                   (SELECT count(*) FROM messages WHERE recipient = m.name AND delivered_at IS NULL),
                   s.session_id, s.claude_pid, s.pid_started, s.project_dir, s.ended_at, s.collaborate
            FROM mailboxes m
            LEFT JOIN sessions s ON s.session_id = (
                SELECT session_id FROM sessions WHERE mailbox = m.name ORDER BY started_at DESC LIMIT 1)
            ORDER BY m.last_seen DESC, m.name
            """
        )
        return [
            Mailbox(
                name=name,
                created_at=created_at,
                last_seen=last_seen,
                pending=int(pending),
                alias_of=alias_of,
                session_id=session_id,
                claude_pid=claude_pid,
                pid_started=pid_started,
                project_dir=project_dir,
                ended_at=ended_at,
                collaborate=bool(collaborate),
            )
            for (
                name,
                created_at,
                last_seen,
                alias_of,
                pending,
                session_id,
                claude_pid,
                pid_started,
                project_dir,
                ended_at,
                collaborate,
            ) in rows
        ]

    # --- sessions ----------------------------------------------------------------------------

    _SESSION_COLUMNS = (
        "session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source, started_at, ended_at, collaborate"
    )

    def _session_from(self, row: tuple[Any, ...]) -> Session:
        *head, collaborate = row
        return Session(*head, collaborate=bool(collaborate))

    def session(self, session_id: str) -> Session | None:
        rows = self._read(f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,))
        return self._session_from(rows[0]) if rows else None

    def session_for_pid(self, claude_pid: int) -> Session | None:
        """The newest session of a Claude Code process (after /clear, the new one)."""
        rows = self._read(
            f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE claude_pid = ? ORDER BY started_at DESC, rowid DESC"
            " LIMIT 1",
            (claude_pid,),
        )
        return self._session_from(rows[0]) if rows else None

    def session_for_mailbox(self, mailbox: str) -> Session | None:
        rows = self._read(
            f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE mailbox = ? ORDER BY started_at DESC, rowid DESC"
            " LIMIT 1",
            (mailbox,),
        )
        return self._session_from(rows[0]) if rows else None

    def register_session(
        self,
        *,
        session_id: str,
        mailbox: str,
        claude_pid: int | None,
        pid_started: float | None,
        cwd: str | None,
        project_dir: str | None,
        source: str | None,
        rename_from: str | None = None,
    ) -> Rename | None:
        """Record a session start. With `rename_from` (after /clear), move that mailbox's pending mail
        here and leave the old name as an alias, so nothing sent to either name is lost."""
        at = now_iso()
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
                (session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source, at),
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
