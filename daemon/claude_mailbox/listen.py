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

from claude_mailbox.config import Config, remote_problem
from claude_mailbox.errors import ConfigError, MailboxError
from claude_mailbox.locate import connect_host

TYPE_CHECKING = False  # not `typing`: nothing extra before the socket listens (mypy knows this name)
if TYPE_CHECKING:
    import ssl

# Connections that may wait while the app starts (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024


def listen(config: Config) -> socket.socket:
    """A listening TCP socket on config.bind:config.port (port 0: any free port); ConfigError with a
    one-line reason when that is not possible (beyond loopback without token and TLS, unusable TLS
    files, port taken, no permission)."""
    problem = remote_problem(config)
    if problem:
        raise ConfigError(problem)
    if config.tls:
        ssl_context(config)  # a bad certificate or key stops the start here, in one line
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


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context of tls_cert / tls_key (None without TLS); ConfigError in one line."""
    if not config.tls:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(f"cannot use tls_cert {config.tls_cert} with tls_key {config.tls_key}: {reason}") from None
    return context


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _address(bind: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """`localhost` binds one address, the one clients connect to (locate.connect_host)."""
    bind = connect_host(bind)
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
