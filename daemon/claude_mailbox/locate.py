"""Where the data dir is and which address the daemon listens on, with only `os` imported: the one
data-dir function (paths.py builds its Path values on it), the address resolver, and `Endpoint`, what
an address means (connect host, TLS, loopback).

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
HOME_ENV = "CLAUDE_MAILBOX_HOME"  # moves the whole data dir (tests point it at a temporary folder)
CONFIG_FILE = "config.toml"
LEGACY_CONFIG_FILE = "mailbox.json"  # the seed product's JSON config, still read

# Where a resolved address came from, as `resolve()` names it (doctor and status show it).
FROM_FLAG, FROM_ENV, FROM_URL_FILE, FROM_CONFIG, FROM_DEFAULT = "--url", URL_ENV, URL_FILE, CONFIG_FILE, "default"


def data_dir() -> str:
    """`CLAUDE_MAILBOX_HOME`, else ~/.claude-mailbox: the one place that decides it (paths.data_dir
    is this as a Path)."""
    return os.environ.get(HOME_ENV) or os.path.join(os.path.expanduser("~"), ".claude-mailbox")


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
    if not any(os.path.isfile(os.path.join(home, name)) for name in (CONFIG_FILE, LEGACY_CONFIG_FILE)):
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


# --- what an address means ---------------------------------------------------------------------

# This machine's names, lower case and without brackets: the one loopback test (is_loopback), and
# the names the daemon accepts in Host and Origin (server.LOOPBACK_HOSTS adds "[::1]").
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """Is `host` (a URL's host or a bind address, without brackets) this machine?"""
    host = host.lower()
    return host in LOOPBACK_NAMES or host.startswith("127.")


def connect_host(host: str) -> str:
    """The address to connect to or bind for `host`: `localhost` is 127.0.0.1 (one address, IPv4
    first: the URL names it, so either answers, and no resolver call on the hook's path)."""
    return DEFAULT_BIND if host.lower() == "localhost" else host


class Endpoint:
    """A daemon URL, parsed: its host as written (the name a certificate must carry), port, TLS."""

    __slots__ = ("host", "port", "tls")

    def __init__(self, host: str, port: int, tls: bool = False) -> None:
        self.host = host
        self.port = port
        self.tls = tls

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`http://127.0.0.1:37849` or `https://host:port` (a trailing slash or path is ignored) ->
        host, port and whether to speak TLS. MailboxError for anything else."""
        rest = url.strip()
        scheme = rest.partition("://")[0] if "://" in rest else ""
        if scheme not in ("http", "https"):
            raise _invalid(f"unsupported daemon URL {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        authority = rest[len(scheme) + 3 :].split("/", 1)[0]
        if authority.startswith("["):
            host, _, port_part = authority[1:].partition("]")
            port_text = port_part.lstrip(":")
        else:
            host, _, port_text = authority.partition(":")
        try:
            port = int(port_text) if port_text else (443 if scheme == "https" else 80)
        except ValueError:
            raise _invalid(f"invalid port in daemon URL {url!r}") from None
        if not host or not 0 < port < 65536:
            raise _invalid(f"invalid daemon URL {url!r}")
        return cls(host, port, scheme == "https")

    @property
    def is_loopback(self) -> bool:
        """The daemon is on this machine (a session start may start it here)."""
        return is_loopback(self.host)

    @property
    def connect_host(self) -> str:
        return connect_host(self.host)

    @property
    def ipv6(self) -> bool:
        """Connect over IPv6 (AF_INET6): the connect host is an IPv6 address."""
        return ":" in self.connect_host

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _invalid(message: str) -> Exception:
    from claude_mailbox.errors import MailboxError  # only a bad URL pays for it

    return MailboxError(message)
