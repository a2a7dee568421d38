"""The route table (routes.py, issue 19.1): each operation declared once, and the front door's token
check and send budget read it; MCP tool errors carry REST's error body (19.4); the app can be built
around a service the caller made (19.6)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from claude_mailbox import rest, routes, server
from claude_mailbox.config import Config
from claude_mailbox.service import MailboxService
from harness import InProcessDaemon, in_process_daemon
from rawhttp import request

PEER_LIMIT = 6
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
EXAMPLE_PATHS = {"/v1/hooks/{event}": "/v1/hooks/prompt-submit", "/static/{name}": "/static/app.js"}


def mcp(url: str, method: str, params: dict[str, Any] | None = None) -> Any:
    message = {"jsonrpc": "2.0", "id": 1, "method": method, **({"params": params} if params else {})}
    return request(url, "POST", "/mcp", json_body=message, headers=MCP_HEADERS)


def mcp_send(url: str, sender: str, to: str) -> Any:
    return mcp(url, "tools/call", {"name": "send", "arguments": {"from": sender, "to": to, "body": "hi"}})


def test_the_token_is_asked_exactly_where_the_table_says(app_server: InProcessDaemon) -> None:
    public = {(op.path, op.method) for op in routes.OPERATIONS if op.public}
    assert public == {("/health", "get"), ("/", "get"), ("/static/{name}", "get")}
    for op in routes.OPERATIONS:
        path = EXAMPLE_PATHS.get(op.path, op.path)
        reply = request(app_server.url, op.method.upper(), path, auth=False)
        if op.public:
            assert reply.status == 200, (op.path, reply.status)
        else:
            assert reply.status == 401 and reply.error()["code"] == "unauthorized", (op.path, reply.status)


def test_every_route_is_registered_from_the_table(mailbox_home: Path) -> None:
    app = server.make_app(Config(db_path=mailbox_home / "routes.db", auth="none"))
    table = app[routes.OPERATION]
    assert {(op.path, op.method) for op in table.values()} == {(op.path, op.method) for op in routes.OPERATIONS}
    # Every route the router holds is one of the table's (a GET's HEAD included): none added aside.
    assert set(app.router.routes()) == set(table)


def test_only_a_tools_call_of_send_spends_the_send_budget(mailbox_home: Path) -> None:
    """Issue 19.1: listing tools and reading over MCP are not sends; an escaped "send" still is."""
    settings = {"rate_limit_per_peer_per_minute": PEER_LIMIT, "rate_limit_global_per_minute": 10_000}
    with in_process_daemon(mailbox_home, **settings) as app:
        app.wait_mcp_ready()
        for _ in range(PEER_LIMIT * 3):
            assert mcp(app.url, "tools/list").status == 200
            peek = mcp(app.url, "tools/call", {"name": "peek_inbox", "arguments": {"name": "r-bob"}})
            assert peek.status == 200 and peek.json["result"]["isError"] is False, peek.body
        escaped = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "\\u0073end", "arguments": {"from": "r-alice", "to": "r-bob", "body": "x"}},
        }
        raw = json.dumps(escaped).replace("\\\\u0073", "\\u0073").encode()
        sent = request(app.url, "POST", "/mcp", body=raw, headers={**MCP_HEADERS, "Content-Type": "application/json"})
        assert sent.status == 200 and sent.json["result"]["isError"] is False, sent.body
        for _ in range(PEER_LIMIT - 1):
            assert mcp_send(app.url, "r-alice", "r-bob").status == 200
        refused = request(app.url, "POST", "/v1/send", json_body={"from": "r-alice", "to": "r-bob", "body": "x"})
        assert refused.status == 429 and refused.error()["code"] == "rate_limited", refused.body


def test_tools_call_of_send_reads_batches_and_refuses_garbage() -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "send"}}
    assert routes.tools_call_of_send(json.dumps(call).encode())
    assert routes.tools_call_of_send(json.dumps([{"method": "ping"}, call]).encode())
    assert not routes.tools_call_of_send(json.dumps({**call, "params": {"name": "check_inbox"}}).encode())
    assert not routes.tools_call_of_send(b"{not json")
    assert not routes.tools_call_of_send(json.dumps({"method": "tools/call", "params": "send"}).encode())


def test_mcp_tool_errors_carry_the_rest_error_body(app_server: InProcessDaemon) -> None:
    app_server.wait_mcp_ready()
    reply = mcp(
        app_server.url, "tools/call", {"name": "send", "arguments": {"from": "a", "to": "bad name", "body": "x"}}
    )
    result = reply.json["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert result["structuredContent"] == {"error": {"code": "invalid_input", "message": text}}
    rest_reply = request(app_server.url, "POST", "/v1/send", json_body={"from": "a", "to": "bad name", "body": "x"})
    assert rest_reply.error() == result["structuredContent"]["error"]
    unknown = mcp(app_server.url, "tools/call", {"name": "nope", "arguments": {}}).json["result"]
    assert unknown["isError"] is True and unknown["structuredContent"]["error"]["code"] == "invalid_input"


def test_the_app_serves_a_service_the_caller_made(mailbox_home: Path) -> None:
    config = Config(db_path=mailbox_home / "own.db", auth="none")
    service = MailboxService(config)

    async def scenario() -> tuple[int, int]:
        app = server.make_app(config, service, data_dir=mailbox_home)
        assert app[rest.SERVICE] is service
        test_server = TestServer(app, host="127.0.0.1")
        await test_server.start_server()
        try:
            url = f"http://127.0.0.1:{test_server.port}"
            reply = await asyncio.to_thread(
                request, url, "POST", "/v1/send", json_body={"from": "own-a", "to": "own-b", "body": "hello"}
            )
            pending, _ = await service.peek("own-b")  # the test's own service sees what REST stored
            return reply.status, pending
        finally:
            await test_server.close()

    assert asyncio.run(scenario()) == (201, 1)
