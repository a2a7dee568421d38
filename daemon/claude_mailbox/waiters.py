"""In-process wake-ups for long-polls: one event per waiting request, keyed by mailbox.

A send wakes every waiter on the recipient at once (no database polling). A waiter registered
with an `exclusive` key replaces the previous holder of that key, which wakes with "replaced":
this is how the daemon keeps exactly one Stop-hook waiter per session without lock files.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from claude_mailbox.errors import Overloaded

ANY_MAILBOX = "*"  # not a valid mailbox name: waiters registered here wake on mail to anyone


@dataclass(frozen=True)
class Wake:
    kind: str  # "mail" | "renamed" | "replaced" | "stopped" | "shutdown"
    detail: str | None = None  # the new name, for "renamed"


class Waiter:
    def __init__(self, mailbox: str) -> None:
        self.mailbox = mailbox
        self._event = asyncio.Event()
        self._wakes: list[Wake] = []

    def wake(self, wake: Wake) -> None:
        self._wakes.append(wake)
        self._event.set()

    async def next(self, timeout: float) -> Wake | None:
        """The next wake-up, or None when `timeout` seconds pass first."""
        if not self._wakes:
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                return None
        self._event.clear()
        # Terminal events win over mail: a replaced or stopped waiter must not consume.
        for kind in ("shutdown", "replaced", "stopped", "renamed"):
            for wake in self._wakes:
                if wake.kind == kind:
                    self._wakes.clear()
                    return wake
        self._wakes.clear()
        return Wake("mail")


class WaiterRegistry:
    def __init__(self, capacity: int | None = None) -> None:
        self._by_mailbox: dict[str, set[Waiter]] = {}
        self._exclusive: dict[str, Waiter] = {}
        self._count = 0
        self.capacity = capacity  # waiting long-polls at most (max_watchers); None: no cap
        self.refused = 0

    def register(self, mailbox: str, exclusive: str | None = None) -> Waiter:
        """Over the cap: Overloaded (503 at once). A session's Stop hook replacing its own waiter
        is always let in: it adds nothing, and it is the one waiter that session keeps."""
        replaces = exclusive is not None and exclusive in self._exclusive
        if self.capacity is not None and self._count >= self.capacity and not replaces:
            self.refused += 1
            raise Overloaded(
                f"{self._count} long-polls are already waiting (max_watchers); retry shortly", retry_after=5
            )
        waiter = Waiter(mailbox)
        self._count += 1
        self._by_mailbox.setdefault(mailbox, set()).add(waiter)
        if exclusive is not None:
            previous = self._exclusive.get(exclusive)
            if previous is not None:
                previous.wake(Wake("replaced"))
            self._exclusive[exclusive] = waiter
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        waiters = self._by_mailbox.get(waiter.mailbox)
        if waiters is not None and waiter in waiters:
            self._count -= 1
            waiters.discard(waiter)
            if not waiters:
                del self._by_mailbox[waiter.mailbox]
        for key, holder in list(self._exclusive.items()):
            if holder is waiter:
                del self._exclusive[key]

    def notify(self, mailbox: str, wake: Wake) -> None:
        for waiter in list(self._by_mailbox.get(mailbox, ())):
            waiter.wake(wake)
        if wake.kind == "mail" and mailbox != ANY_MAILBOX:
            for waiter in list(self._by_mailbox.get(ANY_MAILBOX, ())):
                waiter.wake(wake)

    def watch_all(self) -> Waiter:
        """A waiter woken by mail to any mailbox (the human view's feed); unregister it as any other."""
        return self.register(ANY_MAILBOX)

    def stop_exclusive(self, key: str) -> None:
        holder = self._exclusive.get(key)
        if holder is not None:
            holder.wake(Wake("stopped"))

    def shutdown(self) -> None:
        for waiters in list(self._by_mailbox.values()):
            for waiter in list(waiters):
                waiter.wake(Wake("shutdown"))

    def watched(self) -> list[str]:
        """Every mailbox someone waits on (woken all at once after another daemon's wake-ups were missed)."""
        return [name for name in self._by_mailbox if name != ANY_MAILBOX]

    def holds(self, key: str) -> bool:
        """Is a waiter registered under this exclusive key?"""
        return key in self._exclusive

    def total(self) -> int:
        return self._count
