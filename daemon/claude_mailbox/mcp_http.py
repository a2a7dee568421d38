"""MCP at /mcp: the SDK's low-level Server over its Streamable HTTP manager, behind a small
aiohttp-to-ASGI adapter. Going through the SDK's own hosting API means both protocol eras
(2026-07-28 stateless, and the handshake era Claude Code speaks) follow the spec without us
re-implementing it. Only `serve` imports this module (importing `mcp` costs ~0.7 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import mcp.types as types
from aiohttp import web
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from claude_mailbox import __version__
from claude_mailbox.errors import MailboxError
from claude_mailbox.rest import caller_from_headers
from claude_mailbox.service import Caller, MailboxService
from claude_mailbox.store import Lease
from claude_mailbox.tools import TOOLS, TOOLS_BY_NAME, check_arguments

LEASES_KEY = "claude_mailbox.leases"  # ASGI scope key: the leases of mail in this request's answer
INSTRUCTIONS = (
    "claude-mailbox lets parallel Claude Code sessions leave each other messages. Your own mailbox name is "
    "announced at session start; omit `from`/`name` to act as yourself."
)


def build_server(service: MailboxService) -> Server[Any]:
    tool_list = [
        types.Tool(
            name=tool.name,
            title=tool.title,
            description=tool.description,
            input_schema=tool.input_schema,
            annotations=types.ToolAnnotations(
                title=tool.title,
                read_only_hint=tool.read_only,
                idempotent_hint=tool.idempotent,
                destructive_hint=tool.destructive,
                open_world_hint=False,
            ),
        )
        for tool in TOOLS
    ]

    async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tool_list)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = TOOLS_BY_NAME.get(params.name)
        if tool is None:
            return _tool_error(f"unknown tool {params.name!r}; the tools are {', '.join(TOOLS_BY_NAME)}")
        caller = caller_from_headers(ctx.request.headers) if ctx.request is not None else Caller()
        leases = ctx.request.scope.get(LEASES_KEY) if ctx.request is not None else None
        if isinstance(leases, list):
            caller = dataclasses.replace(caller, leases=leases)
        try:
            arguments = dict(params.arguments or {})
            check_arguments(tool, arguments)
            result = await tool.run(service, arguments, caller)
        except MailboxError as exc:
            return _tool_error(exc.message)
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(result, ensure_ascii=False))], structured_content=result
        )

    server: Server[Any] = Server(
        "claude-mailbox",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
    # The SDK wraps every message in an OpenTelemetry span by default; the daemon never installs an
    # exporter, so the span is only per-call work (py-spy: ~9% of a tools/call's time inclusive).
    # Dropping it from `middleware` is the SDK's documented opt-out.
    middleware = getattr(server, "middleware", None)
    if isinstance(middleware, list):
        middleware[:] = [m for m in middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
    return server


def _tool_error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


class McpEndpoint:
    """Owns the SDK session manager. `run()` must be entered and left in one task (anyio scopes)."""

    def __init__(self, service: MailboxService) -> None:
        self.service = service
        self.manager = StreamableHTTPSessionManager(
            app=build_server(service),
            stateless=True,
            json_response=True,
            # Host and Origin are checked for every route by the server's guard middleware.
            security_settings=None,
        )

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Relay one aiohttp request through the SDK's ASGI interface."""
        body = await request.read()
        finished = asyncio.Event()
        body_sent = completed = False
        response: web.StreamResponse | None = None

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()  # the request has no more body; wait for the end of the exchange
            return {"type": "http.disconnect"}

        parts: list[bytes] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            # The answer is one JSON body (json_response=True): buffered and written with its headers in
            # one send() with a Content-Length, instead of headers, a chunk and a last chunk (three
            # syscalls and client wake-ups per call; measured with cProfile as the biggest per-call cost).
            nonlocal response, completed
            if message["type"] == "http.response.start":
                response = web.Response(status=message["status"])
                for name, value in message.get("headers", []):
                    key = name.decode("latin-1")
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        response.headers.add(key, value.decode("latin-1"))
            elif message["type"] == "http.response.body" and isinstance(response, web.Response):
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    response.body = b"".join(parts)
                    with contextlib.suppress(ConnectionError):  # the client hung up: its leases go back
                        await response.prepare(request)
                        await response.write_eof()
                        completed = True

        scope = _scope(request)
        leases: list[Lease] = []  # mail in this answer: acknowledged only once the answer is written
        scope[LEASES_KEY] = leases
        try:
            await self.manager.handle_request(scope, receive, send)
        finally:
            finished.set()
            for lease in leases:
                await asyncio.shield(self.service.settle(lease, written=completed))
        if response is None:
            raise web.HTTPInternalServerError(text="the MCP handler sent no response")
        return response


def _scope(request: web.Request) -> dict[str, Any]:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.raw_path.encode("latin-1"),
        "query_string": request.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": tuple(peer[:2]) if peer else None,
        "server": tuple(sock[:2]) if sock else None,
    }
