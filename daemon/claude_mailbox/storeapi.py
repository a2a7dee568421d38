"""The store interface the service speaks, and its SQLite implementation.

Two stores satisfy `MailboxStore`: `ThreadedStore` (the default: store.Store, APSW on SQLite, run on
the one database thread) and `pgstore.PgStore` (PostgreSQL through asyncpg, for sessions on several
machines). Both give the same answers; the contract tests (tests/test_store.py) run against both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from claude_mailbox.dbthread import DbThread
from claude_mailbox.model import (
    FeedFilter,
    Lease,
    LeaseTerms,
    Mailbox,
    Message,
    Registration,
    Rename,
    SendRequest,
    Sent,
    Session,
)
from claude_mailbox.store import Store

# Called with (kind, mailbox, detail) when another daemon sharing the database stored mail for a
# mailbox ("mail") or renamed one ("renamed", detail: the new name): wakes this daemon's waiters.
RemoteWake = Callable[[str, str, str | None], None]


class MailboxStore(Protocol):
    """Every operation the service needs, async. Errors are MailboxErrors (errors.py)."""

    description: str  # where the mail is, for `info` and the start-up line
    shared: bool  # other daemons use the same database (their waiters hear of changes through it)

    @property
    def lost(self) -> str | None:
        """Why the database is gone for good until a restart (its file deleted or replaced), else None."""

    async def close(self) -> None: ...
    async def schema_version(self) -> int: ...
    async def checkpoint(self) -> None: ...
    async def touch(self, name: str) -> None: ...
    async def alias_target(self, name: str) -> str | None: ...
    async def send(self, request: SendRequest) -> Sent: ...
    async def lease(self, name: str, terms: LeaseTerms) -> Lease: ...
    async def ack(self, name: str, lease_id: str) -> int: ...
    async def release(self, lease_id: str) -> None: ...
    async def expire_leases(self) -> list[str]: ...  # the mailboxes whose mail came back
    async def peek(self, name: str) -> tuple[int, str | None]: ...
    async def pending_counts(self) -> dict[str, int]: ...
    async def message(self, message_id: int) -> Message | None: ...
    async def all_messages(self) -> list[Message]: ...
    async def prune(self, delivered_before: str, *, dry_run: bool = False) -> int: ...
    async def forget_mailbox(self, name: str) -> bool: ...
    async def mailboxes(self) -> list[Mailbox]: ...
    async def session(self, session_id: str) -> Session | None: ...
    async def session_for_pid(self, claude_pid: int) -> Session | None: ...
    async def session_for_mailbox(self, mailbox: str) -> Session | None: ...
    async def register_session(self, start: Registration, rename_from: str | None = None) -> Rename | None: ...
    async def end_session(self, session_id: str, reason: str | None) -> Session | None: ...
    async def set_collaborate(self, mailbox: str, on: bool) -> bool: ...
    async def feed(
        self, after_id: int | None, limit: int, only: FeedFilter | None = None
    ) -> tuple[list[Message], int]: ...


class ThreadedStore:
    """store.Store behind the async interface: every call runs on the one thread owning the connection."""

    def __init__(self, thread: DbThread, store: Store) -> None:
        self._thread = thread
        self.sync = store
        self.description = str(store.path)
        self.shared = False  # one daemon owns the file

    @property
    def lost(self) -> str | None:
        return self.sync.lost  # set on the database thread; a str read is atomic

    @classmethod
    async def open(cls, thread: DbThread, factory: Callable[[], Store]) -> ThreadedStore:
        return cls(thread, await thread.run(factory))

    async def close(self) -> None:
        await self._thread.run(self.sync.close)

    async def schema_version(self) -> int:
        return await self._thread.run(self.sync.schema_version)

    async def checkpoint(self) -> None:
        await self._thread.run(self.sync.checkpoint)

    async def touch(self, name: str) -> None:
        await self._thread.run(lambda: self.sync.touch(name))

    async def alias_target(self, name: str) -> str | None:
        return await self._thread.run(lambda: self.sync.alias_target(name))

    async def send(self, request: SendRequest) -> Sent:
        store = self.sync
        # Sends waiting together share one commit (dbthread.py).
        return await self._thread.run(lambda: store.send(request), group=store.group)

    async def lease(self, name: str, terms: LeaseTerms) -> Lease:
        return await self._thread.run(lambda: self.sync.lease(name, terms))

    async def ack(self, name: str, lease_id: str) -> int:
        return await self._thread.run(lambda: self.sync.ack(name, lease_id))

    async def release(self, lease_id: str) -> None:
        await self._thread.run(lambda: self.sync.release(lease_id))

    async def expire_leases(self) -> list[str]:
        return await self._thread.run(self.sync.expire_leases)

    async def peek(self, name: str) -> tuple[int, str | None]:
        return await self._thread.run(lambda: self.sync.peek(name))

    async def pending_counts(self) -> dict[str, int]:
        return await self._thread.run(self.sync.pending_counts)

    async def message(self, message_id: int) -> Message | None:
        return await self._thread.run(lambda: self.sync.message(message_id))

    async def all_messages(self) -> list[Message]:
        return await self._thread.run(self.sync.all_messages)

    async def prune(self, delivered_before: str, *, dry_run: bool = False) -> int:
        return await self._thread.run(lambda: self.sync.prune(delivered_before, dry_run=dry_run))

    async def forget_mailbox(self, name: str) -> bool:
        return await self._thread.run(lambda: self.sync.forget_mailbox(name))

    async def mailboxes(self) -> list[Mailbox]:
        return await self._thread.run(self.sync.mailboxes)

    async def session(self, session_id: str) -> Session | None:
        return await self._thread.run(lambda: self.sync.session(session_id))

    async def session_for_pid(self, claude_pid: int) -> Session | None:
        return await self._thread.run(lambda: self.sync.session_for_pid(claude_pid))

    async def session_for_mailbox(self, mailbox: str) -> Session | None:
        return await self._thread.run(lambda: self.sync.session_for_mailbox(mailbox))

    async def register_session(self, start: Registration, rename_from: str | None = None) -> Rename | None:
        return await self._thread.run(lambda: self.sync.register_session(start, rename_from))

    async def end_session(self, session_id: str, reason: str | None) -> Session | None:
        return await self._thread.run(lambda: self.sync.end_session(session_id, reason))

    async def set_collaborate(self, mailbox: str, on: bool) -> bool:
        return await self._thread.run(lambda: self.sync.set_collaborate(mailbox, on))

    async def feed(self, after_id: int | None, limit: int, only: FeedFilter | None = None) -> tuple[list[Message], int]:
        return await self._thread.run(lambda: self.sync.feed(after_id, limit, only))
