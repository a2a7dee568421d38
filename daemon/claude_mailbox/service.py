"""The mailbox's behaviour, shared by REST, MCP and the hooks: validation, identity, rate limits,
wake-ups and liveness around the store. Knows nothing about HTTP or MCP.

All SQLite work runs on one dedicated thread that owns the connection: the event loop never
blocks on a lock held by another process, so /health keeps answering while the database is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from claude_mailbox import identity, liveness
from claude_mailbox.config import Config
from claude_mailbox.dbthread import DbThread
from claude_mailbox.errors import (
    ConfigError,
    IdentityMismatch,
    IdentityRequired,
    InvalidInput,
    LeaseNotFound,
    MailboxError,
    NotFound,
    PayloadTooLarge,
    ShuttingDown,
    StorageFull,
    StoreBusy,
    StoreUnavailable,
)
from claude_mailbox.model import (
    Cost,
    FeedFilter,
    Lease,
    LeaseTerms,
    Mailbox,
    Message,
    Registration,
    Rename,
    SendRequest,
    Sent,
    iso_before,
)
from claude_mailbox.ratelimit import RateLimiter
from claude_mailbox.store import Store
from claude_mailbox.storeapi import MailboxStore, ThreadedStore
from claude_mailbox.waiters import Waiter, WaiterRegistry, Wake

T = TypeVar("T")
PEER_WINDOW_SECONDS = 3600
MAX_WATCH_SECONDS = 3600.0
# A waiting long-poll looks at its connection this often: one whose client went away gives its
# place under max_watchers back within this, not at its timeout (up to an hour).
DISCONNECT_CHECK_SECONDS = 2.0
LEASE_SWEEP_SECONDS = 1.0  # with a shared database: how often every daemon returns expired leases (any daemon's)
LEASE_SWEEP_ROUNDS = 10  # statements one sweep may run when many leases expired at once (bounded work)
STOP_RECHECK_SECONDS = 60.0  # a Stop waiter re-checks its connection and its Claude Code process this often
HOST_SILENT_SECONDS = 15.0  # 3 missed heartbeats (pgstore.HEARTBEAT_SECONDS): another host's sessions are unknown
SETTLE_WAIT_SECONDS = 2.0  # the longest a read waits for an answer being written to be acknowledged
HELD_DECISION_MARGIN = 1.0  # a held lease is decided this long before it expires (an expired one cannot be acked)
RESPONSE_MARGIN = 1024  # room in max_response_bytes for an answer's own fields around its messages


@dataclass(frozen=True)
class Caller:
    """Who is asking, from whatever the transport carried. Explicit arguments win over these."""

    header_name: str | None = None  # X-Mailbox
    claude_pid: int | None = None  # X-Mailbox-Claude-Pid (MCP headersHelper, hooks)


@dataclass
class Delivery:
    """One answer that may carry leased mail (see MailboxService.delivering). The transport sets
    `written` once the whole answer reached the socket."""

    manual: bool = False  # the reader acknowledges itself (ack=manual, the hook relay)
    leases: list[Lease] = field(default_factory=list)
    written: bool = False
    # An MCP answer to a Claude Code process (X-Mailbox-Claude-Pid): once written, its leases are held
    # until that process shows it got them (issue 20.3; see MailboxService.confirm_reader).
    reader_pid: int | None = None
    reader: dict[str, tuple[int, float]] = field(default_factory=dict)  # lease id -> (pid, its start time)


@dataclass(frozen=True)
class HeldLease:
    """A written answer's lease kept open until its reader confirms it: its next MCP request, or its
    Claude Code process still alive when the lease ends (then acknowledged; dead: given back)."""

    lease: Lease
    pid: int
    started: float


# The answer the current request is building: `take` files its lease there, in whichever task the
# transport runs the handler (the MCP SDK's tasks inherit it).
_DELIVERY: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar("claude_mailbox_delivery", default=None)


@dataclass(frozen=True)
class MailboxView:
    mailbox: Mailbox
    alive: bool
    state: str  # "alive" | "ended" | "alias" | "client" (not a Claude Code session) | "unknown" (its host is silent)
    remote_host: str | None = None  # the session runs on another machine (PostgreSQL): that machine's host id


@dataclass(frozen=True)
class WatchResult:
    event: str  # "mail" | "renamed" | "timeout" | "replaced" | "stopped" | "shutdown"
    messages: list[Message]
    new_name: str | None = None
    lease: Lease | None = None  # the mail's lease: acknowledged once the answer is written
    urgent_only: bool = False  # a Stop waiter of a session that does not collaborate: woken for urgent mail


@dataclass(frozen=True)
class SessionStarted:
    """A registered session: its mailbox, every mailbox for the peer list, its unread count, and
    the mailbox it took over after /clear (if any)."""

    mailbox: str
    views: list[MailboxView]
    pending: int
    renamed_from: str | None


def validate_body(body: object, max_bytes: int) -> str:
    if not isinstance(body, str):
        raise InvalidInput("body must be a string")
    if not body.strip():
        raise InvalidInput("body must not be empty")
    try:
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("body must be valid Unicode text (it contains a lone surrogate)") from None
    if size > max_bytes:
        raise PayloadTooLarge(f"body is {size} bytes; the limit is {max_bytes} bytes")
    return body


MAX_IDEMPOTENCY_KEY = 200


def validate_idempotency_key(key: object) -> str | None:
    if key is None:
        return None
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY
        or not (key.isascii() and key.isprintable())
    ):
        raise InvalidInput(f"the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


class MailboxService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.waiters = WaiterRegistry()
        self.rate_limiter = RateLimiter(config.rate_limit_per_minute)
        # Urgent mail may wake an idle session (a turn spent): a sender gets few of them.
        self.urgent_limiter = RateLimiter(
            config.urgent_per_hour,
            "{key!r} sends more than {limit} urgent messages an hour; send this one without urgent, or later",
            window_seconds=3600.0,
        )
        # More for /health from the server (caps in use, the last integrity check): name -> value.
        self.reporters: list[Callable[[], dict[str, Any]]] = []
        self._executor = DbThread("mailbox-db")
        self._store: MailboxStore | None = None
        self._schema_version: int | None = None
        self.host_id = config.host_id or socket.gethostname()
        # Answers being written that the daemon acknowledges afterwards (ack=auto): mailbox -> lease
        # id -> set once settled. Reads of that mailbox wait for them (see _settle_later).
        self._settling: dict[str, dict[str, asyncio.Event]] = {}
        self._background: set[asyncio.Task[None]] = set()  # kept referenced until done
        # Mailbox -> the newest message too long for a Stop-hook wake-up that one has told of.
        self._told_oversized: dict[str, int] = {}
        self._held: dict[str, HeldLease] = {}  # lease id -> a written MCP answer's lease awaiting its reader
        self._writing: set[str] = set()  # reader leases whose answer is still being written
        self._due: set[str] = set()  # ... of those, the ones whose end came first: decided once written

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        config = self.config
        if config.database_url:
            try:
                from claude_mailbox.pgstore import PgStore  # the optional extra: only this path imports asyncpg
            except ImportError:
                raise ConfigError(
                    "database_url needs the PostgreSQL driver: pip install 'claude-mailbox[postgres]'"
                ) from None
            pg = await PgStore.open(
                config.database_url, host=self.host_id, connect_timeout=config.database_connect_timeout_seconds
            )
            pg.listen(self._remote_wake)
            pg.heartbeat(liveness.is_alive)
            self._store = pg
        else:
            self._store = await ThreadedStore.open(
                self._executor,
                lambda: Store(config.database, durability=config.durability, busy_timeout_ms=config.busy_timeout_ms),
            )
        # Opening migrated the database: its version stays what /health reports (model.SCHEMA_STEPS).
        self._schema_version = await self._store.schema_version()

    def _remote_wake(self, kind: str, mailbox: str, detail: str | None) -> None:
        """Another daemon sharing the database stored mail for (or renamed) a mailbox waited on here."""
        if kind == "*":  # the listener was deaf for a while: every waiter looks again
            for name in self.waiters.watched():
                self.waiters.notify(name, Wake("mail"))
        elif kind == "renamed" and detail:
            self.waiters.notify(mailbox, Wake("renamed", detail))
        else:
            self.waiters.notify(mailbox, Wake("mail"))

    async def close(self) -> None:
        self.waiters.shutdown()
        for lease_id in list(self._held):  # decided now, as at their end: a restart must not deliver them twice
            held = self._held.pop(lease_id)
            with contextlib.suppress(MailboxError):
                await self._settle(held.lease, written=liveness.is_alive(held.pid, held.started))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._store is not None:
            store = self._store
            self._store = None
            await store.close()
        self._executor.shutdown(wait=True)

    @property
    def store(self) -> MailboxStore:
        store = self._store
        if store is None:
            raise RuntimeError("the store is not open")
        return store

    async def db(self, fn: Callable[[Store], T]) -> T:
        """Run `fn(store)` on the database thread (SQLite only: tests and SQLite-specific checks)."""
        store = self._store
        if not isinstance(store, ThreadedStore):
            raise RuntimeError("the SQLite store is not open")
        sync = store.sync
        return await self._executor.run(lambda: fn(sync))

    # --- identity ---------------------------------------------------------------------------

    async def resolve_caller(self, explicit: object, caller: Caller, field: str) -> str:
        """Explicit argument > X-Mailbox header > the Claude Code process's current session."""
        if explicit is not None and explicit != "":
            return identity.validate_name(explicit, field)
        if caller.header_name:
            return identity.validate_name(caller.header_name, "X-Mailbox header")
        if caller.claude_pid:
            session = await self.store.session_for_pid(caller.claude_pid or 0)
            if session is not None:
                return session.mailbox
        raise IdentityRequired(
            f"no mailbox given: pass `{field}`, or send an X-Mailbox header (the claude-mailbox plugin "
            "fills this in for Claude Code sessions)"
        )

    # --- the four operations ----------------------------------------------------------------

    async def send(
        self,
        sender: object,
        to: object,
        body: object,
        idempotency_key: object = None,
        caller: Caller | None = None,
        urgent: object = False,
    ) -> Sent:
        """Store a message from `sender` (else the caller's own mailbox, see resolve_caller); a repeat
        of an idempotency key (same sender, 24 h) answers the original. `urgent`: it may wake an idle
        recipient (urgent_per_hour per sender)."""
        sender = await self.resolve_caller(sender, caller or Caller(), "from")
        recipient = identity.validate_name(to, "to")
        text = validate_body(body, self.config.max_body_bytes)
        key = validate_idempotency_key(idempotency_key)
        if not isinstance(urgent, bool):  # null too: the schema says boolean (schemathesis checks it)
            raise InvalidInput("urgent must be true or false")
        self.rate_limiter.take(sender)
        if urgent:
            self.urgent_limiter.take(sender)
        # An answer that just handed this inbox's mail out is acknowledged right after it is written:
        # the pending cap must count after that, as reads do (a send right after a check).
        await self._after_settling(recipient)
        limit = self.config.max_pending_per_mailbox
        request = SendRequest(sender, recipient, text, max_pending=limit, idempotency_key=key, urgent=bool(urgent))
        sent = await self.store.send(request)
        if not sent.repeated:
            self.waiters.notify(sent.message.recipient, Wake("mail"))
        return sent

    async def take(
        self,
        name: str,
        budget: int | None = None,
        *,
        cost: Cost = "chars",
        skip_oversized: bool = False,
        expansion: int = 1,
        urgent_only: bool = False,
    ) -> Lease:
        """Hand pending mail out under a lease (lease_seconds); every answer stays within
        max_response_bytes (`expansion`: how many times the answer repeats or re-escapes the mail).
        Nothing is delivered until `ack`; an expired lease gives it back."""
        identity.validate_name(name)
        await self._after_settling(name)
        seconds = self.config.lease_seconds
        max_bytes = (self.config.max_response_bytes - RESPONSE_MARGIN) // expansion
        terms = LeaseTerms(
            seconds, budget, cost, skip_oversized=skip_oversized, max_bytes=max_bytes, urgent_only=urgent_only
        )
        lease = await self.store.lease(name, terms)
        if lease.id is not None:
            # If it is never acknowledged, its mail comes back: wake whoever waits for it then.
            asyncio.get_running_loop().call_later(seconds + 0.05, self._lease_ran_out, name)
            delivery = _DELIVERY.get()
            if delivery is not None:
                delivery.leases.append(lease)
                if not delivery.manual:
                    self._settle_later(lease)
                if delivery.reader_pid is not None and not delivery.manual:
                    self._hold_for_reader(delivery, lease, seconds)
        return lease

    def _hold_for_reader(self, delivery: Delivery, lease: Lease, seconds: float) -> None:
        """Schedule the end of a lease that the answer's reader must confirm. A pid this daemon cannot
        see (another pid namespace, already gone) keeps today's rule: acknowledged once written."""
        assert delivery.reader_pid is not None and lease.id is not None
        started = liveness.process_start_time(delivery.reader_pid)
        if started is None:
            return
        delivery.reader[lease.id] = (delivery.reader_pid, started)
        self._writing.add(lease.id)
        decide_in = max(seconds / 2, seconds - HELD_DECISION_MARGIN)
        asyncio.get_running_loop().call_later(decide_in, self._held_lease_ends, lease.id)

    def _held_lease_ends(self, lease_id: str) -> None:
        held = self._held.pop(lease_id, None)
        if held is None:
            if lease_id in self._writing:  # a slow write: decide as soon as it is done
                self._due.add(lease_id)
            return  # else confirmed by a next request, or never written (given back then)
        alive = liveness.is_alive(held.pid, held.started)
        self._in_background(self._settle(held.lease, written=alive))

    async def confirm_reader(self, caller: Caller) -> None:
        """An MCP request from a Claude Code process (or for a mailbox) whose earlier answers are held:
        it got them, so acknowledge them now. Costs nothing while nothing is held (the hot path)."""
        if not self._held:
            return
        pid, name = caller.claude_pid, caller.header_name
        for lease_id, held in list(self._held.items()):
            mine = (pid is not None and held.pid == pid) or (name is not None and held.lease.mailbox == name)
            if mine and self._held.pop(lease_id, None) is not None:  # not decided meanwhile
                await asyncio.shield(self._settle(held.lease, written=True))

    def _in_background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _lease_ran_out(self, name: str) -> None:
        self.waiters.notify(name, Wake("mail"))
        # Waiters on other daemons sharing the database learn it from there, once the mail is given back.
        if self._store is not None and self._store.shared:
            self._in_background(self.sweep_leases())

    async def sweep_leases(self) -> None:
        """With a shared database, on a timer (server.py) and when a lease taken here runs out: give back
        the mail of expired leases, whichever daemon took them (it may have died), and wake the waiters
        here (other daemons' hear it by NOTIFY). Bounded: LEASE_SWEEP_ROUNDS statements of SWEEP_BATCH."""
        for _ in range(LEASE_SWEEP_ROUNDS):
            try:
                returned = await self.store.expire_leases()
            except MailboxError:  # database away: the heartbeat reports it; the mail comes back on the next read
                return
            for mailbox in returned:
                self.waiters.notify(mailbox, Wake("mail"))
            if len(returned) == 0 or not self.store.shared:
                return

    async def ack(self, name: str, lease_id: object) -> int:
        identity.validate_name(name)
        if not isinstance(lease_id, str) or not 1 <= len(lease_id) <= 100:
            raise InvalidInput("leaseId must be the lease id a check answered with")
        return await self.store.ack(name, lease_id)

    @contextlib.asynccontextmanager
    async def delivering(self, *, manual: bool = False, reader_pid: int | None = None) -> AsyncIterator[Delivery]:
        """The one way leased mail is handed out (REST, MCP, hooks): every lease `take` makes inside
        is acknowledged once the transport marks the answer written, or, `manual`, left for the
        reader's own ack; an answer that was not written gives its mail back at once. `reader_pid`
        (MCP, a Claude Code process): a written answer's leases are held until that process confirms
        (confirm_reader, or alive when the lease ends), so a reader that dies with the answer in its
        socket gets the mail again, marked redelivered."""
        delivery = Delivery(manual, reader_pid=reader_pid)
        token = _DELIVERY.set(delivery)
        try:
            yield delivery
        finally:
            _DELIVERY.reset(token)
            # Shielded: a client that closes its connection once it has the answer cancels the
            # handler, and an interrupted acknowledgement would hand the same mail out again.
            await asyncio.shield(self._settle_all(delivery))

    async def _settle_all(self, delivery: Delivery) -> None:
        if delivery.manual and delivery.written:
            return  # the reader acknowledges what it got
        for lease in delivery.leases:
            lease_id = lease.id or ""
            reader = delivery.reader.get(lease_id)
            self._writing.discard(lease_id)
            if reader is not None and delivery.written:
                if lease_id in self._due:  # its end came while it was being written
                    self._due.discard(lease_id)
                    await self._settle(lease, written=liveness.is_alive(*reader))
                    continue
                self._held[lease_id] = HeldLease(lease, *reader)
                self._settled(lease)  # reads go on: the mail stays under its lease meanwhile
                continue
            self._due.discard(lease_id)
            await self._settle(lease, written=delivery.written)

    def _settle_later(self, lease: Lease) -> None:
        """Before writing an answer that carries `lease` and is acknowledged once written: until then,
        reads of the mailbox wait, so the reader's next request (a peek right after its check) never
        sees that mail as still pending."""
        if lease.id is not None:
            self._settling.setdefault(lease.mailbox, {})[lease.id] = asyncio.Event()

    async def _after_settling(self, name: str) -> None:
        events = list(self._settling.get(name, {}).values())
        if events:
            with contextlib.suppress(TimeoutError):  # never hold a read long for a slow write
                async with asyncio.timeout(SETTLE_WAIT_SECONDS):
                    for event in events:
                        await event.wait()

    async def _settle(self, lease: Lease, written: bool) -> None:
        """After an answer carrying `lease`: acknowledge it if it was written, else give its mail back."""
        lease_id = lease.id
        if lease_id is None:
            return
        try:
            if written:
                with contextlib.suppress(LeaseNotFound):  # expired meanwhile: its mail comes again
                    await self.store.ack(lease.mailbox, lease_id)
                return
            await self.store.release(lease_id)
            self.waiters.notify(lease.mailbox, Wake("mail"))
        finally:
            self._settled(lease)

    def _settled(self, lease: Lease) -> None:
        """Reads of the mailbox waiting for this answer's lease to be settled go on."""
        settling = self._settling.get(lease.mailbox)
        if settling is None:
            return
        event = settling.pop(lease.id or "", None)
        if event is not None:
            event.set()
        if not settling:
            self._settling.pop(lease.mailbox, None)

    async def peek(self, name: str) -> tuple[int, str | None]:
        identity.validate_name(name)
        await self._after_settling(name)
        return await self.store.peek(name)

    async def list(self, caller: str | None) -> tuple[list[MailboxView], int]:
        """Every mailbox with liveness, plus how many are pending for `caller` (who is touched)."""
        if caller is not None:
            identity.validate_name(caller)
            # Presence is best effort: a full disk or a locked database must not stop the listing.
            with contextlib.suppress(StorageFull, StoreBusy, StoreUnavailable):
                await self.store.touch(caller)
        boxes = await self.store.mailboxes()
        views = [self._view(box) for box in boxes]
        pending_for_caller = next((box.pending for box in boxes if box.name == caller), 0)
        return views, pending_for_caller

    def _view(self, box: Mailbox) -> MailboxView:
        if box.alias_of:
            return MailboxView(box, False, "alias")
        if box.session_id is None:
            return MailboxView(box, False, "client")
        if box.host is not None and box.host != self.host_id:
            # Another machine's session: its daemon judges its process; a daemon that stopped saying
            # it runs leaves its sessions unknown (not dead: the machine may only be unreachable).
            if box.ended_at is not None:
                return MailboxView(box, False, "ended", box.host)
            if box.host_seen is not None and box.host_seen >= iso_before(HOST_SILENT_SECONDS):
                return MailboxView(box, True, "alive", box.host)
            return MailboxView(box, False, "unknown", box.host)
        alive = box.ended_at is None and liveness.is_alive(box.claude_pid, box.pid_started)
        return MailboxView(box, alive, "alive" if alive else "ended")

    # --- long-poll ------------------------------------------------------------------------------

    async def watch(
        self,
        name: str,
        timeout: float,
        *,
        still_connected: Callable[[], bool] = lambda: True,
        budget: int | None = None,
    ) -> WatchResult:
        """Wait for mail (consumed and returned), a rename, or the timeout. Mail already pending
        is returned at once. Consumes only while the requester is still connected."""
        identity.validate_name(name)
        timeout = max(0.0, min(float(timeout), MAX_WATCH_SECONDS))
        deadline = time.monotonic() + timeout
        waiter = self.waiters.register(name)
        try:
            return await self._wait(waiter, deadline, still_connected, budget)
        finally:
            self.waiters.unregister(waiter)

    async def _wait(
        self,
        waiter: Waiter,
        deadline: float,
        still_connected: Callable[[], bool],
        budget: int | None,
        told_oversized: int | None = None,
        urgent_only: bool = False,
    ) -> WatchResult:
        """One long-poll on a registered waiter, until `deadline` (monotonic). `told_oversized` (the
        Stop hook): mail over `budget` is stepped over, and a message over it with a larger id than
        this wakes the waiter too, to be told of (a long message must not hold back the wake-up).
        `urgent_only`: only urgent mail ends it (and only urgent mail is taken)."""
        name = waiter.mailbox
        skip = told_oversized is not None
        while True:
            target = await self.store.alias_target(name)
            if target:
                return WatchResult("renamed", [], target)
            if still_connected():
                cost: Cost = "rendered" if budget else "chars"
                lease = await self.take(name, budget, cost=cost, skip_oversized=skip, urgent_only=urgent_only)
                if lease.messages or lease.newest_oversized > (told_oversized or 0):
                    return WatchResult("mail", lease.messages, lease=lease, urgent_only=urgent_only)
            wake = await _next_wake(waiter, deadline, still_connected)
            if wake is None:
                return WatchResult("timeout", [])
            if wake.kind == "renamed":
                return WatchResult("renamed", [], wake.detail)
            if wake.kind != "mail":
                return WatchResult(wake.kind, [])
            if not still_connected():
                return WatchResult("timeout", [])

    # --- sessions and hooks ----------------------------------------------------------------

    async def session_start(
        self,
        session_id: str,
        *,
        source: str | None,
        cwd: str | None,
        project_dir: str | None,
        claude_pid: int | None,
        prefix: str | None,
        fixed: str | None = None,
    ) -> SessionStarted:
        """Register the session. `fixed` (an X-Mailbox header, from hooks installed by
        `install-hook --name N`) names the mailbox instead of the session id."""
        if fixed:
            mailbox = identity.validate_name(fixed, "X-Mailbox header")
        else:
            mailbox = identity.session_mailbox(session_id, prefix or self.config.prefix)
        pid_started = liveness.process_start_time(claude_pid) if claude_pid else None
        existing = await self.store.session(session_id)
        if (
            existing is not None
            and existing.claude_pid
            and claude_pid
            and existing.claude_pid != claude_pid
            and existing.ended_at is None
            and liveness.is_alive(existing.claude_pid, existing.pid_started)
        ):
            # Another running Claude Code owns this session: a second process may not take it over.
            raise IdentityMismatch(f"session {session_id!r} belongs to another running Claude Code process")
        rename_from = None
        if source == "clear" and claude_pid:
            previous = await self.store.session_for_pid(claude_pid)
            if (
                previous is not None
                and previous.session_id != session_id
                and liveness.is_alive(claude_pid, previous.pid_started)  # the same process, not a reused pid
            ):
                rename_from = previous.mailbox
        registration = Registration(session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source)
        rename: Rename | None = await self.store.register_session(registration, rename_from)
        if rename is not None:
            self.waiters.notify(rename.old, Wake("renamed", rename.new))
        views, pending = await self.list(mailbox)
        return SessionStarted(mailbox, views, pending, rename.old if rename else None)

    async def session_mailbox(self, session_id: str, prefix: str | None) -> str:
        """The session's registered mailbox, else the one its id derives to."""
        session = await self.store.session(session_id)
        if session is not None:
            return session.mailbox
        return identity.session_mailbox(session_id, prefix or self.config.prefix)

    async def prompt_submit(self, session_id: str, prefix: str | None, fixed: str | None, budget: int) -> Lease:
        """The mail for a prompt about to be sent, under a lease, within `budget` rendered characters."""
        if fixed:
            mailbox = identity.validate_name(fixed, "X-Mailbox header")
        else:
            mailbox = await self.session_mailbox(session_id, prefix)
        return await self.take(mailbox, budget, cost="rendered", skip_oversized=True)

    async def session_end(self, session_id: str, reason: str | None, claude_pid: int | None) -> None:
        """End a session. Only its own Claude Code process may end it while that process runs."""
        session = await self.store.session(session_id)
        if session is None:
            return
        if (
            session.claude_pid
            and claude_pid != session.claude_pid
            and liveness.is_alive(session.claude_pid, session.pid_started)
        ):
            raise IdentityMismatch(f"only the Claude Code process of session {session_id!r} may end it")
        ended = await self.store.end_session(session_id, reason)
        if ended is not None:
            self.waiters.stop_exclusive(f"stop:{ended.session_id}")

    async def stop_wait(
        self, session_id: str, still_connected: Callable[[], bool], budget: int, urgent_wake: bool = True
    ) -> WatchResult | None:
        """The asyncRewake Stop hook: hold until mail arrives and return it (under its lease): any mail
        in collaboration mode, else only urgent mail (an idle session spends no turn on the rest).
        None when the wait ends without mail. `urgent_wake=False`: without collaboration, no wait."""
        session = await self.store.session(session_id)
        if session is None or session.ended_at or not (session.collaborate or urgent_wake):
            return None
        urgent_only = not session.collaborate
        pid, started = session.claude_pid, session.pid_started

        def deliverable() -> bool:
            # An orphaned waiter (its Claude Code was killed, so no SessionEnd came) must not eat mail.
            return still_connected() and (pid is None or liveness.is_alive(pid, started))

        waiter = self.waiters.register(session.mailbox, f"stop:{session.session_id}")
        try:
            while True:
                deadline = time.monotonic() + STOP_RECHECK_SECONDS
                told = self._told_oversized.get(session.mailbox, 0)
                result = await self._wait(waiter, deadline, deliverable, budget, told, urgent_only)
                if result.event == "mail":
                    # Mail too long for the wake-up is told of once; it waits for check_inbox.
                    newest = result.lease.newest_oversized if result.lease else 0
                    self._told_oversized[session.mailbox] = max(told, newest)
                    return result
                if result.event == "shutdown":
                    raise ShuttingDown("the daemon is shutting down; reconnect to the next one")
                if result.event != "timeout" or not deliverable():
                    return None  # replaced, stopped (collaboration off, session end), renamed
        finally:
            self.waiters.unregister(waiter)

    async def set_collaborate(self, mailbox: str, on: bool, caller: Caller) -> None:
        """Switch collaboration mode of the session owning `mailbox`: only that session may (its
        X-Mailbox header or its Claude Code process)."""
        identity.validate_name(mailbox)
        owner = await self.store.session_for_mailbox(mailbox)
        if owner is None:
            raise NotFound(f"no Claude Code session owns mailbox {mailbox!r}")
        if caller.header_name != mailbox and (caller.claude_pid is None or caller.claude_pid != owner.claude_pid):
            raise IdentityMismatch(f"only the session of mailbox {mailbox!r} may switch its collaboration mode")
        await self.store.set_collaborate(mailbox, on)
        if not on:
            self.waiters.stop_exclusive(f"stop:{owner.session_id}")

    async def collaborating(self, mailbox: str) -> bool:
        identity.validate_name(mailbox)
        session = await self.store.session_for_mailbox(mailbox)
        return bool(session and session.collaborate and not session.ended_at)

    async def stop_waiter_attached(self, mailbox: str) -> bool:
        """Is this session's Stop-hook waiter connected right now (is the wake-up path working)?"""
        session = await self.store.session_for_mailbox(mailbox)
        return bool(session and self.waiters.holds(f"stop:{session.session_id}"))

    async def whois(self, session_id: str) -> str | None:
        session = await self.store.session(session_id)
        return session.mailbox if session else None

    # --- housekeeping ------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.checkpoint()

    async def prune(self, older_than_days: float, dry_run: bool = False) -> int:
        cutoff = iso_before(older_than_days * 86400)
        return await self.store.prune(cutoff, dry_run=dry_run)

    async def forget(self, name: object, header_name: str | None) -> bool:
        """Remove a mailbox that only ever wrote to itself (see Store.forget_mailbox); its owner asks."""
        checked = identity.validate_name(name, "name")
        self.require_owner(checked, header_name, "forget the mailbox")
        return await self.store.forget_mailbox(checked)

    async def own_inbox(self, name: object, caller: Caller) -> str:
        """The inbox a consuming read may take: the caller's own (X-Mailbox, else its Claude Code
        session); an explicit `name` must equal it, as REST's require_owner demands."""
        wanted = identity.validate_name(name, "name") if name is not None and name != "" else None
        try:
            own = await self.resolve_caller(None, caller, "name")
        except IdentityRequired:
            if wanted is None:
                raise
            raise IdentityRequired("the X-Mailbox header is required and must equal `name`") from None
        if wanted is not None and wanted != own:
            raise IdentityMismatch(f"mailbox {own!r} may not read the inbox of {wanted!r}")
        return own

    def require_owner(self, name: str, header_name: str | None, doing: str = "read the inbox of") -> None:
        """Consuming an inbox (or forgetting a mailbox) needs the X-Mailbox header to name it (the seed's rule)."""
        if not header_name:
            raise IdentityRequired("the X-Mailbox header is required and must equal `name`")
        if header_name != name:
            raise IdentityMismatch(f"X-Mailbox {header_name!r} may not {doing} {name!r}")

    def lost(self) -> str | None:
        """Why the database is gone until a restart (its file was deleted or replaced), else None."""
        store = self._store
        return store.lost if store is not None else None

    def info(self) -> dict[str, Any]:
        on_file = {} if self.config.database_url else {"dbPath": str(self.config.database)}
        return {
            "database": self.config.database_label,  # the file, or the PostgreSQL URL without its credentials
            **on_file,
            "port": self.config.port,
            "waiters": self.waiters.total(),
            "auth": self.config.auth,  # "token" or "none": status and doctor show it
            **({"schema": self._schema_version} if self._schema_version is not None else {}),
            **{key: value for report in self.reporters for key, value in report().items()},
        }

    # --- the human view (issue 14): watching, never consuming ------------------------------------

    async def feed(
        self,
        after_id: int | None,
        limit: int,
        only: FeedFilter,
        *,
        wait: float = 0.0,
        still_connected: Callable[[], bool] = lambda: True,
    ) -> FeedPage:
        """Mail for people watching (store.feed), long-polled: with `after_id` and `wait`, answer as
        soon as newer matching mail is stored, else after `wait` seconds with none. Reads only."""
        for value, what in ((only.name, "name"), (only.peer, "peer")):
            if value is not None:
                identity.validate_name(value, what)
        if only.peer is not None and only.name is None:
            raise InvalidInput("peer needs name (the conversation between name and peer)")
        deadline = time.monotonic() + max(0.0, min(wait, MAX_WATCH_SECONDS))
        waiter = self.waiters.watch_all()  # registered before the read: no send slips in between
        try:
            while True:
                start = after_id
                messages, cursor = await self.store.feed(start, limit, only)
                if messages or start is None or not still_connected():
                    return messages, cursor
                after_id = cursor  # mail that did not match moves the cursor on
                wake = await _next_wake(waiter, deadline, still_connected)
                if wake is None or wake.kind != "mail":
                    return messages, cursor
        finally:
            self.waiters.unregister(waiter)


async def _next_wake(waiter: Waiter, deadline: float, still_connected: Callable[[], bool]) -> Wake | None:
    """The waiter's next wake-up; None at `deadline` or once the client has gone away."""
    while True:
        remaining = deadline - time.monotonic()
        wake = await waiter.next(min(remaining, DISCONNECT_CHECK_SECONDS))
        if wake is not None or remaining <= DISCONNECT_CHECK_SECONDS or not still_connected():
            return wake


FeedPage = tuple[list[Message], int]  # messages for people watching, and the cursor to continue after
