"""The route table: every operation the daemon answers, declared once (openapi.Operation). Its
handler, whether it needs the token and whether it spends the send budget are read from here by
`add_routes`, the front door's auth and rate limit (server.py), and /openapi.json.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from aiohttp import web

from claude_mailbox import __version__, openapi, rest, schemas, webui
from claude_mailbox.errors import MethodNotAllowed

MCP = web.AppKey("mcp", asyncio.Future)  # the MCP endpoint, once the SDK is imported (server._run_mcp)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(document(__version__))


@functools.cache
def document(version: str) -> dict[str, Any]:
    return openapi.build(OPERATIONS, version)


async def mcp_post(request: web.Request) -> web.StreamResponse:
    endpoint = await asyncio.shield(request.app[MCP])  # early requests wait for the SDK's import
    return await endpoint.handle(request)


async def mcp_not_allowed(request: web.Request) -> web.Response:
    raise MethodNotAllowed("the MCP endpoint is stateless: only POST is supported", allow="POST")


def tools_call_of_send(body: bytes) -> bool:
    """Whether an MCP request can send mail: a `tools/call` of `send` (in a batch too). Reads and
    listings do not spend the send budget; a body that does not parse sends nothing."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return any(
        isinstance(item, dict)
        and item.get("method") == "tools/call"
        and isinstance(item.get("params"), dict)
        and item["params"].get("name") == "send"
        for item in (message if isinstance(message, list) else [message])
    )


OPERATIONS = (
    openapi.Operation(
        "/health",
        "get",
        "health",
        "Is the daemon up; its version, database and limits.",
        schemas.Health,
        errors=(403, 421, 503),
        public=True,
        handler=rest.health,
    ),
    openapi.Operation(
        "/openapi.json",
        "get",
        "openapi",
        "This document.",
        "application/json",
        errors=(401, 403, 421),
        handler=openapi_document,
    ),
    openapi.Operation(
        "/v1/send",
        "post",
        "send",
        "Leave a message in another mailbox.",
        schemas.SendResponse,
        201,
        body=schemas.SendRequest,
        headers=(
            openapi.header(
                "X-Mailbox",
                False,
                "The sender's mailbox; this or `from` is required (400 identity_required without both).",
            ),
            openapi.header(
                "Idempotency-Key",
                False,
                "A retry with the same key (same sender, 24 h) answers the "
                "first message, status 200, and stores nothing.",
                {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$"},
            ),
        ),
        errors=(*openapi.POST_ERRORS, 507),
        extra={"200": "Repeated Idempotency-Key: the first message"},
        handler=rest.send,
        sends=True,
    ),
    openapi.Operation(
        "/v1/peek",
        "get",
        "peek",
        "Count pending mail without consuming it.",
        schemas.PeekResponse,
        query=schemas.NameQuery,
        handler=rest.peek,
    ),
    openapi.Operation(
        "/v1/check-inbox",
        "post",
        "checkInbox",
        "Take pending mail under a lease (ack=auto: delivered once answered).",
        schemas.CheckInboxResponse,
        query=schemas.CheckInboxQuery,
        body=schemas.NoBody,
        headers=(openapi.OWNER,),
        errors=openapi.POST_ERRORS,
        handler=rest.check_inbox,
    ),
    openapi.Operation(
        "/v1/ack",
        "post",
        "ack",
        "Acknowledge a lease from check-inbox?ack=manual.",
        schemas.AckResponse,
        query=schemas.NameQuery,
        body=schemas.AckRequest,
        headers=(openapi.OWNER,),
        errors=(*openapi.POST_ERRORS, 409),
        handler=rest.ack,
    ),
    openapi.Operation(
        "/v1/list",
        "get",
        "list",
        "Every mailbox with liveness, and how much is pending for the caller.",
        schemas.ListResponse,
        headers=(openapi.OPTIONAL_CALLER,),
        handler=rest.list_mailboxes,
    ),
    openapi.Operation(
        "/v1/watch",
        "post",
        "watch",
        "Wait for mail, a rename or the timeout (`watch --block`).",
        schemas.WatchResponse,
        query=schemas.WatchQuery,
        body=schemas.NoBody,
        headers=(openapi.OWNER,),
        errors=openapi.POST_ERRORS,
        tags=(openapi.LONG_POLL,),
        handler=rest.watch,
    ),
    openapi.Operation(
        "/v1/hooks/{event}",
        "post",
        "hook",
        "Claude Code's hooks relay their stdin here and print the answer (hooks/hook.py). prompt-submit "
        "and post-tool (after each tool call) hand out unread mail as context; the stop event holds the "
        "answer until mail arrives (only urgent mail when the session does not collaborate).",
        "text/plain",
        body=schemas.HookInput,
        headers=(
            openapi.header("X-Mailbox", False, "A fixed mailbox name for this session."),
            openapi.header("X-Mailbox-Prefix", False, "Base of the session's mailbox name."),
            openapi.header(
                "X-Mailbox-Claude-Pid", False, "The Claude Code process.", {"type": "string", "pattern": "^[0-9]{1,9}$"}
            ),
            openapi.header(
                "X-Mailbox-Ack", False, "manual: the relay acknowledges the mail it printed.", {"enum": ["manual"]}
            ),
            openapi.header(
                "X-Mailbox-Urgent-Wake",
                False,
                "0: the stop event of a session that does not collaborate does not wait for urgent mail.",
                {"enum": ["0"]},
            ),
        ),
        errors=(*openapi.POST_ERRORS, 404),
        tags=(openapi.LONG_POLL,),
        handler=rest.hook,
    ),
    openapi.Operation(
        "/v1/collaborate",
        "get",
        "collaborateStatus",
        "Is a mailbox in collaboration mode.",
        schemas.CollaborateResponse,
        query=schemas.NameQuery,
        handler=rest.collaborate,
    ),
    openapi.Operation(
        "/v1/collaborate",
        "post",
        "collaborate",
        "Turn collaboration mode on or off (the Stop hook then waits for mail).",
        schemas.CollaborateResponse,
        body=schemas.CollaborateRequest,
        headers=(openapi.OPTIONAL_CALLER,),
        errors=(*openapi.POST_ERRORS, 404),
        handler=rest.collaborate,
    ),
    openapi.Operation(
        "/v1/whoami",
        "get",
        "whoami",
        "The mailbox a Claude Code session registered.",
        schemas.WhoamiResponse,
        query=schemas.WhoamiQuery,
        errors=(*openapi.COMMON, 404),
        handler=rest.whoami,
    ),
    openapi.Operation(
        "/v1/prune",
        "post",
        "prune",
        "Delete delivered mail older than an age (pending mail is never touched); needs only the token.",
        schemas.PruneResponse,
        body=schemas.PruneRequest,
        errors=openapi.POST_ERRORS,
        handler=rest.prune,
    ),
    openapi.Operation(
        "/v1/forget",
        "post",
        "forget",
        "Remove a mailbox that only ever wrote to itself (the doctor's smoke test); X-Mailbox must name it.",
        schemas.ForgetResponse,
        body=schemas.ForgetRequest,
        headers=(openapi.header("X-Mailbox", True, "Must equal `name`."),),
        errors=openapi.POST_ERRORS,
        handler=rest.forget,
    ),
    openapi.Operation(
        "/v1/feed",
        "get",
        "feed",
        "Messages in order with their read state, for the page and `tail` (never consumes).",
        schemas.FeedResponse,
        query=schemas.FeedQuery,
        tags=(openapi.LONG_POLL,),
        handler=rest.feed,
    ),
    openapi.Operation(
        "/", "get", "page", "The live web page.", "text/html", errors=(403, 421), public=True, handler=webui.page
    ),
    openapi.Operation(
        "/static/{name}",
        "get",
        "static",
        "The page's script and style.",
        ("text/javascript", "text/css"),
        errors=(403, 404, 421),
        public=True,
        handler=webui.static,
        pattern="/static/{name:.+}",  # any path below it is the page's: 404 when unknown, never 401,
    ),
    openapi.Operation(
        "/mcp",
        "post",
        "mcp",
        "The MCP endpoint (Streamable HTTP, JSON answers; JSON-RPC body).",
        "application/json",
        body=dict,
        errors=(*openapi.POST_ERRORS, 406),
        tags=(openapi.MCP_TAG,),
        extra={"202": "A notification or response, accepted"},
        handler=mcp_post,
        sends=tools_call_of_send,
    ),
    openapi.Operation(
        "/mcp",
        "get",
        "mcpGet",
        "Not offered (no server-initiated stream).",
        None,
        405,
        errors=(401,),
        tags=(openapi.MCP_TAG,),
        handler=mcp_not_allowed,
    ),
    openapi.Operation(
        "/mcp",
        "delete",
        "mcpDelete",
        "Not offered (stateless sessions).",
        None,
        405,
        errors=(401,),
        tags=(openapi.MCP_TAG,),
        handler=mcp_not_allowed,
    ),
)


OPERATION = web.AppKey("operations", dict)  # each registered route -> its Operation


def add_routes(app: web.Application) -> None:
    """Register every operation; a GET answers HEAD too (aiohttp's add_get does the same)."""
    by_route: dict[web.AbstractRoute, openapi.Operation] = {}
    for op in OPERATIONS:
        resource = app.router.add_resource(op.pattern or op.path)
        methods = ("GET", "HEAD") if op.method == "get" else (op.method.upper(),)
        for method in methods:
            by_route[resource.add_route(method, op.handler)] = op
    app[OPERATION] = by_route


def operation_of(request: web.Request) -> openapi.Operation | None:
    """The request's operation; None for a path or method no route answers (404, 405)."""
    operation: openapi.Operation | None = request.app[OPERATION].get(request.match_info.route)
    return operation


async def spends_send_budget(request: web.Request, operation: openapi.Operation | None) -> bool:
    if operation is None or operation.sends is False:
        return False
    return operation.sends is True or operation.sends(await request.read())
