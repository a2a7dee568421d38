"""MCP at /mcp: the SDK's low-level Server over its Streamable HTTP manager, behind a small
aiohttp-to-ASGI adapter. Going through the SDK's own hosting API means both protocol eras
(2026-07-28 stateless, and the handshake era Claude Code speaks) follow the spec without us
re-implementing it. Only `serve` imports this module (importing `mcp` costs ~0.7 s).

The hot requests (one well-formed `tools/call`, `tools/list` or `ping` POST) skip the manager's
per-request transport (memory streams, task groups, a JSON-RPC dispatcher: ~80% of a call's CPU) and
go straight to the SDK's single-request driver `serve_one`, with the `Connection` the manager would
build for that era; their answers are the manager's, byte for byte. Anything else goes to the manager.
The provisional SDK names this needs are all in mcp_sdk.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import mcp.types as types
import pydantic_core
from aiohttp import web
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from pydantic import ValidationError
from starlette.requests import Request

from claude_mailbox import __version__
from claude_mailbox import mcp_sdk as sdk
from claude_mailbox.errors import InvalidInput, MailboxError, error_body
from claude_mailbox.rest import caller_from_headers
from claude_mailbox.service import Caller, Delivery, MailboxService
from claude_mailbox.tools import TOOLS, TOOLS_BY_NAME, check_arguments

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "claude-mailbox lets parallel Claude Code sessions leave each other messages. Your own mailbox name is "
    "announced at session start; omit `from`/`name` to act as yourself."
)
FAST_METHODS = frozenset({"tools/call", "tools/list", "ping"})  # answered without the manager's transport
_PARAM_HEADER_PREFIX = sdk.MCP_PARAM_HEADER_PREFIX.lower()


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
            return _tool_error(InvalidInput(f"unknown tool {params.name!r}; the tools are {', '.join(TOOLS_BY_NAME)}"))
        caller = caller_from_headers(ctx.request.headers) if ctx.request is not None else Caller()
        try:
            arguments = dict(params.arguments or {})
            check_arguments(tool, arguments)
            result = await tool.run(service, arguments, caller)
        except MailboxError as exc:
            return _tool_error(exc)
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(result, ensure_ascii=False))], structured_content=result
        )

    server: Server[Any] = Server(
        "claude-mailbox",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        # The 2026-07-28 path checks a tools/call's Mcp-Param-* headers against the tool's schema; without
        # this lookup the SDK runs the tools/list handler on every such call to find the schema.
        get_tool_input_schema=lambda name: tool.input_schema if (tool := TOOLS_BY_NAME.get(name)) else None,
    )
    # The SDK wraps every message in an OpenTelemetry span by default; the daemon never installs an
    # exporter, so the span is only per-call work (py-spy: ~9% of a tools/call's time inclusive).
    # Dropping it from `middleware` is the SDK's documented opt-out.
    middleware = getattr(server, "middleware", None)
    if isinstance(middleware, list):
        middleware[:] = [m for m in middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
    return server


def _tool_error(error: MailboxError) -> types.CallToolResult:
    """The REST error's words as the text, and its body, stable `code` included, as structured content."""
    return types.CallToolResult(
        content=[types.TextContent(text=error.message)], structured_content=error_body(error), is_error=True
    )


@dataclasses.dataclass
class _Exchange:
    delivery: Delivery  # its `written`: the answer reached the socket, the mail in it may be acknowledged
    response: web.StreamResponse | None = None


class McpEndpoint:
    """Owns the SDK session manager. `run()` must be entered and left in one task (anyio scopes)."""

    def __init__(self, service: MailboxService) -> None:
        self.service = service
        self.server = build_server(service)
        # The fast path answers as this manager does: stateless, one JSON answer, no transport security.
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            stateless=True,
            json_response=True,
            # Host and Origin are checked for every route by the server's guard middleware.
            security_settings=None,
        )
        self.fast_path = True  # False sends every request through the manager (the tests compare the two)
        self.fast_answers = 0  # requests answered by the fast path
        # A tool that maps arguments to Mcp-Param-* headers needs the SDK's header check: none does today.
        self._param_headers_declared = any(sdk.x_mcp_header_map(tool.input_schema) for tool in TOOLS)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one POST: directly when it is a hot, well-formed request, else through the manager."""
        body = await request.read()
        scope = _scope(request)
        caller = caller_from_headers(request.headers)
        await self.service.confirm_reader(caller)  # it got its earlier answers (issue 20.3)
        # check_inbox's mail: acknowledged once written, or, to a Claude Code process, once it confirms.
        async with self.service.delivering(reader_pid=caller.claude_pid) as delivery:
            exchange = _Exchange(delivery)
            answer = await self._answer_directly(body, scope) if self.fast_path else None
            if answer is not None:
                self.fast_answers += 1
                status, text = answer
                response = web.Response(status=status, body=text.encode(), headers={"content-type": "application/json"})
                await _write(request, response, exchange)
            else:
                await self._relay(request, body, scope, exchange)
        if exchange.response is None:
            raise web.HTTPInternalServerError(text="the MCP handler sent no response")
        return exchange.response

    async def _answer_directly(self, body: bytes, scope: dict[str, Any]) -> tuple[int, str] | None:
        """The status and JSON body the manager would answer, or None to leave the request to it.

        Only the checks that can pass are made here; a request that fails any of them is the manager's
        to refuse, in its own words."""
        http = Request(scope)  # what the SDK hands the tools as `ctx.request`
        content_type = http.headers.get("content-type", "")
        if (
            len(body) > self.manager.max_request_body_size
            or content_type.split(";")[0].rstrip() != "application/json"  # passes both of the SDK's checks
            or not sdk.check_accept_headers(http)[0]  # json_response mode needs only application/json
        ):
            return None
        # The manager's era routing: a handshake-era version, or none, takes the stateless legacy path.
        version_header = sdk.MCP_PROTOCOL_VERSION_HEADER.encode("ascii")
        version = next((v.decode("latin-1") for k, v in scope["headers"] if k == version_header), None)
        if version is None or version in sdk.HANDSHAKE_PROTOCOL_VERSIONS:
            return await self._answer_handshake_era(http, body, version)
        return await self._answer_modern(http, body)

    async def _answer_handshake_era(self, http: Request, body: bytes, version: str | None) -> tuple[int, str] | None:
        """As the manager's stateless transport answers: a born-ready connection at the header's
        version, JSONRPCDispatcher's error mapping, the transport's serialisation."""
        try:
            message = sdk.jsonrpc_message_adapter.validate_python(pydantic_core.from_json(body), by_name=False)
        except ValueError:  # not JSON, or not JSON-RPC (ValidationError is a ValueError)
            return None
        if not isinstance(message, types.JSONRPCRequest) or message.method not in FAST_METHODS:
            return None
        connection = sdk.Connection.from_envelope(version or sdk.DEFAULT_NEGOTIATED_VERSION, None, None)
        dctx = sdk.SingleAnswer(
            sdk.TransportContext(kind="streamable-http", can_send_request=False),
            message.id,
            sdk.ServerMessageMetadata(request_context=http, can_send_request=False),
        )
        reply: types.JSONRPCResponse | types.JSONRPCError
        try:
            lifespan = sdk.lifespan_state(self.manager)
            result = await sdk.serve_one(
                self.server, dctx, message.method, message.params, connection=connection, lifespan_state=lifespan
            )
            reply = types.JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)
        except Exception as exc:
            error = sdk.handler_exception_to_error_data(exc)
            if error is None:  # what JSONRPCDispatcher answers for any other exception
                log.exception("handler for %r raised", message.method)
                error = types.ErrorData(code=0, message=str(exc))
            reply = types.JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
        return 200, reply.model_dump_json(by_alias=True, exclude_unset=True)

    async def _answer_modern(self, http: Request, body: bytes) -> tuple[int, str] | None:
        """As the SDK's 2026-07-28 single-exchange entry answers in JSON mode: the inbound ladder, a
        connection from the request's envelope, its error mapping and serialisation."""
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):  # the manager's own parse error answer
            return None
        # A notification (no "id", whatever else it holds), a batch, or a method left to the manager.
        if not isinstance(decoded, dict) or "id" not in decoded or decoded.get("method") not in FAST_METHODS:
            return None
        try:
            request = types.JSONRPCRequest.model_validate(decoded)
        except ValidationError:
            return None
        if sdk.find_duplicated_routing_header(http.headers.items()) is not None:
            return None
        if request.method == "tools/call" and (
            self._param_headers_declared or any(name.startswith(_PARAM_HEADER_PREFIX) for name in http.headers)
        ):
            return None
        route = sdk.classify_inbound_request(decoded, headers=dict(http.headers))
        if isinstance(route, sdk.InboundLadderRejection):
            return None
        connection = sdk.Connection.from_envelope(route.protocol_version, route.client_info, route.client_capabilities)
        dctx = sdk.SingleAnswer(
            sdk.TransportContext(kind="streamable-http", can_send_request=False, headers=http.headers),
            request.id,
            sdk.ServerMessageMetadata(request_context=http),
        )
        reply: types.JSONRPCResponse | types.JSONRPCError
        status = 200
        try:
            lifespan = sdk.lifespan_state(self.manager)
            result = await sdk.serve_one(
                self.server, dctx, request.method, request.params, connection=connection, lifespan_state=lifespan
            )
            reply = types.JSONRPCResponse(jsonrpc="2.0", id=request.id, result=result)
        except Exception as exc:
            reply = types.JSONRPCError(jsonrpc="2.0", id=request.id, error=sdk.modern_error_data(exc))
            status = sdk.ERROR_CODE_HTTP_STATUS.get(reply.error.code, status)
        return status, json.dumps(
            reply.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":")
        )

    async def _relay(self, request: web.Request, body: bytes, scope: dict[str, Any], exchange: _Exchange) -> None:
        """Relay one aiohttp request through the SDK's ASGI interface."""
        finished = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()  # the request has no more body; wait for the end of the exchange
            return {"type": "http.disconnect"}

        parts: list[bytes] = []
        response: web.Response | None = None

        async def send(message: MutableMapping[str, Any]) -> None:
            # The answer is one JSON body (json_response=True): buffered and written with its headers in
            # one send() with a Content-Length, instead of headers, a chunk and a last chunk (three
            # syscalls and client wake-ups per call; measured with cProfile as the biggest per-call cost).
            nonlocal response
            if message["type"] == "http.response.start":
                exchange.response = response = web.Response(status=message["status"])
                for name, value in message.get("headers", []):
                    key = name.decode("latin-1")
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        response.headers.add(key, value.decode("latin-1"))
            elif message["type"] == "http.response.body" and response is not None:
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    response.body = b"".join(parts)
                    await _write(request, response, exchange)

        try:
            await self.manager.handle_request(scope, receive, send)
        finally:
            finished.set()


async def _write(request: web.Request, response: web.StreamResponse, exchange: _Exchange) -> None:
    exchange.response = response
    with contextlib.suppress(ConnectionError):  # the client hung up: its leases go back
        await response.prepare(request)
        await response.write_eof()
        exchange.delivery.written = True


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
