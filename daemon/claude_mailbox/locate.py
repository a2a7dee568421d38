"""Where the data dir is and which address the daemon listens on, with only `os` imported.

The hook process uses this on every prompt (pathlib alone would cost it ~4 ms); paths.py builds on it.
"""

from __future__ import annotations

import os

DEFAULT_PORT = 37849
DEFAULT_BIND = "127.0.0.1"
DEFAULT_URL = f"http://{DEFAULT_BIND}:{DEFAULT_PORT}"
URL_FILE = "daemon.url"


def data_dir() -> str:
    """`CLAUDE_MAILBOX_HOME`, else ~/.claude-mailbox."""
    return os.environ.get("CLAUDE_MAILBOX_HOME") or os.path.join(os.path.expanduser("~"), ".claude-mailbox")


def running_daemon_url() -> str | None:
    """The address the running daemon wrote down at start-up (None when there is none)."""
    try:
        with open(os.path.join(data_dir(), URL_FILE), encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def daemon_url() -> str:
    """$CLAUDE_MAILBOX_URL, else the running daemon's address, else the default."""
    return os.environ.get("CLAUDE_MAILBOX_URL") or running_daemon_url() or DEFAULT_URL
