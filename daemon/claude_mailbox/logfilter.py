"""Never the same error in the log more than once a second (issue 12.2): a flood of failing
connections once wrote 55.8 MB of identical "Too many open files" tracebacks in 25 s.

The filter keys a record by logger, level, message template and exception type; a repeat within
the window is dropped and counted, and the next one let through says how many were dropped.
"""

from __future__ import annotations

import logging
import time

WINDOW_SECONDS = 1.0
# The daemon's own loggers and the ones aiohttp and asyncio log connection failures on. A filter
# on a logger sees only records logged on that very logger, so each is named.
LOGGERS = (
    "claude_mailbox",
    "claude_mailbox.pgstore",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.access",
    "aiohttp.internal",
    "asyncio",
)
_MAX_KEYS = 10_000


class RepeatFilter(logging.Filter):
    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        super().__init__()
        self.window = window
        self._last: dict[tuple[str, int, str, str], tuple[float, int]] = {}  # key -> (last let through, dropped)
        self.suppressed = 0  # in all, for tests and /health

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        key = (record.name, record.levelno, str(record.msg), type(error).__name__ if error else "")
        now = time.monotonic()
        last, dropped = self._last.get(key, (float("-inf"), 0))
        if now - last < self.window:
            self._last[key] = (last, dropped + 1)
            self.suppressed += 1
            return False
        if len(self._last) >= _MAX_KEYS:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.window}
        self._last[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} [{dropped} repeats of this in the last {now - last:.0f} s not logged]"
        return True


def install(names: tuple[str, ...] = LOGGERS) -> RepeatFilter:
    """One shared filter on each logger (the same key from two loggers stays two keys)."""
    repeat = RepeatFilter()
    for name in names:
        logging.getLogger(name).addFilter(repeat)
    return repeat


def uninstall(repeat: RepeatFilter, names: tuple[str, ...] = LOGGERS) -> None:
    for name in names:
        logging.getLogger(name).removeFilter(repeat)
