"""Is a Claude Code process still running? A pid plus its start time, so a reused pid is not alive."""

from __future__ import annotations

import psutil

# create_time() is rounded differently across platforms and calls; a second of slack is safe
# because a pid cannot be reused within the same second on any system we run on.
_START_TIME_SLACK = 1.0


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, OverflowError):
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    if not pid:
        return False
    current = process_start_time(pid)
    if current is None:
        return False
    return started is None or abs(current - started) <= _START_TIME_SLACK
