"""Notice a database damaged while the daemon runs (issue 12.6): `PRAGMA quick_check` every
`integrity_check_minutes` and at SIGHUP, on a connection of its own in a worker thread; the last
result is in /health (`integrity`) and `claude-mailbox status`, and damage is logged."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from claude_mailbox import store
from claude_mailbox.model import now_iso

log = logging.getLogger("claude_mailbox")


class IntegrityMonitor:
    def __init__(self, path: Path, interval_minutes: int) -> None:
        self.path = path
        self.interval = interval_minutes * 60.0
        self.state = "unchecked"  # "ok" | "damaged" | "unchecked" | "checking"
        self.problem: str | None = None
        self.checked_at: str | None = None
        self.seconds: float | None = None
        self._running: asyncio.Task[None] | None = None

    def info(self) -> dict[str, Any]:
        return {
            "integrity": {
                "state": self.state,
                "problem": self.problem,
                "checkedAt": self.checked_at,
                "seconds": self.seconds,
                "everyMinutes": int(self.interval // 60),
            }
        }

    def opened(self) -> None:
        """The store checked the file as it opened it (Store.__init__): that counts as the first check."""
        self.state, self.problem, self.checked_at = "ok", None, now_iso()

    def request(self) -> asyncio.Task[None]:
        """Start a check now (SIGHUP), unless one is running: that one's result is as fresh."""
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self.check())
        return self._running

    async def check(self) -> None:
        previous = self.state
        self.state = "checking" if previous == "unchecked" else previous
        started = time.perf_counter()
        problem = await asyncio.to_thread(store.quick_check, self.path)
        self.seconds = round(time.perf_counter() - started, 3)
        self.checked_at = now_iso()
        self.problem = problem
        self.state = "ok" if problem is None else "damaged"
        if problem is not None:
            log.error(
                "database %s is damaged (PRAGMA quick_check: %s): stop the daemon, keep a copy of the file, "
                "then restore a backup or move it aside",
                self.path,
                problem,
            )
        elif previous == "damaged":
            log.warning("database %s passes PRAGMA quick_check again", self.path)

    async def run(self) -> None:
        """The schedule: first check after one interval (the open at start already checked it)."""
        if self.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.request()
            except Exception:
                log.exception("the scheduled integrity check failed; retrying in %.0f s", self.interval)
