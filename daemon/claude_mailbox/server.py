"""The daemon's HTTP face: REST at /v1/*, MCP at /mcp, /health and /openapi.json, behind one guard
(Host, Origin, content type) and one error shape. The only module that imports aiohttp.web.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import http_exceptions, web

from claude_mailbox import __version__, hooktext, identity, openapi, paths
from claude_mailbox.config import Config, is_loopback
from claude_mailbox.errors import (
    ConfigError,
    Forbidden,
    InternalError,
    InvalidInput,
    MailboxError,
    MethodNotAllowed,
    MisdirectedHost,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from claude_mailbox.service import Caller, HookReply, MailboxService, caller_from_headers
from claude_mailbox.tools import mailbox_json

SERVICE = web.AppKey("service", MailboxService)
CONFIG = web.AppKey("config", Config)
MCP = web.AppKey("mcp", object)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
CHECKPOINT_INTERVAL = 2.0
RETENTION_INTERVAL = 24 * 3600.0
VERSION_HEADER = "X-Mailbox-Daemon-Version"
SHUTDOWN_SETTLE_SECONDS = 0.1
log = logging.getLogger("claude_mailbox")


def error_response(error: MailboxError) -> web.Response:
    """The one error shape of the REST surface: {"error": {"code", "message"}}."""
    response = web.json_response({"error": {"code": error.code, "message": error.message}}, status=error.http_status)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return response


_HTTP_ERRORS: dict[int, type[MailboxError]] = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except MailboxError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type = _HTTP_ERRORS.get(exc.status, InvalidInput)
        message = {
            404: f"no route {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: "request body too large",
        }.get(exc.status, exc.reason)
        error = error_type(message)
        error.http_status = exc.status  # keep aiohttp's status (e.g. 500), only the body changes
        response = error_response(error)
        if "Allow" in exc.headers:  # a 405 must say which methods are allowed (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
    except ConnectionError:
        raise  # the client went away: nobody to answer
    except Exception:
        log.exception("internal error handling %s %s", request.method, request.path)
        response = error_response(InternalError("internal error in the daemon; its log has the details"))
    response.headers[VERSION_HEADER] = __version__
    return response


def host_allowed(host: str | None) -> bool:
    """A loopback name with an optional numeric port, nothing else ("127.0.0.1:1@evil", "[::1].evil" fail)."""
    if not host:
        return False
    if host.lower() in LOOPBACK_HOSTS:
        return True
    if host.startswith("["):
        end = host.find("]") + 1
        name, port = host[:end], host[end:]
    else:
        name, port = (host[: host.index(":")], host[host.index(":") :]) if ":" in host else (host, "")
    if port and not (port[0] == ":" and 1 < len(port) <= 6 and all("0" <= ch <= "9" for ch in port[1:])):
        return False
    return bool(name) and name.lower() in LOOPBACK_HOSTS


def origin_allowed(origin: str) -> bool:
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and host_allowed(rest.split("/", 1)[0])


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Browser defences for every route: DNS rebinding (Host), cross-site requests (Origin), and
    simple-request posts (content type), before anything reaches the store."""
    if not host_allowed(request.headers.get("Host")):
        raise MisdirectedHost("requests must address 127.0.0.1, localhost or [::1]")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin):
        raise Forbidden(f"cross-origin requests from {origin!r} are not allowed")
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        has_body = request.content_length not in (None, 0) or request.headers.get("Transfer-Encoding")
        if (has_body or request.headers.get("Content-Type")) and request.content_type != "application/json":
            raise UnsupportedMediaType("POST bodies must be JSON (Content-Type: application/json)")
    if request.body_exists and not await _read_body(request, request.app[CONFIG].client_timeout_seconds):
        response = error_response(RequestTimeout("the request body did not arrive in time"))
        response.headers[VERSION_HEADER] = __version__
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()  # no lingering read of the rest of a trickled body
        return response
    return await handler(request)


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


# --- request helpers ---------------------------------------------------------------------------


def _query(request: web.Request, allowed: set[str]) -> dict[str, str]:
    unknown = set(request.query) - allowed
    if unknown:
        raise InvalidInput(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    for key in request.query:
        if len(request.query.getall(key)) > 1:
            raise InvalidInput(f"query parameter {key!r} given more than once")
    return dict(request.query)


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    return data


def _caller(request: web.Request) -> Caller:
    return caller_from_headers(request.headers)


def _required(query: dict[str, str], key: str) -> str:
    value = query.get(key)
    if value is None:
        raise InvalidInput(f"query parameter {key!r} is required")
    return value


def _number(query: dict[str, str], key: str, default: float, low: float, high: float) -> float:
    text = query.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{key} must be a number") from None
    if not low <= value <= high:
        raise InvalidInput(f"{key} must be between {low:g} and {high:g}")
    return value


def _connected(request: web.Request) -> Callable[[], bool]:
    return lambda: request.transport is not None and not request.transport.is_closing()


# --- routes ------------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response({"status": "ok", "version": __version__, **service.info()})


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(__version__))


async def send(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    _query(request, set())
    payload = await _json_object(request)
    unknown = set(payload) - {"to", "body", "from"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    sender = await service.resolve_caller(payload.get("from"), _caller(request), "from")
    if "to" not in payload or "body" not in payload:
        raise InvalidInput("fields 'to' and 'body' are required")
    message = await service.send(sender, payload["to"], payload["body"])
    return web.json_response(
        {"id": message.id, "from": message.sender, "to": message.recipient, "createdAt": message.created_at},
        status=201,
    )


async def peek(request: web.Request) -> web.Response:
    query = _query(request, {"name"})
    pending, oldest = await request.app[SERVICE].peek(_required(query, "name"))
    return web.json_response({"pending": pending, "oldestAt": oldest})


async def check_inbox(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    query = _query(request, {"name", "maxChars"})
    name = _required(query, "name")
    service.require_owner(name, request.headers.get("X-Mailbox"))
    await _json_object(request)
    budget = int(_number(query, "maxChars", 0, 1, 10_000_000)) or None
    consumed = await service.check(name, budget)
    return web.json_response({"messages": [m.to_json() for m in consumed.messages], "remaining": consumed.remaining})


async def list_mailboxes(request: web.Request) -> web.Response:
    _query(request, set())
    caller = request.headers.get("X-Mailbox") or None
    if caller is not None:
        identity.validate_name(caller, "X-Mailbox header")  # say which input was wrong, as MCP does
    views, pending = await request.app[SERVICE].list(caller)
    return web.json_response({"mailboxes": [mailbox_json(v) for v in views], "pendingForYou": pending})


async def watch(request: web.Request) -> web.StreamResponse:
    """Long-poll for `watch --block`: answers on mail, rename, or timeout (seconds)."""
    service = request.app[SERVICE]
    query = _query(request, {"name", "timeout"})
    name = _required(query, "name")
    service.require_owner(name, request.headers.get("X-Mailbox"))
    timeout = _number(query, "timeout", 25.0, 0.0, 3600.0)
    result = await service.watch(name, timeout, still_connected=_connected(request))
    body = {"event": result.event, "messages": [m.to_json() for m in result.messages], "newName": result.new_name}
    return await _deliver(request, service, json.dumps(body).encode(), result.messages, "application/json")


async def _deliver(
    request: web.Request, service: MailboxService, body: bytes, messages: list[Any], content_type: str, **headers: str
) -> web.StreamResponse:
    """Write a response that carries consumed mail; if the client is gone, put the mail back."""
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type, **headers})
    response.content_length = len(body)
    try:
        if not _connected(request)():
            raise ConnectionResetError("client went away")
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        await service.undeliver(messages)
        raise
    return response


async def hook(request: web.Request) -> web.StreamResponse:
    """Claude Code hooks relay their stdin here and print what comes back (see hook.py)."""
    service = request.app[SERVICE]
    event = request.match_info["event"]
    _query(request, set())
    hook_input = hooktext.parse_hook_input(await request.read())
    caller = _caller(request)
    prefix = request.headers.get("X-Mailbox-Prefix") or None
    reply: HookReply
    if event == "session-start":
        reply = await service.session_start(hook_input, caller.claude_pid, prefix, caller.header_name)
    elif event == "prompt-submit":
        reply = await service.prompt_submit(hook_input, prefix, caller.header_name)
    elif event == "session-end":
        reply = await service.session_end(hook_input)
    elif event == "stop":
        reply = await service.stop_wait(hook_input, prefix, _connected(request))
    else:
        raise NotFound(f"no hook event {event!r}")
    stream = "stderr" if reply.stderr else "stdout"
    text = reply.stderr or reply.stdout
    return await _deliver(
        request,
        service,
        text.encode("utf-8"),
        reply.delivered,
        "text/plain; charset=utf-8",
        **{"X-Hook-Stream": stream, "X-Hook-Exit": str(reply.exit_code)},
    )


async def collaborate(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if request.method == "GET":
        name = _required(_query(request, {"name"}), "name")
    else:
        _query(request, set())
        payload = await _json_object(request)
        name = payload.get("name")
        on = payload.get("on")
        if not isinstance(on, bool):
            raise InvalidInput("'on' must be true or false")
        if not isinstance(name, str):
            raise InvalidInput("'name' must be a mailbox name")
        if not await service.set_collaborate(name, on):
            raise NotFound(f"no Claude Code session owns mailbox {name!r}")
    return web.json_response(
        {
            "name": name,
            "collaborating": await service.collaborating(name),
            "stopWaiter": await service.stop_waiter_attached(name),
        }
    )


async def whoami(request: web.Request) -> web.Response:
    query = _query(request, {"session"})
    session_id = _required(query, "session")
    mailbox = await request.app[SERVICE].whois(session_id)
    if mailbox is None:
        raise NotFound(f"no session {session_id!r} has registered (did its SessionStart hook run?)")
    return web.json_response({"session": session_id, "name": mailbox})


async def mcp_post(request: web.Request) -> web.StreamResponse:
    return await request.app[MCP].handle(request)  # type: ignore[attr-defined]


async def mcp_not_allowed(request: web.Request) -> web.Response:
    response = error_response(MethodNotAllowed("the MCP endpoint is stateless: only POST is supported"))
    response.headers["Allow"] = "POST"
    return response


# --- the app -----------------------------------------------------------------------------------


async def _version_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every response names the daemon's version, also the streamed ones (hooks, watch) whose
    headers go out before errors_middleware sees them: the SessionStart version sync reads it."""
    response.headers[VERSION_HEADER] = __version__


def make_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, guard_middleware],
        client_max_size=config.max_request_bytes,
    )
    service = MailboxService(config)
    app[CONFIG] = config
    app[SERVICE] = service
    app.cleanup_ctx.append(_service_lifecycle)
    app.on_response_prepare.append(_version_header)
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_post("/v1/send", send)
    app.router.add_get("/v1/peek", peek)
    app.router.add_post("/v1/check-inbox", check_inbox)
    app.router.add_get("/v1/list", list_mailboxes)
    app.router.add_post("/v1/watch", watch)
    app.router.add_post("/v1/hooks/{event}", hook)
    app.router.add_get("/v1/collaborate", collaborate)
    app.router.add_post("/v1/collaborate", collaborate)
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_post("/mcp", mcp_post)
    app.router.add_get("/mcp", mcp_not_allowed)
    app.router.add_delete("/mcp", mcp_not_allowed)
    return app


async def _service_lifecycle(app: web.Application) -> AsyncIterator[None]:
    from claude_mailbox.mcp_http import McpEndpoint

    service = app[SERVICE]
    await service.open()
    endpoint = McpEndpoint(service)
    app[MCP] = endpoint
    tasks = [asyncio.create_task(_every(CHECKPOINT_INTERVAL, service.checkpoint))]
    retention = app[CONFIG].retention_days
    if retention:
        tasks.append(asyncio.create_task(_every(RETENTION_INTERVAL, lambda: service.prune(retention), first=0.0)))
    try:
        async with endpoint.run():
            yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await service.close()


async def _every(interval: float, job: Callable[[], Awaitable[Any]], first: float | None = None) -> None:
    await asyncio.sleep(interval if first is None else first)
    while True:
        with contextlib.suppress(MailboxError):
            await job()
        await asyncio.sleep(interval)


# --- serve -------------------------------------------------------------------------------------


def describe_port_holder(config: Config) -> str:
    """Who holds the port: a claude-mailbox daemon (which version) or something else."""
    from claude_mailbox.client import MailboxClient

    try:
        info = MailboxClient(config.url, timeout=1.0).health()
    except MailboxError:
        return f"port {config.port} on {config.bind} is already in use by another program"
    return f"a claude-mailbox daemon (version {info.get('version')}) is already running on {config.url}"


async def serve(config: Config, ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then finish in-flight requests and close the database cleanly."""
    if not is_loopback(config.bind):
        raise ConfigError(
            f"refusing to bind {config.bind}: claude-mailbox has no authentication yet, so it only listens "
            "on loopback (127.0.0.1, ::1, localhost)"
        )
    if hasattr(signal, "SIGXFSZ"):
        # A file-size limit must fail the write (a clean error), not kill the daemon.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    logging.getLogger("aiohttp.server").addFilter(_without_client_garbage)
    app = make_app(config)
    # keepalive_timeout also bounds the time to send a request's headers: aiohttp closes a connection
    # that has not completed a request's headers this long after it opened or after its last answer.
    runner = web.AppRunner(
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
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.bind, config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise ConfigError(describe_port_holder(config)) from None
            raise ConfigError(f"cannot listen on {config.bind}:{config.port}: {exc.strerror}") from None
        port = site._server.sockets[0].getsockname()[1] if site._server else config.port  # type: ignore[union-attr]
        url = f"http://{'[::1]' if ':' in config.bind else config.bind}:{port}"
        url_file = _write_url_file(url)
        if ready is not None:
            ready(url)
        await stop.wait()
    finally:
        app[SERVICE].waiters.shutdown()
        # Stop listening first, then give connections accepted just before the signal time to read
        # their request: aiohttp 3.14's cleanup marks a connection closing before its first read,
        # ignores the request it then receives and waits shutdown_timeout (5 s) for it.
        for running_site in list(runner.sites):
            await running_site.stop()
        await asyncio.sleep(SHUTDOWN_SETTLE_SECONDS)
        await runner.cleanup()
    with contextlib.suppress(OSError):
        if url_file.read_text(encoding="utf-8") == url:
            url_file.unlink()


def _without_client_garbage(record: logging.LogRecord) -> bool:
    """aiohttp logs every malformed request (bad header bytes, ...) with a traceback; those are the
    client's fault and already answered 400, so a flood of them must not flood the daemon's log."""
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, http_exceptions.HttpProcessingError) and 400 <= error.code < 500)


def _write_url_file(url: str) -> Path:
    """Hooks read the running daemon's address from here instead of parsing config.toml (faster)."""
    target = paths.url_file()
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(url, encoding="utf-8")
        os.replace(temporary, target)
    return target


def run(config: Config) -> int:
    def announce(url: str) -> None:
        print(f"claude-mailbox {__version__} listening on {url} (database {config.database})", flush=True)

    try:
        asyncio.run(serve(config, announce))
    except MailboxError as exc:
        print(f"claude-mailbox: {exc.message}", file=sys.stderr)
        return 1
    return 0
