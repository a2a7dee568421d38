"""The MCP SDK names behind mcp_http's fast path, in one place. The SDK marks them provisional (its
single-request driver, inbound classifier, connection and dispatch-context shapes, a private
attribute of the session manager), so they may change in any 2.x minor: pyproject pins `mcp` to the
tested minor, and tests/test_mcp_sdk.py checks every name and signature used here against the
installed SDK. The documented hosting API (Server, StreamableHTTPSessionManager, mcp.types' wire
models) is imported where it is used. Kept because it halves the daemon's CPU per handshake-era
`tools/call` (bench/mcp_fastpath.py, issue 19.12)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import anyio
import mcp.types as types
from mcp.server.connection import Connection
from mcp.server.runner import modern_error_data, serve_one
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    x_mcp_header_map,
)
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp.shared.message import MessageMetadata, ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp.types import DEFAULT_NEGOTIATED_VERSION, jsonrpc_message_adapter
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

__all__ = [
    "DEFAULT_NEGOTIATED_VERSION",
    "ERROR_CODE_HTTP_STATUS",
    "HANDSHAKE_PROTOCOL_VERSIONS",
    "MCP_PARAM_HEADER_PREFIX",
    "MCP_PROTOCOL_VERSION_HEADER",
    "Connection",
    "InboundLadderRejection",
    "ServerMessageMetadata",
    "SingleAnswer",
    "TransportContext",
    "check_accept_headers",
    "classify_inbound_request",
    "find_duplicated_routing_header",
    "handler_exception_to_error_data",
    "jsonrpc_message_adapter",
    "lifespan_state",
    "modern_error_data",
    "serve_one",
    "x_mcp_header_map",
]


@dataclasses.dataclass
class SingleAnswer:
    """The `DispatchContext` of a request answered with one JSON body (the manager's `json_response`
    mode). Nothing but the answer reaches the client, so notifications and progress are dropped, as
    the SDK's own transports drop them in that mode, and a request to the client cannot be sent."""

    transport: TransportContext
    request_id: types.RequestId
    message_metadata: MessageMetadata
    cancel_requested: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    can_send_request: bool = dataclasses.field(default=False, init=False)

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None) -> None:
        return None

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        return None


def lifespan_state(manager: StreamableHTTPSessionManager) -> Any:
    """The server's lifespan state, entered once by the manager's run(); the SDK has no public getter."""
    return manager._lifespan_state
