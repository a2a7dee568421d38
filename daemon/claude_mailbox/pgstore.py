"""The store on PostgreSQL (asyncpg), for sessions on several machines sharing one database.

Same behaviour as store.Store on SQLite (the contract tests run against both); the differences are
how it is made safe with several daemons writing at once:
- A read takes its messages with `SELECT ... FOR UPDATE SKIP LOCKED`, and the lease lives on the
  message row itself (`lease_id`, `lease_expires`), so a concurrent reader re-checks it on the very
  row it locks: no message is handed to two live leases. An expired lease's mail is pending again
  for the next read; every daemon also sweeps expired leases (`expire_leases`, SKIP LOCKED: one
  daemon wins each) and NOTIFYs, so waiters wake even when the daemon that took the lease died.
- Pending counts are kept per mailbox by triggers, as on SQLite. Idempotency keys are serialized per
  (sender, key) with a transaction-scoped advisory lock.
- Every change that can wake a reader also NOTIFYs channel `claude_mailbox` (from the trigger, so
  it costs no round trip); each daemon LISTENs and wakes its own waiters: a `watch --block` on
  machine B wakes when machine A's daemon stores mail for it. A daemon skips its own notifications
  (it already woke its waiters): the payload names the sender by `application_name`.
- Migrations are SQL scripts numbered by model.SCHEMA_STEPS (the same numbers as SQLite's), recorded
  in the `mailbox_schema` table, run under an advisory lock so two daemons starting together migrate once.
A lost connection is StoreUnavailable (503); the pool opens new connections on the next request
and the listener reconnects by itself.

asyncpg, not psycopg 3: measured on this machine (16 tasks on one event loop, insert + pg_notify
transactions against a local server) asyncpg ran 1,700-1,750/s and psycopg's AsyncConnectionPool
1,130-1,470/s; asyncpg also ships its binary wheels with no extra package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg  # ships no type information: see [[tool.mypy.overrides]] in pyproject.toml

from claude_mailbox import rowmap
from claude_mailbox.config import redact_url, scrub
from claude_mailbox.errors import LeaseNotFound, MailboxError, MailboxFull, StorageFull, StoreBusy, StoreUnavailable
from claude_mailbox.hooktext import RENDERED_OVERHEAD, URGENT_RENDERED_COST
from claude_mailbox.model import (
    IDEMPOTENCY_SECONDS,
    JSON_OVERHEAD,
    URGENT_JSON_COST,
    Cost,
    FeedFilter,
    ImportCounts,
    ImportProgress,
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
)
from claude_mailbox.storeapi import RemoteWake

log = logging.getLogger("claude_mailbox.pgstore")

CHANNEL = "claude_mailbox"
# What a message costs against a budget (model.Cost), as in store.py; an id's digits are
# length(id::text) here (SQLite's length() takes integers).
_COSTS: dict[Cost, str] = {
    "chars": "m.chars",
    "rendered": (
        f"m.quoted + length(m.sender) + length(m.id::text) + {RENDERED_OVERHEAD} + {URGENT_RENDERED_COST} * m.urgent"
    ),
    "json": f"m.quoted + length(m.sender) + length(m.id::text) + {JSON_OVERHEAD} + {URGENT_JSON_COST} * m.urgent",
}
_MIGRATION_LOCK = 0x6D61696C  # pg_advisory_xact_lock key: one daemon migrates at a time
LISTEN_RETRY_SECONDS = 1.0
MAX_LEASED = 1000  # messages one read considers (a bigger inbox is read in pages, as max_bytes does)
SWEEP_BATCH = 500  # expired leases one sweep statement returns (the rest go in the next statement)
HEARTBEAT_SECONDS = 5.0  # a daemon silent for 3 beats leaves its sessions "unknown", not dead

# model.SCHEMA_STEPS as PostgreSQL takes them, by number. PostgreSQL support began at SQLite's schema 3,
# so its first script is steps 1-3 at once.
_MIGRATIONS: dict[int, str] = {
    # 1-3: the whole model of store.py's three first SQLite migrations, with the lease on the message row.
    3: """
    CREATE TABLE mailboxes (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        alias_of TEXT
    );
    CREATE TABLE messages (
        id BIGSERIAL PRIMARY KEY,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        delivered_at TEXT,
        chars INTEGER NOT NULL DEFAULT 0,
        quoted INTEGER NOT NULL DEFAULT 0,
        lease_id TEXT,
        lease_expires TEXT,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX messages_pending ON messages (recipient, id) WHERE delivered_at IS NULL;
    CREATE INDEX messages_leased ON messages (lease_id) WHERE lease_id IS NOT NULL;
    CREATE INDEX messages_delivered ON messages (delivered_at) WHERE delivered_at IS NOT NULL;
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        mailbox TEXT NOT NULL,
        claude_pid BIGINT,
        pid_started DOUBLE PRECISION,
        cwd TEXT,
        project_dir TEXT,
        source TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        end_reason TEXT,
        collaborate INTEGER NOT NULL DEFAULT 0,
        seq BIGSERIAL,
        host TEXT
    );
    -- Presence: each daemon says it runs every HEARTBEAT_SECONDS; its sessions' liveness is judged
    -- by it alone (a process id means something only on its own machine).
    CREATE TABLE daemon_hosts (
        host TEXT PRIMARY KEY,
        beat_at TEXT NOT NULL
    );
    CREATE INDEX sessions_pid ON sessions (claude_pid, started_at);
    CREATE INDEX sessions_mailbox ON sessions (mailbox, started_at);
    CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        mailbox TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL,
        count INTEGER NOT NULL
    );
    CREATE INDEX leases_expiry ON leases (expires_at);
    CREATE INDEX leases_mailbox ON leases (mailbox, expires_at);
    CREATE TABLE pending_counts (
        mailbox TEXT PRIMARY KEY,
        pending INTEGER NOT NULL
    );
    CREATE TABLE idempotency (
        sender TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (sender, key)
    );
    CREATE INDEX idempotency_age ON idempotency (created_at);

    -- The pending count changes in the same transaction as the mail, whoever writes it; mail that
    -- becomes pending tells every daemon (NOTIFY is delivered at commit).
    CREATE FUNCTION mailbox_pending_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.delivered_at IS NULL THEN
            INSERT INTO pending_counts (mailbox, pending) VALUES (NEW.recipient, 1)
                ON CONFLICT (mailbox) DO UPDATE SET pending = pending_counts.pending + 1;
            PERFORM pg_notify('claude_mailbox',
                current_setting('application_name') || E'\\t' || 'mail' || E'\\t' || NEW.recipient || E'\\t');
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER pending_on_insert AFTER INSERT ON messages
        FOR EACH ROW EXECUTE FUNCTION mailbox_pending_on_insert();
    CREATE FUNCTION mailbox_pending_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF (OLD.delivered_at IS NULL) <> (NEW.delivered_at IS NULL) OR OLD.recipient <> NEW.recipient THEN
            IF OLD.delivered_at IS NULL THEN
                UPDATE pending_counts SET pending = pending - 1 WHERE mailbox = OLD.recipient;
            END IF;
            IF NEW.delivered_at IS NULL THEN
                INSERT INTO pending_counts (mailbox, pending) VALUES (NEW.recipient, 1)
                    ON CONFLICT (mailbox) DO UPDATE SET pending = pending_counts.pending + 1;
            END IF;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER pending_on_update AFTER UPDATE OF recipient, delivered_at ON messages
        FOR EACH ROW EXECUTE FUNCTION mailbox_pending_on_update();
    CREATE FUNCTION mailbox_pending_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.delivered_at IS NULL THEN
            UPDATE pending_counts SET pending = pending - 1 WHERE mailbox = OLD.recipient;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER pending_on_delete AFTER DELETE ON messages
        FOR EACH ROW EXECUTE FUNCTION mailbox_pending_on_delete();

    -- A send in one round trip (the hot path): follow an alias, refuse a full inbox (o_id NULL,
    -- o_pending: what it holds), touch the sender, create the recipient, store the message.
    CREATE FUNCTION mailbox_send(p_sender TEXT, p_recipient TEXT, p_body TEXT, p_at TEXT, p_chars INTEGER,
                                 p_quoted INTEGER, p_max_pending INTEGER)
    RETURNS TABLE (o_id BIGINT, o_target TEXT, o_pending INTEGER) LANGUAGE plpgsql AS $$
    DECLARE
        v_target TEXT;
        v_pending INTEGER;
    BEGIN
        SELECT alias_of INTO v_target FROM mailboxes WHERE name = p_recipient;
        v_target := coalesce(v_target, p_recipient);
        IF p_max_pending IS NOT NULL THEN
            SELECT c.pending INTO v_pending FROM pending_counts c WHERE c.mailbox = v_target;
            IF coalesce(v_pending, 0) >= p_max_pending THEN
                RETURN QUERY SELECT NULL::BIGINT, v_target, coalesce(v_pending, 0);
                RETURN;
            END IF;
        END IF;
        INSERT INTO mailboxes AS m (name, created_at, last_seen) VALUES (p_sender, p_at, p_at)
            ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen;
        INSERT INTO mailboxes (name, created_at, last_seen) VALUES (v_target, p_at, p_at)
            ON CONFLICT (name) DO NOTHING;
        RETURN QUERY INSERT INTO messages (sender, recipient, body, created_at, chars, quoted)
            VALUES (p_sender, v_target, p_body, p_at, p_chars, p_quoted) RETURNING messages.id, v_target, 0;
    END $$;
    """,
    # 4: the feed's thread view (name + peer) from an index, as SQLite's step 4.
    4: "CREATE INDEX IF NOT EXISTS messages_thread ON messages (sender, recipient, id);",
    # 5: `claude-mailbox import-sqlite` (setup/importer.py) records each copy of a SQLite mailbox here, in
    # the same transaction as the copy: a run interrupted after the commit finds its row and copies nothing twice.
    # IF NOT EXISTS: a database of the old numbering 2 has it already (see _OLD_NUMBERING).
    5: """
    CREATE TABLE IF NOT EXISTS sqlite_imports (
        import_id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        host TEXT NOT NULL,
        imported_at TEXT NOT NULL,
        mailboxes INTEGER NOT NULL DEFAULT 0,
        sessions INTEGER NOT NULL DEFAULT 0,
        pending INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0,
        keys INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 6: urgent mail, as SQLite's step 6 (its pending index reads the rows anyway: no index change).
    6: "ALTER TABLE messages ADD COLUMN IF NOT EXISTS urgent INTEGER NOT NULL DEFAULT 0;",
}
SCHEMA_VERSION = latest_schema("postgres")
# PostgreSQL's own numbering before the shared list: 1 was steps 1-3, 2 added sqlite_imports (step 5)
# without step 4's index. The shared numbering never records 1 or 2 here (the first script is step 3),
# so either value can only be the old numbering: such a database has step 3 done, and takes 4 and 5.
_OLD_NUMBERING = {1: 3, 2: 3}

_SESSION_COLUMNS = rowmap.SESSION_COLUMNS
_MESSAGE_COLUMNS = rowmap.MESSAGE_COLUMNS
_M_COLUMNS = ", ".join(f"m.{column}" for column in _MESSAGE_COLUMNS.split(", "))  # joined with another table


class PgStore:
    """A pool of connections to one PostgreSQL database, plus one LISTEN connection."""

    def __init__(self, url: str, pool: Any, origin: str, host: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self.host = host
        self.description = redact_url(url)
        self.shared = True
        self.lost: str | None = None  # a server that goes away comes back (reconnect): never lost for good
        self._pool = pool
        self._origin = origin  # this daemon's application_name: its own notifications are skipped
        self._listener: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, url: str, *, host: str | None = None, max_connections: int = 10, connect_timeout: float = 10.0
    ) -> PgStore:
        """Connect (each connection attempt gives up after `connect_timeout` seconds) and migrate.
        StoreUnavailable in one line naming the redacted URL; no secret of the URL in it."""
        origin = f"claude-mailbox-{secrets.token_hex(6)}"
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=max_connections,
                server_settings={"application_name": origin},
                command_timeout=60,
                timeout=connect_timeout,
            )
        except TimeoutError:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {redact_url(url)}: the connection and login got no answer "
                f"within {connect_timeout:g} s (database_connect_timeout_seconds)"
            ) from None
        except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The driver's words may quote the URL (a password in its query): scrubbed.
            reason = scrub(str(exc), url) or exc.__class__.__name__
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}") from None
        store = cls(url, pool, origin, host or socket.gethostname(), connect_timeout)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        for task in (self._listener, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._listener = self._heartbeat = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.close(), 5)

    # --- connections and errors -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tx(self, transaction: bool = True) -> AsyncIterator[Any]:
        """A pooled connection inside a transaction (without: each statement is its own);
        PostgreSQL failures become MailboxErrors."""
        try:
            async with self._pool.acquire() as conn:
                if not transaction:
                    yield conn
                    return
                async with conn.transaction():
                    yield conn
        except MailboxError:
            raise
        except asyncpg.DiskFullError:
            raise StorageFull(
                f"the PostgreSQL server at {self.description} is out of disk space; nothing was saved"
            ) from None
        except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError, asyncpg.LockNotAvailableError):
            raise StoreBusy(
                "the database is busy with a conflicting change; try again shortly", retry_after=1
            ) from None
        except (
            OSError,
            TimeoutError,
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
        ) as exc:
            raise StoreUnavailable(
                f"lost the connection to PostgreSQL at {self.description} ({exc.__class__.__name__}); "
                "nothing was saved by this request; the daemon reconnects on the next one"
            ) from None

    async def _migrate(self) -> None:
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS mailbox_schema (version INTEGER NOT NULL)")
            recorded = await conn.fetchval("SELECT max(version) FROM mailbox_schema") or 0
            version = _OLD_NUMBERING.get(recorded, recorded)
            if version > SCHEMA_VERSION:
                raise MailboxError(
                    f"{self.description} was written by a newer claude-mailbox (schema {version}); upgrade to open it"
                )
            for number, script in sorted(_MIGRATIONS.items()):
                if number > version:
                    await conn.execute(script)
            if recorded != SCHEMA_VERSION:
                await conn.execute("DELETE FROM mailbox_schema")
                await conn.execute("INSERT INTO mailbox_schema (version) VALUES ($1)", SCHEMA_VERSION)

    async def schema_version(self) -> int:
        async with self._tx() as conn:
            return int(await conn.fetchval("SELECT max(version) FROM mailbox_schema") or 0)

    async def checkpoint(self) -> None:
        """PostgreSQL checkpoints by itself."""

    # --- cross-daemon wake-ups (LISTEN/NOTIFY) -------------------------------------------------

    def listen(self, on_wake: RemoteWake) -> None:
        """Wake local waiters on other daemons' changes; reconnects after a lost connection, then
        wakes every waiter once (mail may have come while it was deaf)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(on_wake))

    async def _listen(self, on_wake: RemoteWake) -> None:
        def received(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            origin, kind, mailbox, detail = ([*payload.split("\t", 3), "", "", ""])[:4]
            if origin != self._origin and mailbox:
                on_wake(kind, mailbox, detail or None)

        deaf = False
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(
                    self.url,
                    server_settings={"application_name": self._origin + "-listen"},
                    timeout=self._connect_timeout,
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, received)
                if deaf:
                    on_wake("*", "*", None)
                    deaf = False
                while not lost.is_set():
                    # A dead TCP peer is noticed only when something is sent: ask every few seconds.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), 5)
            except asyncio.CancelledError:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
                raise
            except Exception as exc:  # the server went away or refused us: retry
                reason = scrub(str(exc), self.url) or exc.__class__.__name__
                log.warning("LISTEN connection to %s lost (%s); reconnecting", self.description, reason)
            deaf = True
            if conn is not None:
                conn.terminate()
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

    # --- presence: a heartbeat per host; each daemon judges only its own host's processes ----------

    def heartbeat(self, alive: Callable[[int, float | None], bool]) -> None:
        """Say every HEARTBEAT_SECONDS that this host's daemon runs, and end this host's sessions whose
        Claude Code process is gone (`alive(pid, started)`): daemons elsewhere cannot check a pid."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat(alive))

    async def _beat(self, alive: Callable[[int, float | None], bool]) -> None:
        while True:
            try:
                await self.beat_once(alive)
            except MailboxError as exc:  # the database is away: the listener and requests report it
                log.warning("heartbeat to %s failed: %s", self.description, exc.message)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def beat_once(self, alive: Callable[[int, float | None], bool]) -> None:
        at = now_iso()
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO daemon_hosts (host, beat_at) VALUES ($1, $2)"
                " ON CONFLICT (host) DO UPDATE SET beat_at = excluded.beat_at",
                self.host,
                at,
            )
            open_sessions = await conn.fetch(
                "SELECT session_id, claude_pid, pid_started FROM sessions"
                " WHERE host = $1 AND ended_at IS NULL AND claude_pid IS NOT NULL",
                self.host,
            )
            gone = [row[0] for row in open_sessions if not alive(int(row[1]), row[2])]
            if gone:
                await conn.execute(
                    "UPDATE sessions SET ended_at = $1, end_reason = 'gone', collaborate = 0"
                    " WHERE session_id = ANY($2::text[]) AND ended_at IS NULL",
                    at,
                    gone,
                )

    async def _notify(self, conn: Any, kind: str, mailbox: str, detail: str = "") -> None:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{self._origin}\t{kind}\t{mailbox}\t{detail}")

    # --- mailboxes ----------------------------------------------------------------------------

    @staticmethod
    async def _touch(conn: Any, name: str, at: str) -> None:
        await conn.execute(
            "INSERT INTO mailboxes (name, created_at, last_seen) VALUES ($1, $2, $2)"
            " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
            name,
            at,
        )

    @staticmethod
    async def _ensure(conn: Any, name: str, at: str) -> None:
        await conn.execute(
            "INSERT INTO mailboxes (name, created_at, last_seen) VALUES ($1, $2, $2) ON CONFLICT (name) DO NOTHING",
            name,
            at,
        )

    async def touch(self, name: str) -> None:
        async with self._tx() as conn:
            await self._touch(conn, name, now_iso())

    async def alias_target(self, name: str) -> str | None:
        async with self._tx() as conn:
            target: str | None = await conn.fetchval("SELECT alias_of FROM mailboxes WHERE name = $1", name)
            return target

    # --- messages -----------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> Sent:
        sender, recipient, body = request.sender, request.recipient, request.body
        max_pending, idempotency_key = request.max_pending, request.idempotency_key
        at = now_iso()
        args = (sender, recipient, body, at, len(body), len(json.dumps(body)), max_pending)
        async with self._tx(transaction=idempotency_key is not None or request.urgent) as conn:
            if idempotency_key is not None:
                # Two daemons retrying the same key at once: the second waits, then finds the first.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{sender}\n{idempotency_key}")
                await conn.execute("DELETE FROM idempotency WHERE created_at < $1", iso_before(IDEMPOTENCY_SECONDS))
                row = await conn.fetchrow(
                    f"SELECT {_M_COLUMNS} FROM idempotency k JOIN messages m ON m.id = k.message_id"
                    " WHERE k.sender = $1 AND k.key = $2",
                    sender,
                    idempotency_key,
                )
                if row is not None:
                    return Sent(rowmap.message(row), repeated=True)
            stored = await conn.fetchrow(
                "SELECT o_id, o_target, o_pending FROM mailbox_send($1, $2, $3, $4, $5, $6, $7)", *args
            )
            target: str = stored[1]
            if stored[0] is None:
                raise MailboxFull(
                    f"mailbox {target!r} already holds {stored[2]} unread messages (the limit); "
                    "it must read some before it can receive more"
                )
            message_id = int(stored[0])
            if request.urgent:  # mailbox_send (step 3) predates the flag; same transaction
                await conn.execute("UPDATE messages SET urgent = 1 WHERE id = $1", message_id)
            if idempotency_key is not None:
                await conn.execute(
                    "INSERT INTO idempotency (sender, key, message_id, created_at) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (sender, key) DO UPDATE SET message_id = excluded.message_id,"
                    " created_at = excluded.created_at",
                    sender,
                    idempotency_key,
                    message_id,
                    at,
                )
        return Sent(Message(message_id, sender, target, body, at, urgent=request.urgent), repeated=False)

    @staticmethod
    async def _pending_count(conn: Any, name: str) -> int:
        return int(await conn.fetchval("SELECT pending FROM pending_counts WHERE mailbox = $1", name) or 0)

    # --- delivery: lease, then acknowledge ------------------------------------------------------

    async def lease(self, name: str, terms: LeaseTerms) -> Lease:
        """As store.Store.lease, in two statements: the reader's counts (all an empty inbox costs), then
        one that chooses, leases and returns the mail. The oldest free messages (at most MAX_LEASED) are
        locked with SKIP LOCKED (mail another daemon is taking right now is left to it); running sums
        over them pick the prefix that fits the budget, the limit and max_bytes."""
        budget, limit, max_bytes, skip_oversized = terms.budget, terms.limit, terms.max_bytes, terms.skip_oversized
        at = now_iso()
        cost_sql = _COSTS[terms.cost]
        async with self._tx(transaction=False) as conn:
            # Touch the reader, drop its expired leases, read its pending count and what live leases hold.
            pending, leased = await conn.fetchrow(
                "WITH touched AS (INSERT INTO mailboxes (name, created_at, last_seen) VALUES ($1, $2, $2)"
                "   ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen),"
                " gone AS (DELETE FROM leases WHERE mailbox = $1 AND expires_at <= $2)"
                " SELECT coalesce((SELECT pending FROM pending_counts WHERE mailbox = $1), 0),"
                " coalesce((SELECT sum(count) FROM leases WHERE mailbox = $1 AND expires_at > $2), 0)",
                name,
                at,
            )
            if not pending:
                return Lease(None, name, None, [], 0, 0)
            fits = f" AND {cost_sql} <= $5::bigint" if skip_oversized and budget is not None else ""
            free = (
                "FROM messages m WHERE m.recipient = $1 AND m.delivered_at IS NULL"
                " AND (m.lease_expires IS NULL OR m.lease_expires <= $2)"
                + (" AND m.urgent = 1" if terms.urgent_only else "")
            )
            lease_id = secrets.token_urlsafe(18)
            expires_at = iso_after(terms.lease_seconds)
            rows = await conn.fetch(
                f"""
                WITH candidates AS (
                    SELECT m.id, {cost_sql} AS cost, {_COSTS["json"]} AS size {free}{fits}
                    ORDER BY m.id LIMIT {MAX_LEASED} FOR UPDATE OF m SKIP LOCKED),
                running AS (
                    SELECT id, sum(cost) OVER w AS used, sum(size) OVER w AS bytes, row_number() OVER w AS n
                    FROM candidates WINDOW w AS (ORDER BY id)),
                chosen AS (
                    SELECT id FROM running
                    WHERE ($5::bigint IS NULL OR used <= $5::bigint) AND ($6::bigint IS NULL OR n <= $6::bigint)
                      AND (n = 1 OR $7::bigint IS NULL OR bytes <= $7::bigint)),
                lease AS (
                    INSERT INTO leases (id, mailbox, expires_at, created_at, count)
                    SELECT $3, $1, $4, $2, count(*) FROM chosen HAVING count(*) > 0)
                UPDATE messages SET lease_id = $3, lease_expires = $4, attempts = attempts + 1
                WHERE id IN (SELECT id FROM chosen)
                RETURNING id, sender, body, created_at, attempts, urgent
                """,
                name,
                at,
                lease_id,
                expires_at,
                budget,
                limit,
                max_bytes,
            )
            oversized = newest_oversized = 0
            if fits:
                found = await conn.fetchrow(
                    f"SELECT count(*), coalesce(max(m.id), 0) {free} AND {cost_sql} > $3::bigint", name, at, budget
                )
                oversized, newest_oversized = int(found[0]), int(found[1])
        remaining = int(pending) - int(leased) - len(rows)
        if not rows:
            return Lease(None, name, None, [], max(0, remaining), oversized, newest_oversized)
        messages = sorted((rowmap.leased(row, name) for row in rows), key=lambda message: message.id)
        return Lease(lease_id, name, expires_at, messages, max(0, remaining), oversized, newest_oversized)

    async def ack(self, name: str, lease_id: str) -> int:
        """One statement: the lease row goes only if it is this mailbox's and still live (a second ack
        of the same lease waits on the row, then finds it gone), and its mail becomes delivered."""
        at = now_iso()
        async with self._tx(transaction=False) as conn:
            found, acked = await conn.fetchrow(
                "WITH lease AS (DELETE FROM leases WHERE id = $1 AND mailbox = $2 AND expires_at > $3 RETURNING id),"
                " done AS (UPDATE messages SET delivered_at = $3, lease_id = NULL, lease_expires = NULL"
                "   WHERE lease_id IN (SELECT id FROM lease) AND delivered_at IS NULL RETURNING 1)"
                " SELECT (SELECT count(*) FROM lease), (SELECT count(*) FROM done)",
                lease_id,
                name,
                at,
            )
        if not found:
            raise LeaseNotFound(
                f"no open lease {lease_id!r} for mailbox {name!r}: it was never given out, is already "
                "acknowledged, or expired (then its messages went back to the inbox and come again)"
            )
        return int(acked)

    async def release(self, lease_id: str) -> None:
        async with self._tx() as conn:
            await self._return(conn, "lease_id = $1", lease_id)
            mailbox = await conn.fetchval("DELETE FROM leases WHERE id = $1 RETURNING mailbox", lease_id)
            if mailbox:
                await self._notify(conn, "mail", mailbox)

    async def expire_leases(self, limit: int = SWEEP_BATCH) -> list[str]:
        """Give back the mail of at most `limit` expired leases in one statement, and tell every daemon's
        waiters it is back (NOTIFY at commit); the mailboxes it came back to (this daemon's own waiters
        are not told by its NOTIFY). Leases another daemon is returning right now are skipped: one wins each."""
        async with self._tx(transaction=False) as conn:
            rows = await conn.fetch(
                """
                WITH gone AS (
                    DELETE FROM leases WHERE id IN (
                        SELECT id FROM leases WHERE expires_at <= $1
                        ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                    RETURNING id, mailbox),
                back AS (
                    UPDATE messages SET lease_id = NULL, lease_expires = NULL
                    WHERE lease_id IN (SELECT id FROM gone) AND delivered_at IS NULL)
                SELECT mailbox, pg_notify($3, $4 || E'\t' || 'mail' || E'\t' || mailbox || E'\t')
                FROM (SELECT DISTINCT mailbox FROM gone) returned ORDER BY mailbox
                """,
                now_iso(),
                limit,
                CHANNEL,
                self._origin,
            )
        return [row[0] for row in rows]

    @staticmethod
    async def _return(conn: Any, condition: str, *bindings: Any) -> None:
        await conn.execute(
            f"UPDATE messages SET lease_id = NULL, lease_expires = NULL WHERE {condition} AND delivered_at IS NULL",
            *bindings,
        )

    async def peek(self, name: str) -> tuple[int, str | None]:
        async with self._tx() as conn:
            count = await self._pending_count(conn, name)
            if not count:
                return 0, None
            oldest: str | None = await conn.fetchval(
                "SELECT created_at FROM messages WHERE recipient = $1 AND delivered_at IS NULL ORDER BY id LIMIT 1",
                name,
            )
        return count, oldest

    async def pending_counts(self) -> dict[str, int]:
        async with self._tx() as conn:
            rows = await conn.fetch("SELECT mailbox, pending FROM pending_counts WHERE pending > 0")
        return {name: int(count) for name, count in rows}

    async def message(self, message_id: int) -> Message | None:
        async with self._tx() as conn:
            row = await conn.fetchrow(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id)
        return rowmap.message(row) if row else None

    async def all_messages(self) -> list[Message]:
        async with self._tx() as conn:
            rows = await conn.fetch(f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY id")
        return [rowmap.message(row) for row in rows]

    async def prune(self, delivered_before: str, *, dry_run: bool = False) -> int:
        condition = "delivered_at IS NOT NULL AND delivered_at < $1"
        async with self._tx() as conn:
            if dry_run:
                return int(await conn.fetchval(f"SELECT count(*) FROM messages WHERE {condition}", delivered_before))
            status = await conn.execute(f"DELETE FROM messages WHERE {condition}", delivered_before)
        return int(status.rsplit(" ", 1)[-1])

    async def forget_mailbox(self, name: str) -> bool:
        refusals = (
            "SELECT 1 FROM sessions WHERE mailbox = $1 LIMIT 1",
            "SELECT 1 FROM mailboxes WHERE name = $1 AND alias_of IS NOT NULL",
            "SELECT 1 FROM pending_counts WHERE mailbox = $1 AND pending > 0",
            "SELECT 1 FROM messages WHERE (sender = $1 OR recipient = $1) AND sender != recipient LIMIT 1",
        )
        async with self._tx() as conn:
            for sql in refusals:
                if await conn.fetchval(sql, name):
                    return False
            await conn.execute("DELETE FROM messages WHERE sender = $1 AND recipient = $1", name)
            status = await conn.execute("DELETE FROM mailboxes WHERE name = $1", name)
        return status != "DELETE 0"

    async def mailboxes(self) -> list[Mailbox]:
        async with self._tx() as conn:
            rows = await conn.fetch(
                """
                SELECT m.name, m.created_at, m.last_seen, m.alias_of, coalesce(c.pending, 0),
                       s.session_id, s.claude_pid, s.pid_started, s.project_dir, s.ended_at, s.collaborate,
                       s.host, h.beat_at
                FROM mailboxes m
                LEFT JOIN pending_counts c ON c.mailbox = m.name
                LEFT JOIN LATERAL (
                    SELECT * FROM sessions WHERE mailbox = m.name ORDER BY started_at DESC, seq DESC LIMIT 1
                ) s ON true
                LEFT JOIN daemon_hosts h ON h.host = s.host
                ORDER BY m.last_seen DESC, m.name
                """
            )
        return [rowmap.mailbox(row) for row in rows]

    # --- sessions ----------------------------------------------------------------------------

    async def _session_where(self, condition: str, value: Any) -> Session | None:
        async with self._tx() as conn:
            row = await conn.fetchrow(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {condition} ORDER BY started_at DESC, seq DESC LIMIT 1",
                value,
            )
        return rowmap.session(row) if row else None

    async def session(self, session_id: str) -> Session | None:
        return await self._session_where("session_id = $1", session_id)

    async def session_for_pid(self, claude_pid: int) -> Session | None:
        return await self._session_where("claude_pid = $1", claude_pid)

    async def session_for_mailbox(self, mailbox: str) -> Session | None:
        return await self._session_where("mailbox = $1", mailbox)

    async def register_session(self, start: Registration, rename_from: str | None = None) -> Rename | None:
        at = now_iso()
        session_id, mailbox = start.session_id, start.mailbox
        async with self._tx() as conn:
            await self._touch(conn, mailbox, at)
            await conn.execute(
                """
                INSERT INTO sessions (session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source,
                                      started_at, host)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (session_id) DO UPDATE SET
                    mailbox = excluded.mailbox, claude_pid = excluded.claude_pid,
                    pid_started = excluded.pid_started, cwd = excluded.cwd, project_dir = excluded.project_dir,
                    source = excluded.source, started_at = excluded.started_at, ended_at = NULL, end_reason = NULL,
                    host = excluded.host
                """,
                *start.row(),
                at,
                self.host,
            )
            await conn.execute("UPDATE mailboxes SET alias_of = NULL WHERE name = $1", mailbox)
            if not rename_from or rename_from == mailbox:
                return None
            status = await conn.execute(
                "UPDATE messages SET recipient = $1 WHERE recipient = $2 AND delivered_at IS NULL", mailbox, rename_from
            )
            moved = int(status.rsplit(" ", 1)[-1])
            await self._ensure(conn, rename_from, at)
            await conn.execute(
                "UPDATE mailboxes SET alias_of = $1 WHERE name = $2 OR alias_of = $2", mailbox, rename_from
            )
            await conn.execute(
                "UPDATE sessions SET collaborate ="
                " (SELECT coalesce(max(collaborate), 0) FROM sessions WHERE mailbox = $1) WHERE session_id = $2",
                rename_from,
                session_id,
            )
            await conn.execute("UPDATE sessions SET collaborate = 0 WHERE mailbox = $1", rename_from)
            await self._notify(conn, "renamed", rename_from, mailbox)
        return Rename(rename_from, mailbox, moved)

    async def end_session(self, session_id: str, reason: str | None) -> Session | None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE sessions SET ended_at = $1, end_reason = $2,"
                " collaborate = CASE WHEN $2::text = 'clear' THEN collaborate ELSE 0 END WHERE session_id = $3",
                now_iso(),
                reason,
                session_id,
            )
        return await self.session(session_id)

    async def set_collaborate(self, mailbox: str, on: bool) -> bool:
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE sessions SET collaborate = $1 WHERE session_id = ("
                " SELECT session_id FROM sessions WHERE mailbox = $2 ORDER BY started_at DESC, seq DESC LIMIT 1)",
                1 if on else 0,
                mailbox,
            )
        return status != "UPDATE 0"

    # --- the human view: read-only ---------------------------------------------------------------

    async def feed(self, after_id: int | None, limit: int, only: FeedFilter | None = None) -> tuple[list[Message], int]:
        name, peer, since = (only.name, only.peer, only.since) if only else (None, None, None)
        async with self._tx() as conn:
            newest = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM messages"))
            where = ["id <= $1"]
            args: list[Any] = [newest]

            def bind(value: Any) -> str:
                args.append(value)
                return f"${len(args)}"

            if after_id is not None:
                where.append(f"id > {bind(after_id)}")
            if name is not None and peer is not None:
                n, p = bind(name), bind(peer)
                where.append(f"((sender = {n} AND recipient = {p}) OR (sender = {p} AND recipient = {n}))")
            elif name is not None:
                n = bind(name)
                where.append(f"(sender = {n} OR recipient = {n})")
            if since is not None:
                where.append(f"created_at >= {bind(since)}")
            order = "ASC" if after_id is not None else "DESC"
            rows = await conn.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {' AND '.join(where)} ORDER BY id {order}"
                f" LIMIT {bind(limit)}",
                *args,
            )
        messages = [rowmap.message(row) for row in rows]
        if order == "DESC":
            messages.reverse()
            return messages, newest
        full_page = limit > 0 and len(messages) == limit
        return messages, messages[-1].id if full_page else max(newest, after_id or 0)

    # --- `import-sqlite` (setup/importer.py): one SQLite mailbox copied in, once ---------------------

    async def import_copy(
        self, import_id: str, snap: ImportSnapshot, source: str, progress: ImportProgress
    ) -> ImportCounts:
        """Copy a SQLite mailbox's rows in ONE transaction, noted in sqlite_imports under `import_id`
        in that same transaction: a second run with the same id waits for this one, then copies nothing
        and answers the first copy's counts (`recovered`). `progress` says how far it got, for the
        caller's note in the SQLite file. A row PostgreSQL refuses rolls it all back (ImportRefused)."""
        at = now_iso()
        try:
            async with self._tx() as conn:
                fresh = await conn.fetchval(
                    "INSERT INTO sqlite_imports (import_id, source, host, imported_at) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (import_id) DO NOTHING RETURNING 1",
                    import_id,
                    source,
                    self.host,
                    at,
                )
                if not fresh:
                    progress.may_have_committed = True  # an earlier run's copy is there
                    row = await conn.fetchrow(
                        "SELECT imported_at, mailboxes, sessions, pending, delivered, keys FROM sqlite_imports"
                        " WHERE import_id = $1",
                        import_id,
                    )
                    imported_at, mailboxes, sessions, pending, delivered, keys = row
                    return ImportCounts(
                        imported_at, int(mailboxes), int(sessions), int(pending), int(delivered), int(keys), True
                    )
                progress.copying = True
                mailboxes = await _copy_mailboxes(conn, snap)
                sessions = await _copy_sessions(conn, snap, self.host)
                new_ids = await _copy_messages(conn, snap)
                keys = await _copy_keys(conn, snap, new_ids)
                pending = sum(1 for row in snap.messages if row[5] is None)
                counts = ImportCounts(at, mailboxes, sessions, pending, len(snap.messages) - pending, keys)
                await conn.execute(
                    "UPDATE sqlite_imports SET mailboxes = $2, sessions = $3, pending = $4, delivered = $5, keys = $6"
                    " WHERE import_id = $1",
                    import_id,
                    mailboxes,
                    sessions,
                    counts.pending,
                    counts.delivered,
                    keys,
                )
                progress.may_have_committed = True  # from here the COMMIT may reach the server, whatever we hear
        except asyncpg.PostgresError as exc:  # e.g. a value PostgreSQL cannot store; rolled back
            raise ImportRefused(
                f"PostgreSQL at {self.description} refused the copy, nothing was imported: "
                f"{exc.__class__.__name__}: {exc}"
            ) from None
        return counts


class ImportRefused(StoreUnavailable):
    """PostgreSQL refused a row of an import: the whole copy was rolled back."""


IMPORT_BATCH_ROWS = 5000  # rows per PostgreSQL command


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one list per column, for unnest($1::type[], ...)."""
    return [[row[i] for row in rows] for i in range(width)]


async def _copy_mailboxes(conn: Any, snap: ImportSnapshot) -> int:
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


async def _copy_sessions(conn: Any, snap: ImportSnapshot, host: str) -> int:
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


async def _copy_messages(conn: Any, snap: ImportSnapshot) -> dict[int, int]:
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
        (
            new_id,
            sender,
            recipient,
            body,
            created_at,
            delivered_at,
            len(body),
            len(json.dumps(body)),
            int(attempts),
            urgent,
        )
        for new_id, (_, sender, recipient, body, created_at, delivered_at, attempts, urgent) in zip(
            new_ids, snap.messages, strict=True
        )
    ]
    # COPY fires the insert trigger row by row: pending counts and wake-ups as for a send. In batches, so
    # each command stays well within the pool's command_timeout whatever the file's size.
    for start in range(0, len(records), IMPORT_BATCH_ROWS):
        await conn.copy_records_to_table(
            "messages",
            records=records[start : start + IMPORT_BATCH_ROWS],
            columns=[
                "id",
                "sender",
                "recipient",
                "body",
                "created_at",
                "delivered_at",
                "chars",
                "quoted",
                "attempts",
                "urgent",
            ],
        )
    return {int(row[0]): new_id for row, new_id in zip(snap.messages, new_ids, strict=True)}


async def _copy_keys(conn: Any, snap: ImportSnapshot, new_ids: dict[int, int]) -> int:
    mapped = [(sender, key, new_ids[old], at) for sender, key, old, at in snap.keys if old in new_ids]
    copied = 0
    for start in range(0, len(mapped), IMPORT_BATCH_ROWS):
        rows = await conn.fetch(
            "INSERT INTO idempotency (sender, key, message_id, created_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])"
            " ON CONFLICT (sender, key) DO NOTHING RETURNING 1",
            *_columns(mapped[start : start + IMPORT_BATCH_ROWS], 4),
        )
        copied += len(rows)
    return copied
