"""The daemon's HTTP app: builds it around the route table (routes.py: REST, MCP at /mcp, the web
page), guards every request (Host, Origin, content type, token, rate), gives every error one
shape, runs the background jobs and serves until a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import logging
import math
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import http_exceptions, web

from claude_mailbox import __version__, auth, fsutil, listen, logfilter, paths, rest, routes
from claude_mailbox.config import Config
from claude_mailbox.errors import (
    Forbidden,
    InternalError,
    InvalidInput,
    MailboxError,
    MethodNotAllowed,
    MisdirectedHost,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
)
from claude_mailbox.integrity import IntegrityMonitor
from claude_mailbox.limits import LIMITS, DaemonRunner, Limits, open_file_limit, spend_rate
from claude_mailbox.locate import LOOPBACK_NAMES
from claude_mailbox.service import LEASE_SWEEP_SECONDS, MailboxService

CONFIG = web.AppKey("config", Config)
TOKEN = rest.TOKEN  # (the token, its file), or () with auth = "none"
INTEGRITY = web.AppKey("integrity", IntegrityMonitor)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_HOSTS = LOOPBACK_NAMES | {"[::1]"}  # a Host header brackets an IPv6 address
CHECKPOINT_INTERVAL = 2.0
RETENTION_INTERVAL = 24 * 3600.0
VERSION_HEADER = "X-Mailbox-Daemon-Version"
SHUTDOWN_SETTLE_SECONDS = 0.1
log = logging.getLogger("claude_mailbox")


def error_response(error: MailboxError) -> web.Response:
    """The one error shape of the REST surface: {"error": {"code", "message"}}."""
    response = web.json_response(error_body(error), status=error.http_status)
    if error.retry_after is not None:
        # Rounded up: a client that waits exactly this long must not be refused again.
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if isinstance(error, Overloaded):
        response.force_close()  # a refused long-poll must give its connection (a file descriptor) back
    if isinstance(error, MethodNotAllowed) and error.allow:
        response.headers["Allow"] = error.allow  # a 405 must say which methods are allowed (RFC 9110)
    if error.http_status == 401:
        response.headers["WWW-Authenticate"] = f'{auth.SCHEME} realm="claude-mailbox"'
    return response


_HTTP_ERRORS: dict[int, type[MailboxError]] = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge}


@web.middleware
async def front_door(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request passes here once, in this order: the browser guards (Host, Origin, content
    type), the body read within the client timeout, the token, the rate limits, then the route.
    Any error leaves in the one JSON shape. One middleware, so the order of the checks is read in
    one place (and a request pays one layer, not four)."""
    try:
        guard(request)
        if request.body_exists and not await _read_body(request, request.app[CONFIG].client_timeout_seconds):
            response = error_response(RequestTimeout("the request body did not arrive in time"))
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()  # no lingering read of the rest of a trickled body
            return response
        operation = routes.operation_of(request)
        authenticate(request, operation is not None and operation.public)
        if await routes.spends_send_budget(request, operation):
            spend_rate(request)
        return await handler(request)
    except MailboxError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type = _HTTP_ERRORS.get(exc.status, InvalidInput)
        message = {
            404: f"no route {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: "request body too large",
        }.get(exc.status, exc.reason)
        error = MethodNotAllowed(message, allow=exc.headers["Allow"]) if exc.status == 405 else error_type(message)
        error.http_status = exc.status  # keep aiohttp's status (e.g. 500), only the body changes
        return error_response(error)
    except ConnectionError:
        raise  # the client went away: nobody to answer
    except Exception:
        log.exception("internal error handling %s %s", request.method, request.path)
        return error_response(InternalError("internal error in the daemon; its log has the details"))


@functools.lru_cache(maxsize=64)  # a daemon sees a handful of Host values; parsing one per request adds up
def host_allowed(host: str | None, public: frozenset[str] = frozenset()) -> bool:
    """A loopback name (or one of `public`, the configured public names) with an optional numeric
    port, nothing else ("127.0.0.1:1@evil", "[::1].evil" fail)."""
    if not host:
        return False
    if host.lower() in LOOPBACK_HOSTS or host.lower() in public:
        return True
    if host.startswith("["):
        end = host.find("]") + 1
        name, port = host[:end], host[end:]
    else:
        name, port = (host[: host.index(":")], host[host.index(":") :]) if ":" in host else (host, "")
    if port and not (port[0] == ":" and 1 < len(port) <= 6 and all("0" <= ch <= "9" for ch in port[1:])):
        return False
    return bool(name) and (name.lower() in LOOPBACK_HOSTS or name.lower() in public)


def origin_allowed(origin: str, public: frozenset[str] = frozenset()) -> bool:
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and host_allowed(rest.split("/", 1)[0], public)


def guard(request: web.Request) -> None:
    """Browser defences for every route: DNS rebinding (Host), cross-site requests (Origin), and
    simple-request posts (content type), before anything reaches the store."""
    public = request.app[CONFIG].public_names
    if not host_allowed(request.headers.get("Host"), public):
        names = ", ".join(["127.0.0.1", "localhost", "[::1]", *sorted(public)])
        raise MisdirectedHost(f"requests must address {names}")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, public):
        raise Forbidden(f"cross-origin requests from {origin!r} are not allowed")
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        has_body = request.content_length not in (None, 0) or request.headers.get("Transfer-Encoding")
        if (has_body or request.headers.get("Content-Type")) and request.content_type != "application/json":
            raise UnsupportedMediaType("POST bodies must be JSON (Content-Type: application/json)")


def authenticate(request: web.Request, public: bool) -> None:
    """Every route but the public ones (routes.py: /health, and the page's static shell, which holds
    no data) needs `Authorization: Bearer <token>` (issue 12.1): a loopback port has no file
    permissions, the token file has. Unknown paths answer 401 too, so nothing is learnt without
    the token."""
    token = request.app[TOKEN]
    if not public and not rest.has_token(request):
        how = (
            f'send "Authorization: Bearer <token>" with the token in {token[1]} '
            f'(curl -H "Authorization: Bearer $(cat {token[1]})"; clients read it or $CLAUDE_MAILBOX_TOKEN)'
        )
        if "Authorization" in request.headers:
            raise Unauthorized(f"the token sent is not this daemon's: {how}")
        raise Unauthorized(f'this daemon requires its token: {how}, or set auth = "none" in config.toml')


async def _read_body(request: web.Request, seconds: float) -> bool:
    """Read the whole body now, within the client timeout, so a client that trickles it cannot hold
    a handler; the handlers then get the buffered bytes. False when the time ran out."""
    if request.content.is_eof():  # the whole body is here already (the usual case): no timer needed
        await request.read()
        return True
    try:
        async with asyncio.timeout(seconds):
            await request.read()
    except TimeoutError:
        return False
    return True


# --- the app -----------------------------------------------------------------------------------


async def _version_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every response names the daemon's version, the streamed ones (hooks, watch) included: the
    SessionStart version sync reads it."""
    response.headers[VERSION_HEADER] = __version__


def make_app(config: Config, service: MailboxService | None = None, data_dir: Path | None = None) -> web.Application:
    """The app around `service` (default: a new one on `config`; tests pass their own).
    `data_dir`: where the token lives (default: the data dir); created there at the first start."""
    app = web.Application(
        # The rate limit counts only requests that have the token (the connection cap is in limits.py).
        middlewares=[front_door],
        client_max_size=config.max_request_bytes,
    )
    service = service or MailboxService(config)
    app[CONFIG] = config
    app[LIMITS] = limits = Limits.from_config(config, open_file_limit())
    service.waiters.capacity, limits.waiters = limits.max_watchers, service.waiters
    service.reporters.append(limits.info)
    if not getattr(config, "database_url", None):  # PostgreSQL checks its own pages
        app[INTEGRITY] = monitor = IntegrityMonitor(config.database, config.integrity_check_minutes)
        service.reporters.append(monitor.info)
    home = str(data_dir or paths.data_dir())
    if config.auth == "token":
        app[TOKEN] = (auth.ensure_token(home), auth.token_path(home))
        app[rest.PROOF_TOKEN] = app[TOKEN][0]
    else:
        app[TOKEN] = ()
        # Clients holding a token file still ask for the proof before they send anything.
        app[rest.PROOF_TOKEN] = auth.read_token_file(auth.token_path(home)) or ""
    app[rest.SERVICE] = service
    routes.add_routes(app)
    app.cleanup_ctx.append(_service_lifecycle)
    app.on_response_prepare.append(_version_header)
    return app


async def _service_lifecycle(app: web.Application) -> AsyncIterator[None]:
    service = app[rest.SERVICE]
    await service.open()
    app[routes.MCP] = asyncio.get_running_loop().create_future()
    mcp = asyncio.create_task(_run_mcp(service, app[routes.MCP]))
    tasks = [asyncio.create_task(_every(CHECKPOINT_INTERVAL, service.checkpoint))]
    if INTEGRITY in app:
        app[INTEGRITY].opened()
        tasks.append(asyncio.create_task(app[INTEGRITY].run()))
    if service.store.shared:  # a daemon that died leaves leases nobody else would time out
        tasks.append(asyncio.create_task(_every(LEASE_SWEEP_SECONDS, service.sweep_leases)))
    retention = app[CONFIG].retention_days
    if retention:
        tasks.append(asyncio.create_task(_every(RETENTION_INTERVAL, lambda: service.prune(retention), first=0.0)))
    try:
        yield
    finally:
        for task in [mcp, *tasks]:
            task.cancel()
        await asyncio.gather(mcp, *tasks, return_exceptions=True)  # leaves the MCP manager's run() first
        await service.close()


async def _run_mcp(service: MailboxService, ready: asyncio.Future[Any]) -> None:
    """Import the MCP SDK (about 1 s) off the start path, then serve MCP until shutdown: /health, REST
    and the hooks answer as soon as the store is open; MCP requests that arrive earlier await `ready`."""
    try:
        module = await asyncio.to_thread(importlib.import_module, "claude_mailbox.mcp_http")
        endpoint = module.McpEndpoint(service)
    except Exception as exc:  # MCP requests then fail with the one error shape; the rest keeps working
        log.exception("the MCP endpoint could not be loaded")
        ready.set_exception(InternalError(f"the MCP endpoint could not be loaded: {exc}"))
        return
    async with endpoint.run():
        ready.set_result(endpoint)
        await asyncio.Event().wait()  # until cancelled at shutdown


async def _every(interval: float, job: Callable[[], Awaitable[Any]], first: float | None = None) -> None:
    await asyncio.sleep(interval if first is None else first)
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed run (disk full, damaged file) is logged; the next one still happens
            log.exception("scheduled job failed; retrying in %.0f s", interval)
        await asyncio.sleep(interval)


# --- serve -------------------------------------------------------------------------------------


def raise_open_file_limit() -> None:
    """Every connection and waiting watcher holds a file descriptor: lift the soft limit (often
    256 or 1024) to the hard one, so the caps on connections bound the daemon, not the OS."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):  # macOS refuses RLIM_INFINITY: keep the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: Config, ready: Callable[[str], None] | None = None, sock: socket.socket | None = None) -> None:
    """Run until SIGTERM/SIGINT, then finish in-flight requests and close the database cleanly.
    `sock`: the socket `claude-mailbox serve` already listens on (listen.py, bound before this
    module's imports); None: bind one now."""
    if sock is None:
        sock = listen.listen(config)
    config = dataclasses.replace(config, port=listen.bound_port(sock))  # --port 0: /health names the real one
    if hasattr(signal, "SIGXFSZ"):
        # A file-size limit must fail the write (a clean error), not kill the daemon.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    raise_open_file_limit()
    logging.getLogger("aiohttp.server").addFilter(_without_client_garbage)
    repeats = logfilter.install()
    app = make_app(config)
    # keepalive_timeout also bounds the time to send a request's headers: aiohttp closes a connection
    # that has not completed a request's headers this long after it opened or after its last answer.
    runner = DaemonRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        keepalive_timeout=float(config.client_timeout_seconds),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    if hasattr(signal, "SIGHUP") and INTEGRITY in app:
        loop.add_signal_handler(signal.SIGHUP, app[INTEGRITY].request)  # "check the database now"
    await runner.setup()
    app[LIMITS].attach(runner.server)
    app[rest.SERVICE].reporters.append(lambda: {"logRepeatsSuppressed": repeats.suppressed})
    try:
        # Connections accepted by the kernel since listen() waited in the backlog: served from here on.
        await web.SockSite(runner, sock, ssl_context=listen.ssl_context(config)).start()
        url = config.url
        url_file = _write_url_file(url)
        if ready is not None:
            ready(url)
        await stop.wait()
    finally:
        app[rest.SERVICE].waiters.shutdown()
        # Stop listening first, then give connections accepted just before the signal time to read
        # their request: aiohttp 3.14's cleanup marks a connection closing before its first read,
        # ignores the request it then receives and waits shutdown_timeout (5 s) for it.
        for running_site in list(runner.sites):
            await running_site.stop()
        await asyncio.sleep(SHUTDOWN_SETTLE_SECONDS)
        await runner.cleanup()
        logfilter.uninstall(repeats)
    with contextlib.suppress(OSError):
        if url_file.read_text(encoding="utf-8") == url:
            url_file.unlink()


def _without_client_garbage(record: logging.LogRecord) -> bool:
    """aiohttp logs every malformed request (bad header bytes, ...) with a traceback; those are the
    client's fault and already answered 400, so a flood of them must not flood the daemon's log."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, ConnectionError):  # the client went away mid-answer: nothing to fix here
        return False
    return not (isinstance(error, http_exceptions.HttpProcessingError) and 400 <= error.code < 500)


def _write_url_file(url: str) -> Path:
    """Hooks read the running daemon's address from here instead of parsing config.toml (faster).
    A daemon they cannot find must not run on (issue 20.8): when it cannot be written (a full disk),
    the start fails with one line. A file that already says this address (left by a killed daemon)
    needs no write."""
    target = paths.url_file()
    try:
        fsutil.write_if_changed(target, url.encode("utf-8"))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MailboxError(
            f"cannot write {target} ({reason}), where the hooks and the CLI find this daemon's address; "
            "free some space (or make the data dir writable), then start the daemon again"
        ) from None
    return target


def run(config: Config, sock: socket.socket | None = None) -> int:
    def announce(url: str) -> None:
        print(f"claude-mailbox {__version__} listening on {url} (database {config.database_label})", flush=True)

    try:
        asyncio.run(serve(config, announce, sock))
    except MailboxError as exc:
        print(f"claude-mailbox: {exc.message}", file=sys.stderr)
        return 1
    return 0
