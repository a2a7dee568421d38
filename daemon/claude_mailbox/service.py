"""The mailbox's behaviour, shared by REST, MCP and the hooks: validation, identity, rate limits,
wake-ups and liveness around the store. Knows nothing about HTTP or MCP.

All SQLite work runs on one dedicated thread that owns the connection: the event loop never
blocks on a lock held by another process, so /health keeps answering while the database is busy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from claude_mailbox import hooktext, identity, liveness
from claude_mailbox.config import Config
from claude_mailbox.dbthread import DbThread
from claude_mailbox.errors import (
    IdentityMismatch,
    IdentityRequired,
    InvalidInput,
    PayloadTooLarge,
    ShuttingDown,
    StorageFull,
    StoreBusy,
    StoreUnavailable,
)
from claude_mailbox.messages import Message
from claude_mailbox.ratelimit import RateLimiter
from claude_mailbox.store import Consumed, Mailbox, Rename, Store, iso_before
from claude_mailbox.waiters import Waiter, WaiterRegistry, Wake

T = TypeVar("T")
PEER_WINDOW_SECONDS = 3600
MAX_WATCH_SECONDS = 3600.0
STOP_RECHECK_SECONDS = 60.0  # a Stop waiter re-checks its connection and its Claude Code process this often


@dataclass(frozen=True)
class Caller:
    """Who is asking, from whatever the transport carried. Explicit arguments win over these."""

    header_name: str | None = None  # X-Mailbox
    claude_pid: int | None = None  # X-Mailbox-Claude-Pid (MCP headersHelper, hooks)


def caller_from_headers(headers: Any) -> Caller:
    """Read the caller from request headers (any case-insensitive mapping)."""
    pid_text = headers.get("x-mailbox-claude-pid") or ""
    return Caller(
        header_name=headers.get("x-mailbox") or None,
        claude_pid=int(pid_text) if pid_text.isascii() and pid_text.isdigit() and len(pid_text) < 10 else None,
    )


@dataclass(frozen=True)
class MailboxView:
    mailbox: Mailbox
    alive: bool
    state: str  # "alive" | "ended" | "alias" | "client" (not a Claude Code session)


@dataclass(frozen=True)
class WatchResult:
    event: str  # "mail" | "renamed" | "timeout" | "replaced" | "stopped" | "shutdown"
    messages: list[Message]
    new_name: str | None = None


@dataclass(frozen=True)
class HookReply:
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    delivered: list[Message] = field(default_factory=list)  # put back if the hook cannot receive them


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


class MailboxService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.waiters = WaiterRegistry()
        self.rate_limiter = RateLimiter(config.rate_limit_per_minute)
        self._executor = DbThread("mailbox-db")
        self._store: Store | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        config = self.config
        self._store = await self._run_raw(
            lambda: Store(config.database, durability=config.durability, busy_timeout_ms=config.busy_timeout_ms)
        )

    async def close(self) -> None:
        self.waiters.shutdown()
        if self._store is not None:
            store = self._store
            self._store = None
            await self._run_raw(store.close)
        self._executor.shutdown(wait=True)

    async def _run_raw(self, fn: Callable[[], T]) -> T:
        return await self._executor.run(fn)

    async def db(self, fn: Callable[[Store], T]) -> T:
        """Run `fn(store)` on the database thread."""
        store = self._store
        if store is None:
            raise RuntimeError("the store is not open")
        return await self._run_raw(lambda: fn(store))

    # --- identity ---------------------------------------------------------------------------

    async def resolve_caller(self, explicit: object, caller: Caller, field: str) -> str:
        """Explicit argument > X-Mailbox header > the Claude Code process's current session."""
        if explicit is not None and explicit != "":
            return identity.validate_name(explicit, field)
        if caller.header_name:
            return identity.validate_name(caller.header_name, "X-Mailbox header")
        if caller.claude_pid:
            session = await self.db(lambda s: s.session_for_pid(caller.claude_pid or 0))
            if session is not None:
                return session.mailbox
        raise IdentityRequired(
            f"no mailbox given: pass `{field}`, or send an X-Mailbox header (the claude-mailbox plugin "
            "fills this in for Claude Code sessions)"
        )

    # --- the four operations ----------------------------------------------------------------

    async def send(self, sender: str, to: object, body: object) -> Message:
        identity.validate_name(sender, "from")
        recipient = identity.validate_name(to, "to")
        text = validate_body(body, self.config.max_body_bytes)
        self.rate_limiter.take(sender)
        limit = self.config.max_pending_per_mailbox
        message = await self.db(lambda s: s.send(sender, recipient, text, max_pending=limit))
        self.waiters.notify(message.recipient, Wake("mail"))
        return message

    async def check(self, name: str, budget: int | None = None) -> Consumed:
        identity.validate_name(name)
        return await self.db(lambda s: s.consume(name, budget=budget))

    async def peek(self, name: str) -> tuple[int, str | None]:
        identity.validate_name(name)
        return await self.db(lambda s: s.peek(name))

    async def list(self, caller: str | None) -> tuple[list[MailboxView], int]:
        """Every mailbox with liveness, plus how many are pending for `caller` (who is touched)."""
        if caller is not None:
            identity.validate_name(caller)
            # Presence is best effort: a full disk or a locked database must not stop the listing.
            with contextlib.suppress(StorageFull, StoreBusy, StoreUnavailable):
                await self.db(lambda s: s.touch(caller))
        boxes = await self.db(lambda s: s.mailboxes())
        views = [self._view(box) for box in boxes]
        pending_for_caller = next((box.pending for box in boxes if box.name == caller), 0)
        return views, pending_for_caller

    @staticmethod
    def _view(box: Mailbox) -> MailboxView:
        if box.alias_of:
            return MailboxView(box, False, "alias")
        if box.session_id is None:
            return MailboxView(box, False, "client")
        alive = box.ended_at is None and liveness.is_alive(box.claude_pid, box.pid_started)
        return MailboxView(box, alive, "alive" if alive else "ended")

    # --- long-poll ------------------------------------------------------------------------------

    async def watch(
        self,
        name: str,
        timeout: float,
        *,
        exclusive: str | None = None,
        still_connected: Callable[[], bool] = lambda: True,
        budget: int | None = None,
    ) -> WatchResult:
        """Wait for mail (consumed and returned), a rename, or the timeout. Mail already pending
        is returned at once. Consumes only while the requester is still connected."""
        identity.validate_name(name)
        timeout = max(0.0, min(float(timeout), MAX_WATCH_SECONDS))
        deadline = time.monotonic() + timeout
        waiter = self.waiters.register(name, exclusive)
        try:
            return await self._wait(waiter, deadline, still_connected, budget)
        finally:
            self.waiters.unregister(waiter)

    async def _wait(
        self, waiter: Waiter, deadline: float, still_connected: Callable[[], bool], budget: int | None
    ) -> WatchResult:
        """One long-poll on a registered waiter, until `deadline` (monotonic)."""
        name = waiter.mailbox
        while True:
            target = await self.db(lambda s: s.alias_target(name))
            if target:
                return WatchResult("renamed", [], target)
            if still_connected():
                consumed = await self.check(name, budget)
                if consumed.messages:
                    return WatchResult("mail", consumed.messages)
            wake = await waiter.next(deadline - time.monotonic())
            if wake is None:
                return WatchResult("timeout", [])
            if wake.kind == "renamed":
                return WatchResult("renamed", [], wake.detail)
            if wake.kind != "mail":
                return WatchResult(wake.kind, [])
            if not still_connected():
                return WatchResult("timeout", [])

    async def undeliver(self, messages: list[Message]) -> None:
        ids = [message.id for message in messages]
        if ids:
            await self.db(lambda s: s.undeliver(ids))
            self.waiters.notify(messages[0].recipient, Wake("mail"))

    # --- sessions and hooks ----------------------------------------------------------------

    async def session_start(
        self, hook: hooktext.HookInput, claude_pid: int | None, prefix: str | None, fixed: str | None = None
    ) -> HookReply:
        """Register the session and render its announcement. `fixed` (an X-Mailbox header, from hooks
        installed by `install-hook --name N`) names the mailbox instead of the session id."""
        if fixed:
            mailbox = identity.validate_name(fixed, "X-Mailbox header")
        else:
            mailbox = identity.session_mailbox(hook.session_id, prefix or self.config.prefix)
        pid_started = liveness.process_start_time(claude_pid) if claude_pid else None
        rename_from = None
        if hook.source == "clear" and claude_pid:
            previous = await self.db(lambda s: s.session_for_pid(claude_pid))
            if previous is not None and previous.session_id != hook.session_id:
                rename_from = previous.mailbox
        project_dir = hook.raw.get("project_dir") if isinstance(hook.raw.get("project_dir"), str) else hook.cwd
        rename: Rename | None = await self.db(
            lambda s: s.register_session(
                session_id=hook.session_id,
                mailbox=mailbox,
                claude_pid=claude_pid,
                pid_started=pid_started,
                cwd=hook.cwd,
                project_dir=project_dir,
                source=hook.source,
                rename_from=rename_from,
            )
        )
        if rename is not None:
            self.waiters.notify(rename.old, Wake("renamed", rename.new))
        views, pending = await self.list(mailbox)
        cutoff = iso_before(PEER_WINDOW_SECONDS)
        peers = [
            hooktext.Peer(v.mailbox.name, v.mailbox.project_dir, v.alive, v.mailbox.pending, v.state == "alive")
            for v in views
            if v.mailbox.name != mailbox and v.mailbox.last_seen >= cutoff and v.state in ("alive", "client")
        ]
        context = hooktext.session_start_context(mailbox, peers, pending, rename.old if rename else None, not fixed)
        return HookReply(stdout=hooktext.context_output("SessionStart", context))

    async def session_mailbox(self, hook: hooktext.HookInput, prefix: str | None) -> str:
        """The session's registered mailbox, else the one its id derives to."""
        session = await self.db(lambda s: s.session(hook.session_id))
        if session is not None:
            return session.mailbox
        return identity.session_mailbox(hook.session_id, prefix or self.config.prefix)

    async def prompt_submit(self, hook: hooktext.HookInput, prefix: str | None, fixed: str | None = None) -> HookReply:
        if fixed:
            mailbox = identity.validate_name(fixed, "X-Mailbox header")
        else:
            mailbox = await self.session_mailbox(hook, prefix)
        consumed = await self.db(
            lambda s: s.consume(
                mailbox,
                budget=hooktext.mail_budget(),
                cost=lambda m: len(hooktext.render_message(m)) + 1,
                skip_oversized=True,  # one huge message must not hold back the mail behind it
            )
        )
        if not consumed.messages and not consumed.remaining:
            return HookReply()
        context = hooktext.mail_context(consumed.messages, consumed.remaining, consumed.oversized)
        return HookReply(stdout=hooktext.context_output("UserPromptSubmit", context), delivered=consumed.messages)

    async def session_end(self, hook: hooktext.HookInput) -> HookReply:
        session = await self.db(lambda s: s.end_session(hook.session_id, hook.reason))
        if session is not None:
            self.waiters.stop_exclusive(f"stop:{session.session_id}")
        return HookReply()

    async def stop_wait(
        self, hook: hooktext.HookInput, prefix: str | None, still_connected: Callable[[], bool]
    ) -> HookReply:
        """The asyncRewake Stop hook: in collaboration mode, hold until mail arrives, then hand it
        to Claude (stderr + exit 2 starts a new turn). Otherwise return at once."""
        session = await self.db(lambda s: s.session(hook.session_id))
        if session is None or not session.collaborate or session.ended_at:
            return HookReply()
        pid, started = session.claude_pid, session.pid_started

        def deliverable() -> bool:
            # An orphaned waiter (its Claude Code was killed, so no SessionEnd came) must not eat mail.
            return still_connected() and (pid is None or liveness.is_alive(pid, started))

        waiter = self.waiters.register(session.mailbox, f"stop:{session.session_id}")
        try:
            while True:
                deadline = time.monotonic() + STOP_RECHECK_SECONDS
                result = await self._wait(waiter, deadline, deliverable, hooktext.mail_budget())
                if result.event == "mail":
                    return HookReply(stderr=hooktext.wake_text(result.messages), exit_code=2, delivered=result.messages)
                if result.event == "shutdown":
                    raise ShuttingDown("the daemon is shutting down; reconnect to the next one")
                if result.event != "timeout" or not deliverable():
                    return HookReply()  # replaced, stopped (collaboration off, session end), renamed
        finally:
            self.waiters.unregister(waiter)

    async def set_collaborate(self, mailbox: str, on: bool) -> bool:
        identity.validate_name(mailbox)
        found = await self.db(lambda s: s.set_collaborate(mailbox, on))
        if not on:
            session = await self.db(lambda s: s.session_for_mailbox(mailbox))
            if session is not None:
                self.waiters.stop_exclusive(f"stop:{session.session_id}")
        return found

    async def collaborating(self, mailbox: str) -> bool:
        identity.validate_name(mailbox)
        session = await self.db(lambda s: s.session_for_mailbox(mailbox))
        return bool(session and session.collaborate and not session.ended_at)

    async def stop_waiter_attached(self, mailbox: str) -> bool:
        """Is this session's Stop-hook waiter connected right now (is the wake-up path working)?"""
        session = await self.db(lambda s: s.session_for_mailbox(mailbox))
        return bool(session and self.waiters.holds(f"stop:{session.session_id}"))

    async def whois(self, session_id: str) -> str | None:
        session = await self.db(lambda s: s.session(session_id))
        return session.mailbox if session else None

    # --- housekeeping ------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        with contextlib.suppress(Exception):
            await self.db(lambda s: s.checkpoint())

    async def prune(self, older_than_days: float, dry_run: bool = False) -> int:
        cutoff = iso_before(older_than_days * 86400)
        return await self.db(lambda s: s.prune(cutoff, dry_run=dry_run))

    def require_owner(self, name: str, header_name: str | None) -> None:
        """Consuming an inbox needs the X-Mailbox header to name it (the seed's rule)."""
        if not header_name:
            raise IdentityRequired("the X-Mailbox header is required and must equal `name`")
        if header_name != name:
            raise IdentityMismatch(f"X-Mailbox {header_name!r} may not read the inbox of {name!r}")

    def info(self) -> dict[str, Any]:
        return {"dbPath": str(self.config.database), "port": self.config.port, "waiters": self.waiters.total()}
