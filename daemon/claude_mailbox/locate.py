"""Where the data dir is and which address the daemon listens on, with only `os` imported.

The one resolver of the daemon's address: every client-side path (CLI, hooks, headersHelper,
doctor, status, lifecycle) asks `resolve()`. Precedence, first found wins:

1. an explicit `--url` flag;
2. `$CLAUDE_MAILBOX_URL`;
3. `daemon.url` in the data dir (written by the running daemon at start, removed at a clean stop);
4. `port` / `bind` in config.toml (or the seed's mailbox.json);
5. http://127.0.0.1:37849.

The hook process uses this on every prompt (pathlib alone would cost it ~4 ms); config.toml is only
parsed when nothing before it answered.
"""

from __future__ import annotations

import os

DEFAULT_PORT = 37849
DEFAULT_BIND = "127.0.0.1"
DEFAULT_URL = f"http://{DEFAULT_BIND}:{DEFAULT_PORT}"
URL_FILE = "daemon.url"
URL_ENV = "CLAUDE_MAILBOX_URL"

# Where a resolved address came from, as `resolve()` names it (doctor and status show it).
FROM_FLAG, FROM_ENV, FROM_URL_FILE, FROM_CONFIG, FROM_DEFAULT = "--url", URL_ENV, URL_FILE, "config.toml", "default"


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


def configured_url() -> str | None:
    """The address config.toml (or mailbox.json) gives, None without a config file or when it is
    broken (the verbs that need the config report that; resolving an address must not fail)."""
    home = data_dir()
    if not any(os.path.isfile(os.path.join(home, name)) for name in ("config.toml", "mailbox.json")):
        return None
    from claude_mailbox import config
    from claude_mailbox.errors import MailboxError

    try:
        return config.load().url
    except MailboxError:
        return None


def resolve(flag: str | None = None) -> tuple[str, str]:
    """(the daemon's URL, where it came from): see the module docstring for the precedence."""
    if flag:
        return flag.rstrip("/"), FROM_FLAG
    env = os.environ.get(URL_ENV)
    if env:
        return env.rstrip("/"), FROM_ENV
    running = running_daemon_url()
    if running:
        return running.rstrip("/"), FROM_URL_FILE
    configured = configured_url()
    if configured:
        return configured, FROM_CONFIG
    return DEFAULT_URL, FROM_DEFAULT


def daemon_url(flag: str | None = None) -> str:
    """The daemon's URL by the one precedence (flag > env > daemon.url > config.toml > default)."""
    return resolve(flag)[0]
