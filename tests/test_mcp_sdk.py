"""The SDK names that mcp_http's fast path is built on (claude_mailbox/mcp_sdk.py) still exist with
the shapes it uses. The SDK marks them provisional: an upgrade that moves or reshapes one fails here,
by name, before the byte-for-byte comparison in test_mcp_fastpath.py fails in some harder-to-read way."""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import mcp.types as types
import pytest
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.dispatcher import DispatchContext, Outbound
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from claude_mailbox import mcp_sdk as sdk

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "daemon" / "claude_mailbox"
# The SDK's documented hosting API and wire models: any module may import these.
DOCUMENTED = {"mcp", "mcp.types", "mcp.server", "mcp.server.streamable_http_manager"}


def parameters(function: Any) -> list[tuple[str, str]]:
    """(name, kind) of each parameter, as the calls in mcp_http pass them."""
    return [(p.name, p.kind.name) for p in inspect.signature(function).parameters.values()]


def test_mcp_is_pinned_to_the_tested_minor() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "mcp>=2.3,<2.4" in project["project"]["dependencies"]
    assert re.fullmatch(r"2\.3\.\d+", importlib.metadata.version("mcp"))


def test_only_the_adapter_imports_the_provisional_names() -> None:
    outside: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "mcp_sdk.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            outside += [
                f"{path.name}: {name}" for name in names if name.split(".")[0] == "mcp" and name not in DOCUMENTED
            ]
    assert outside == []


def test_serve_one() -> None:
    assert inspect.iscoroutinefunction(sdk.serve_one)
    assert parameters(sdk.serve_one) == [
        ("server", "POSITIONAL_OR_KEYWORD"),
        ("dctx", "POSITIONAL_OR_KEYWORD"),
        ("method", "POSITIONAL_OR_KEYWORD"),
        ("params", "POSITIONAL_OR_KEYWORD"),
        ("connection", "KEYWORD_ONLY"),
        ("lifespan_state", "KEYWORD_ONLY"),
    ]


def test_connection_from_an_envelope() -> None:
    assert parameters(sdk.Connection.from_envelope)[:3] == [
        ("protocol_version", "POSITIONAL_OR_KEYWORD"),
        ("client_info", "POSITIONAL_OR_KEYWORD"),
        ("client_capabilities", "POSITIONAL_OR_KEYWORD"),
    ]
    assert isinstance(sdk.Connection.from_envelope("2025-06-18", None, None), sdk.Connection)


def test_era_routing_facts() -> None:
    # mcp_http compares this with the ASGI scope's lower-cased header names.
    assert sdk.MCP_PROTOCOL_VERSION_HEADER == "mcp-protocol-version"
    assert sdk.MCP_PARAM_HEADER_PREFIX.lower() == "mcp-param-"
    assert {"2025-06-18", "2025-11-25", sdk.DEFAULT_NEGOTIATED_VERSION} <= set(sdk.HANDSHAKE_PROTOCOL_VERSIONS)
    assert "2026-07-28" not in sdk.HANDSHAKE_PROTOCOL_VERSIONS
    assert all(isinstance(code, int) and 400 <= status < 600 for code, status in sdk.ERROR_CODE_HTTP_STATUS.items())
    message = sdk.jsonrpc_message_adapter.validate_python({"jsonrpc": "2.0", "id": 1, "method": "ping"}, by_name=False)
    assert isinstance(message, types.JSONRPCRequest)


def test_the_inbound_classifier() -> None:
    assert parameters(sdk.classify_inbound_request)[:2] == [
        ("body", "POSITIONAL_OR_KEYWORD"),
        ("headers", "KEYWORD_ONLY"),
    ]
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": envelope}}
    headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "ping"}
    route = sdk.classify_inbound_request(body, headers=headers)
    assert not isinstance(route, sdk.InboundLadderRejection)
    assert (route.protocol_version, route.client_capabilities) == ("2026-07-28", {})
    assert route.client_info == envelope["io.modelcontextprotocol/clientInfo"]
    rejected = sdk.classify_inbound_request({**body, "params": {}}, headers=headers)
    assert isinstance(rejected, sdk.InboundLadderRejection) and isinstance(rejected.code, int)
    assert sdk.find_duplicated_routing_header([("mcp-method", "ping"), ("Mcp-Method", "ping")]) is not None
    assert sdk.find_duplicated_routing_header([("mcp-method", "ping")]) is None
    assert sdk.x_mcp_header_map({"type": "object", "properties": {"a": {"type": "string"}}}) == {}


def test_accept_header_check() -> None:
    http = Request({"type": "http", "headers": [(b"accept", b"application/json, text/event-stream")]})
    assert sdk.check_accept_headers(http) == (True, True)


def test_error_mappings() -> None:
    error = types.ErrorData(code=-32042, message="no")
    assert sdk.handler_exception_to_error_data(MCPError(code=-32042, message="no")) == error
    assert sdk.handler_exception_to_error_data(RuntimeError("boom")) is None
    assert sdk.modern_error_data(MCPError(code=-32042, message="no")) == error
    assert sdk.modern_error_data(RuntimeError("boom")).code == types.INTERNAL_ERROR


def test_the_dispatch_context_shapes() -> None:
    transport = sdk.TransportContext(kind="streamable-http", can_send_request=False, headers={"a": "b"})
    metadata = sdk.ServerMessageMetadata(request_context=None, can_send_request=False)
    answer = sdk.SingleAnswer(transport, 1, metadata)
    # Every member of the SDK's DispatchContext protocol, with the same parameters on the methods.
    members = {name for cls in (DispatchContext, Outbound) for name in vars(cls) if not name.startswith("_")}
    assert members == {
        "transport",
        "can_send_request",
        "request_id",
        "message_metadata",
        "cancel_requested",
        "progress",
        "send_raw_request",
        "notify",
    }
    for name in members:
        ours = getattr(sdk.SingleAnswer, name, None)
        if inspect.isfunction(ours):
            assert parameters(ours) == parameters(getattr(DispatchContext, name)), name
        else:
            assert name in {field.name for field in dataclasses.fields(sdk.SingleAnswer)}, name
    assert answer.can_send_request is False and answer.transport.headers == {"a": "b"}


@pytest.mark.anyio
async def test_the_managers_lifespan_state_and_body_limit() -> None:
    manager = StreamableHTTPSessionManager(app=Server("t"), stateless=True, json_response=True)
    assert isinstance(manager.max_request_body_size, int)
    assert sdk.lifespan_state(manager) is None
    async with manager.run():
        assert sdk.lifespan_state(manager) is not None
    assert sdk.lifespan_state(manager) is None
