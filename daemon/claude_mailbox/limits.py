"""What keeps a flood from exhausting the daemon (issue 12.2, 12.5, 12.6): caps on open connections
and waiting long-polls sized to the open-file limit, answered 503 + Retry-After at once; a rate
limit per connection peer and a global ceiling that do not trust the claimed sender name; and
aiohttp's own protocol errors (oversized header, bad bytes) in the one JSON error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from claude_mailbox import __version__
from claude_mailbox.config import Config
from claude_mailbox.errors import InternalError, InvalidInput, MailboxError, Overloaded, PayloadTooLarge, error_bytes
from claude_mailbox.ratelimit import RateLimiter
from claude_mailbox.waiters import WaiterRegistry

# File descriptors kept out of the connection cap: the listening socket, the database and its
# -wal/-shm, the log, the MCP SDK's internals, the interpreter's own files (64), and the connections
# asyncio accepts in one go before any of them is looked at (aiohttp's listen backlog, 128), and
# the connections over the cap that are answered 503 before they close (OVER_CAP_ANSWERED).
FD_RESERVE = 64 + 128 + 64
OVER_CAP_ANSWERED = 32
# Connections kept free of long-polls, so /health, sends and reads still get through at the cap.
WATCHER_HEADROOM = 32
OVERLOAD_RETRY_SECONDS = 5
OVER_CAP_GRACE_SECONDS = 0.1  # a real client has sent its request by then
OVER_CAP_FLOOD_GRACE_SECONDS = 0.02
HEALTH_REQUESTS = (b"GET /health ", b"GET /health?", b"HEAD /health ")


def open_file_limit() -> int | None:
    """The current soft RLIMIT_NOFILE (None where there is none, e.g. Windows, or unlimited)."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def effective_caps(config: Config, fd_limit: int | None) -> tuple[int, int]:
    """(connections, watchers): the configured caps, lowered to what the open-file limit allows,
    watchers always leaving room for ordinary requests."""
    connections = config.max_connections
    if fd_limit is not None:
        # Half of a small limit stays free: a flood arrives faster than a loaded loop sheds it.
        reserve = max(FD_RESERVE, min(fd_limit // 2, 1024))
        connections = min(connections, max(8, fd_limit - reserve))
    watchers = min(config.max_watchers, max(1, connections - WATCHER_HEADROOM))
    return connections, watchers


@dataclass
class Limits:
    """The daemon's caps and peer rate limits; `server` is set once the runner exists (an app
    served by a test server has no connection cap)."""

    max_connections: int
    max_watchers: int
    per_peer: RateLimiter
    overall: RateLimiter
    waiters: WaiterRegistry | None = None
    server: web.Server | None = None
    refused: dict[str, int] = field(default_factory=lambda: {"connections": 0, "rate": 0})

    @classmethod
    def from_config(cls, config: Config, fd_limit: int | None) -> Limits:
        connections, watchers = effective_caps(config, fd_limit)
        peer, overall = config.peer_rate_limit, config.global_rate_limit
        return cls(
            connections,
            watchers,
            RateLimiter(peer, "requests from {key} that can send mail exceed {limit} a minute"),
            RateLimiter(overall, "requests that can send mail exceed the daemon's {limit} a minute"),
        )

    def attach(self, server: web.Server | None) -> None:
        self.server = server
        if isinstance(server, _Server):
            server.limits = self

    def connections(self) -> int:
        return len(self.server.connections) if self.server is not None else 0

    def info(self) -> dict[str, Any]:
        return {
            "connections": self.connections(),
            "maxConnections": self.max_connections,
            "maxWatchers": self.max_watchers,
            "peerRatePerMinute": int(self.per_peer.capacity),
            "globalRatePerMinute": int(self.overall.capacity),
            "refused": {**self.refused, "watchers": self.waiters.refused if self.waiters else 0},
        }


LIMITS = web.AppKey("limits", Limits)


def spend_rate(request: web.Request) -> None:
    """A request that can send mail (routes.py says which) spends from its peer's bucket and the
    global one: sender names are claims, rotating them must not lift the limit (issue 12.5)."""
    limits = request.app[LIMITS]
    try:
        limits.per_peer.take(request.remote or "unknown")
        limits.overall.take("everyone")
    except MailboxError:
        limits.refused["rate"] += 1
        raise


# --- aiohttp's protocol errors in the one error shape ------------------------------------------------


def _canned_overload(limit: int) -> bytes:
    body = error_bytes(Overloaded(f"the daemon has {limit} open connections (max_connections); retry shortly"))
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: {OVERLOAD_RETRY_SECONDS}\r\nConnection: close\r\nX-Mailbox-Daemon-Version: {__version__}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _JsonErrorHandler(RequestHandler):
    """A connection. Over the connection cap it answers 503 to whatever arrives first, without
    parsing or reaching the app, and closes: accepted connections are shed as fast as they come,
    so the open-file limit is never reached. Otherwise aiohttp's own: but requests its parser
    refuses (a header line over 8 KiB, too many headers, a long URL, bytes HTTP forbids), which it
    answers as text/plain before any middleware runs, get the same status with our JSON body."""

    _over_cap = False
    _shed: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limits = getattr(self._manager, "limits", None)
        if limits is not None and (open_now := limits.connections()) > limits.max_connections:
            self._over_cap = True
            limits.refused["connections"] += 1
            # One that sends nothing is closed soon, not after the keep-alive timeout; in a flood
            # sooner still (a request sent with the connect is read first: /health still gets in).
            flood = open_now > limits.max_connections + OVER_CAP_ANSWERED
            grace = OVER_CAP_FLOOD_GRACE_SECONDS if flood else OVER_CAP_GRACE_SECONDS
            self._shed = asyncio.get_running_loop().call_later(grace, transport.close)

    def data_received(self, data: bytes) -> None:
        if not self._over_cap or data.startswith(HEALTH_REQUESTS):
            # /health is answered even over the cap: it costs nothing and is how people and hooks
            # tell a busy daemon from a dead one.
            if self._shed is not None:
                self._shed.cancel()  # the keep-alive timeout closes it after its answer
                self._shed = None
            super().data_received(data)
            return
        # Answer once the request is here (what arrived is read: closing on unread bytes would
        # reset the connection and lose the answer); nothing more is read after it.
        transport = self.transport
        if transport is not None and not transport.is_closing():
            limits = getattr(self._manager, "limits", None)
            transport.write(_canned_overload(limits.max_connections if limits else 0))
            transport.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs (filtered) and refuses if already sent
        error: MailboxError
        if status >= 500:
            error = InternalError("internal error in the daemon; its log has the details")
        elif status == 413:
            error = PayloadTooLarge("request too large")
        else:
            # aiohttp's reason, without the client's bytes it quotes (b'...', bytearray(...)).
            reason = re.split(r":\s*(?:b['\"]|bytearray\()", str(message or HTTPStatus(status).phrase))[0]
            reason = " ".join(reason.split())[:200]
            error = InvalidInput(f"malformed HTTP request: {reason}")
        response = web.Response(
            status=status,
            body=error_bytes(error),
            content_type="application/json",
            headers={"X-Mailbox-Daemon-Version": __version__},
        )
        response.force_close()
        return response


class _Server(web.Server):
    limits: Limits | None = None  # set by Limits.attach once the runner exists

    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class DaemonRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors in the JSON shape."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        with contextlib.suppress(TypeError):  # aiohttp changed its Server: keep its plain-text 400s
            server.__class__ = _Server
        return server
