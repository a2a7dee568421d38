"""The mailbox's domain values and time helpers, shared by both stores, the service, the transports
and the CLI. Standard library only: the CLI and the hook fast path import it (tests/test_imports.py),
so it must never pull in aiohttp, mcp, apsw or asyncpg.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal


def now_iso() -> str:
    """UTC with milliseconds; lexicographic order is time order."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"  # 2x faster than strftime


def iso_before(seconds: float) -> str:
    moment = datetime.fromtimestamp(time.time() - seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso_after(seconds: float) -> str:
    return iso_before(-seconds)


IDEMPOTENCY_SECONDS = 24 * 3600  # a repeated send with the same key within this window stores nothing
ISO_LENGTH = len("2026-01-01T00:00:00.000Z")  # every created_at is now_iso()'s fixed-width form


# --- messages -------------------------------------------------------------------------------------

# What one message costs in a JSON answer beyond its variable parts (the body's JSON literal, the
# sender, the id's digits): the keys, createdAt, the delivery fields (redelivered, attempts) and the
# list separator, with room for a long attempts count. The stores budget max_bytes with it in SQL,
# so it must never be less than what to_json really produces (tests/test_model.py checks).
JSON_OVERHEAD = 120
URGENT_JSON_COST = len(', "urgent": true')  # what an urgent message adds to its JSON (the stores add it in SQL)


@dataclass(frozen=True)
class Message:
    id: int
    sender: str
    recipient: str
    body: str
    created_at: str
    delivered_at: str | None = None
    attempts: int = 0  # handed out this many times (a lease that expired gave it back); 0: not handed out
    urgent: bool = False  # the sender asked for it to reach the recipient at once (it may wake an idle session)

    def to_json(self) -> dict[str, Any]:
        """The wire shape (the seed's camelCase); mail handed out before (its lease expired unacknowledged)
        also says so, with its delivery count. Its size is budgeted with JSON_OVERHEAD."""
        data: dict[str, Any] = {"id": self.id, "from": self.sender, "body": self.body, "createdAt": self.created_at}
        if self.urgent:
            data["urgent"] = True
        if self.attempts > 1:
            data["redelivered"] = True
            data["attempts"] = self.attempts
        return data


# What a message costs against a budget, computed by the stores in SQL over the pending index (no
# body is read): "chars" the body's characters (maxChars, the seed's meaning); "rendered" one hook
# line (hooktext.render_message + newline, hooktext.RENDERED_OVERHEAD); "json" its bytes in a JSON
# answer (ensure_ascii, with the delivery fields: JSON_OVERHEAD), so a page of them stays within
# max_response_bytes. The variable part of the last two is the same: the body's JSON literal
# (the `quoted` column), the sender and the id's digits.
Cost = Literal["chars", "rendered", "json"]


@dataclass(frozen=True)
class SendRequest:
    """What a send asks of a store's `send`: one value, so every store implementation names it once.

    `max_pending` refuses the send (MailboxFull) when the recipient already holds that many unread
    messages. With an `idempotency_key` this sender used within IDEMPOTENCY_SECONDS, the first
    message is returned (`Sent.repeated`) and nothing is stored."""

    sender: str
    recipient: str
    body: str
    max_pending: int | None = None
    idempotency_key: str | None = None
    urgent: bool = False


@dataclass(frozen=True)
class Sent:
    message: Message
    repeated: bool  # an idempotency key seen within the window: the original, nothing new stored


@dataclass(frozen=True)
class LeaseTerms:
    """What a read asks of a store's `lease`: one value, so every store implementation names it once.

    With a `budget`, messages are taken in order while their summed `cost` fits; the rest stay for
    the next read. A first message that alone exceeds the budget is left too (for a reader without
    that limit). With `skip_oversized`, messages that can never fit are stepped over and counted in
    `oversized`. `limit` caps the count. `max_bytes` bounds the JSON answer (the first message is
    always taken, so paging makes progress). `urgent_only` takes only urgent mail (the wake-up of a
    session that does not collaborate)."""

    lease_seconds: float
    budget: int | None = None
    cost: Cost = "chars"
    limit: int | None = None
    skip_oversized: bool = False
    max_bytes: int | None = None
    urgent_only: bool = False


@dataclass(frozen=True)
class Lease:
    """Messages handed out under a lease: delivered only when `ack` names `id` before `expires_at`."""

    id: str | None  # None when nothing was taken (no lease to acknowledge)
    mailbox: str
    expires_at: str | None
    messages: list[Message]
    remaining: int  # pending and not under a live lease after this call (left for the next read)
    oversized: int = 0  # of those, skipped because each alone exceeds the budget (skip_oversized)
    newest_oversized: int = 0  # the largest id among those (the Stop hook tells of each one once)


@dataclass(frozen=True)
class FeedFilter:
    """Which mail a feed shows: `name` from or to it; with `peer` too, only between the two;
    `since` created at or after (ISO, UTC)."""

    name: str | None = None
    peer: str | None = None
    since: str | None = None


# --- mailboxes and sessions -----------------------------------------------------------------------


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
    # PostgreSQL only (several machines): the host whose daemon registered the session, and when that
    # daemon last said it is running (pgstore's heartbeat). None on SQLite: everything is this host.
    host: str | None = None
    host_seen: str | None = None


@dataclass(frozen=True)
class Registration:
    """What a SessionStart registers: one value, so every store implementation names it once."""

    session_id: str
    mailbox: str
    claude_pid: int | None
    pid_started: float | None
    cwd: str | None
    project_dir: str | None
    source: str | None

    def row(self) -> tuple[str, str, int | None, float | None, str | None, str | None, str | None]:
        """The values in the sessions table's column order."""
        return (
            self.session_id,
            self.mailbox,
            self.claude_pid,
            self.pid_started,
            self.cwd,
            self.project_dir,
            self.source,
        )


@dataclass(frozen=True)
class Session(Registration):
    """A registered session: what its SessionStart said, and what happened since."""

    started_at: str
    ended_at: str | None
    collaborate: bool


@dataclass(frozen=True)
class Rename:
    old: str
    new: str
    moved: int  # pending messages moved to the new name


# --- the database schema: one numbered list that both stores follow -----------------------------


@dataclass(frozen=True)
class SchemaStep:
    """One schema change. Both stores number it the same and record the highest step they took
    (SQLite in `PRAGMA user_version`, PostgreSQL in its `mailbox_schema` table); `/health` reports it."""

    version: int
    name: str  # store.py's migration is `_migration_<version>_<name>`
    what: str
    sqlite: bool = True  # False: only PostgreSQL takes it (SQLite skips its number)


SCHEMA_STEPS: tuple[SchemaStep, ...] = (
    SchemaStep(1, "messages", "mailboxes created on first use, messages kept after delivery"),
    SchemaStep(2, "sessions", "Claude Code sessions (pid, liveness, collaboration) and the aliases /clear leaves"),
    SchemaStep(3, "delivery", "leases then acknowledgement, kept pending counts, body sizes, idempotency keys"),
    SchemaStep(4, "threads", "the feed's thread view from an index: messages (sender, recipient, id)"),
    SchemaStep(5, "sqlite_imports", "import-sqlite's record of each copied SQLite mailbox", sqlite=False),
    SchemaStep(6, "urgent", "urgent mail: a flag on the message, in the pending index"),
)

StoreKind = Literal["sqlite", "postgres"]


def schema_steps(store: StoreKind) -> list[SchemaStep]:
    """The steps a store takes, in order."""
    return [step for step in SCHEMA_STEPS if store == "postgres" or step.sqlite]


def latest_schema(store: StoreKind) -> int:
    """The version a store's database has once every step it takes is done."""
    return schema_steps(store)[-1].version


# --- `import-sqlite`: one SQLite mailbox copied into PostgreSQL (setup/importer.py) -----------------


@dataclass(frozen=True)
class ImportSnapshot:
    """A SQLite mailbox's rows, read under its write lock, for PgStore.import_copy."""

    mailboxes: list[tuple[Any, ...]]  # name, created_at, last_seen, alias_of
    # session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source, started_at, ended_at,
    # end_reason, collaborate
    sessions: list[tuple[Any, ...]]
    messages: list[tuple[Any, ...]]  # id, sender, recipient, body, created_at, delivered_at, attempts
    keys: list[tuple[Any, ...]]  # sender, key, message_id, created_at


@dataclass(frozen=True)
class ImportMarker:
    """The SQLite file's note of its import (its pg_import row): which database, since when, and
    when the copy was known committed (None: unfinished)."""

    import_id: str
    database: str
    started_at: str
    finished_at: str | None


@dataclass(frozen=True)
class ImportCounts:
    """What a copy put into PostgreSQL. `recovered`: an earlier run with the same id had committed
    it already; nothing was copied this time."""

    imported_at: str
    mailboxes: int
    sessions: int
    pending: int
    delivered: int
    keys: int
    recovered: bool = False


@dataclass
class ImportProgress:
    """How far the PostgreSQL side of a copy got. `copying`: PostgreSQL had no copy under this id and
    this run's transaction is writing one; a failure before `may_have_committed` certainly rolled it back."""

    copying: bool = False
    may_have_committed: bool = False

    @property
    def rolled_back(self) -> bool:
        return self.copying and not self.may_have_committed
