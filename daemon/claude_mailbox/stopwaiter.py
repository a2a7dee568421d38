"""The asyncRewake Stop waiter: one long relay that waits for mail, and rides out a daemon restart.

Imported by the relay only for the Stop event. The relay itself is passed in (`attempt`), so this
module does not import the relay core back.
"""

from __future__ import annotations

import time

from claude_mailbox.claudeproc import claude_pid, one_shot_print_run
from claude_mailbox.errors import DaemonUnreachable
from claude_mailbox.httpclient import ConnectionRefused
from claude_mailbox.locate import daemon_url

STOP_RECONNECT_SECONDS = 60.0  # a Stop waiter rides out a daemon restart (version sync) this long
STOP_RETRY_SECONDS = 0.5
STOP_WAITED_SECONDS = 1.0  # a Stop relay refused sooner never got to wait: the daemon is not running

TYPE_CHECKING = False  # not `typing` (mypy knows this name): the Stop hook starts like the others
if TYPE_CHECKING:
    from collections.abc import Callable

    # One Stop relay to the daemon at the given URL: (exit code, stream, text); DaemonUnreachable when
    # the daemon is gone (Restarting: it answered 503, shutting down).
    Attempt = Callable[[str], tuple[int, str, str]]


def wait(attempt: Attempt, url: str) -> tuple[int, str, str]:
    """Returns at once unless this session is collaborating; else when mail (or the end) comes."""
    if one_shot_print_run(claude_pid()):
        return 0, "stdout", ""
    deadline = None  # counted from the first failure: a waiter may have waited for hours before it
    while True:
        started = time.monotonic()
        try:
            return attempt(url)
        except DaemonUnreachable as exc:
            now = time.monotonic()
            if deadline is None:
                if isinstance(exc, ConnectionRefused) and now - started < STOP_WAITED_SECONDS:
                    # No daemon at all: nothing to wait on. Lingering would also hold up the exit of
                    # `claude -p`, which waits for pending async hooks.
                    return 0, "stdout", ""
                # It was waiting and the daemon went away (killed, or 503: shutting down): find the next one.
                deadline = now + STOP_RECONNECT_SECONDS
            if now > deadline:
                return 0, "stdout", ""
            time.sleep(STOP_RETRY_SECONDS)
            url = daemon_url()
