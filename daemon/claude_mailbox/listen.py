"""Listen first: the daemon's socket is bound and listening before aiohttp, mcp and apsw are imported.

Claude Code opens the plugin's MCP connection while the SessionStart hook is still starting the
daemon, and retries once about 0.6 s later. A connection that arrives while the daemon imports its
heavy modules (0.6-1 s) must wait in the listen backlog and be answered when the app is ready, not
be refused: refused twice, the session has no mailbox tools for its whole life. Stdlib only.
"""

from __future__ import annotations

import errno
import os
import socket

from claude_mailbox.config import Config, is_loopback
from claude_mailbox.errors import ConfigError, MailboxError

# Connections that may wait while the app starts (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024


def listen(config: Config) -> socket.socket:
    """A listening TCP socket on config.bind:config.port (port 0: any free port); ConfigError with a
    one-line reason when that is not possible (not loopback, port taken, no permission)."""
    if not is_loopback(config.bind):
        raise ConfigError(
            f"refusing to bind {config.bind}: claude-mailbox only listens on loopback (127.0.0.1, ::1, localhost)"
        )
    family, address = _address(config.bind, config.port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "nt":  # Windows' SO_REUSEADDR would let a second process steal the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)  # type: ignore[attr-defined,unused-ignore]
        else:  # restart at once after a stop, while old connections sit in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise ConfigError(describe_port_holder(config)) from None
        raise ConfigError(f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}") from None
    return sock


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _address(bind: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """`localhost` resolves to one address, IPv4 first (the URL names it, so either answers)."""
    if bind == "localhost":
        bind = "127.0.0.1"
    return (socket.AF_INET6 if ":" in bind else socket.AF_INET), (bind, port)


def describe_port_holder(config: Config) -> str:
    """Who holds the port: a claude-mailbox daemon (which version) or something else."""
    from claude_mailbox.client import MailboxClient

    try:
        info = MailboxClient(config.url, timeout=1.0).health()
    except MailboxError:
        return f"port {config.port} on {config.bind} is already in use by another program"
    if not isinstance(info, dict) or "version" not in info:
        return f"port {config.port} on {config.bind} is already in use by another program"
    return f"a claude-mailbox daemon (version {info.get('version')}) is already running on {config.url}"
