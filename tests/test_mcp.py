"""MCP at /mcp through the SDK's own client, in both protocol eras: mode="auto" (2026-07-28,
stateless) and mode="legacy" (the initialize handshake Claude Code speaks)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import mcp
import pytest
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from harness import Daemon, InProcessDaemon
from rawhttp import peek, request, send


@pytest.fixture(scope="module")
def server(app_module_server: InProcessDaemon) -> InProcessDaemon:
    """The MCP contract needs no daemon process: the in-process app for the whole module (issue 9.7)."""
    return app_module_server


T = TypeVar("T")
MODES = ["auto", "legacy"]
TOOL_NAMES = {"send", "check_inbox", "peek_inbox", "list_mailboxes"}


_counter = itertools.count()


def unique(label: str) -> str:
    return f"{label}-{next(_counter)}"


@contextlib.asynccontextmanager
async def connect(server: Daemon, mode: str, headers: dict[str, str] | None = None) -> AsyncIterator[mcp.Client]:
    async with (
        create_mcp_http_client(headers={**server.headers, **(headers or {})}) as http,  # the daemon's token
        mcp.Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def with_client(
    server: Daemon, mode: str, body: Callable[[mcp.Client], Awaitable[T]], headers: dict[str, str] | None = None
) -> T:
    async def main() -> T:
        async with connect(server, mode, headers) as client:
            return await body(client)

    return run(main())


def ok(result: Any) -> dict[str, Any]:
    """A successful tool result: structured content, mirrored as JSON text."""
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert json.loads(result.content[0].text) == result.structured_content
    return dict(result.structured_content)


def tool_error(result: Any) -> str:
    assert result.is_error, result
    assert result.content and result.content[0].type == "text"
    return str(result.content[0].text)


# --- handshake and tool list -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_both_protocol_eras_connect(server: Daemon, mode: str) -> None:
    version = with_client(server, mode, lambda client: asyncio.sleep(0, client.session.protocol_version))
    if mode == "legacy":
        assert version < "2026", version  # a handshake-era version, e.g. 2025-11-25
    else:
        assert version >= "2026-07-28", version


@pytest.mark.parametrize("mode", MODES)
def test_tools_are_listed_with_annotations(server: Daemon, mode: str) -> None:
    tools = {tool.name: tool for tool in with_client(server, mode, lambda c: c.list_tools()).tools}
    assert set(tools) == TOOL_NAMES
    for tool in tools.values():
        description = tool.description or ""
        assert "claude-mailbox" in description, description
        assert "SendMessage" not in description
        assert len(description) < 300, description  # short
        assert tool.annotations is not None
        assert tool.input_schema["type"] == "object"
    assert tools["peek_inbox"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["list_mailboxes"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["check_inbox"].annotations.read_only_hint is False  # type: ignore[union-attr]
    assert tools["check_inbox"].annotations.idempotent_hint is False  # type: ignore[union-attr]
    assert tools["send"].annotations.read_only_hint is False  # type: ignore[union-attr]
    assert tools["send"].annotations.idempotent_hint is False  # type: ignore[union-attr]
    assert set(tools["send"].input_schema["required"]) == {"to", "body"}
    assert set(tools["send"].input_schema["properties"]) == {"to", "body", "from", "idempotencyKey", "urgent"}
    for name in ("check_inbox", "peek_inbox", "list_mailboxes"):
        assert set(tools[name].input_schema["properties"]) == {"name"}
        assert not tools[name].input_schema.get("required")


# --- the four tools end to end ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_send_peek_check_list_end_to_end(server: Daemon, mode: str) -> None:
    alice, bob = unique("alice"), unique("bob")

    async def body(client: mcp.Client) -> None:
        sent = ok(await client.call_tool("send", {"to": bob, "body": "hello over MCP", "from": alice}))
        assert set(sent) == {"id", "from", "to", "createdAt"}
        assert (sent["from"], sent["to"]) == (alice, bob)
        ok(await client.call_tool("send", {"to": bob, "body": "second", "from": alice}))

        peeked = ok(await client.call_tool("peek_inbox", {"name": bob}))
        assert peeked == {"name": bob, "pending": 2, "oldestAt": sent["createdAt"]}
        assert ok(await client.call_tool("peek_inbox", {"name": bob}))["pending"] == 2  # peek consumes nothing

        listed = ok(await client.call_tool("list_mailboxes", {"name": alice}))
        assert listed["you"] == alice
        assert listed["pendingForYou"] == 0
        boxes = {box["name"]: box for box in listed["mailboxes"]}
        assert boxes[bob]["pending"] == 2 and alice in boxes

        checked = ok(await client.call_tool("check_inbox", {"name": bob}))
        assert checked["name"] == bob
        assert checked["remaining"] == 0
        assert [m["body"] for m in checked["messages"]] == ["hello over MCP", "second"]
        assert checked["messages"][0] == {
            "id": sent["id"],
            "from": alice,
            "body": "hello over MCP",
            "createdAt": sent["createdAt"],
        }
        assert ok(await client.call_tool("check_inbox", {"name": bob}))["messages"] == []

        listed = ok(await client.call_tool("list_mailboxes", {"name": bob}))
        assert listed["pendingForYou"] == 0

    with_client(server, mode, body, headers={"X-Mailbox": bob})  # only bob may read bob's inbox
    assert peek(server.url, bob) == {"pending": 0, "oldestAt": None}


@pytest.mark.parametrize("mode", MODES)
def test_mcp_and_rest_share_one_store(server: Daemon, mode: str) -> None:
    alice, bob = unique("alice"), unique("bob")
    assert send(server.url, alice, bob, "via REST").status == 201
    checked = with_client(server, mode, lambda c: c.call_tool("check_inbox", {"name": bob}), {"X-Mailbox": bob})
    assert [(m["from"], m["body"]) for m in ok(checked)["messages"]] == [(alice, "via REST")]
    with_client(server, mode, lambda c: c.call_tool("send", {"to": alice, "body": "via MCP", "from": bob}))
    assert peek(server.url, alice)["pending"] == 1


# --- identity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_x_mailbox_header_is_the_default_identity(server: Daemon, mode: str) -> None:
    me, peer = unique("me"), unique("peer")

    async def body(client: mcp.Client) -> None:
        sent = ok(await client.call_tool("send", {"to": peer, "body": "from my header"}))
        assert sent["from"] == me
        ok(await client.call_tool("send", {"to": me, "body": "note to self"}))
        assert ok(await client.call_tool("peek_inbox", {}))["name"] == me
        listed = ok(await client.call_tool("list_mailboxes", {}))
        assert (listed["you"], listed["pendingForYou"]) == (me, 1)
        checked = ok(await client.call_tool("check_inbox", {}))
        assert (checked["name"], [m["body"] for m in checked["messages"]]) == (me, ["note to self"])

    with_client(server, mode, body, headers={"X-Mailbox": me})
    assert peek(server.url, peer)["pending"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_explicit_argument_beats_the_header(server: Daemon, mode: str) -> None:
    header, explicit, peer = unique("header"), unique("explicit"), unique("peer")

    async def body(client: mcp.Client) -> None:
        assert ok(await client.call_tool("send", {"to": peer, "body": "x", "from": explicit}))["from"] == explicit
        assert ok(await client.call_tool("peek_inbox", {"name": peer}))["name"] == peer
        assert ok(await client.call_tool("list_mailboxes", {"name": explicit}))["you"] == explicit
        assert ok(await client.call_tool("check_inbox", {"name": header}))["name"] == header

    with_client(server, mode, body, headers={"X-Mailbox": header})


@pytest.mark.parametrize("mode", MODES)
def test_check_inbox_of_another_mailbox_is_refused_as_on_rest(server: Daemon, mode: str) -> None:
    """Issue 12.1: reading (consuming) is for the inbox's owner only, on MCP as on REST."""
    me, victim = unique("me"), unique("victim")
    assert send(server.url, me, victim, "private").status == 201
    rest = request(server.url, "POST", f"/v1/check-inbox?name={victim}", headers={"X-Mailbox": me})
    assert rest.status == 403

    async def body(client: mcp.Client) -> str:
        return tool_error(await client.call_tool("check_inbox", {"name": victim}))

    assert victim in with_client(server, mode, body, headers={"X-Mailbox": me})
    anonymous = with_client(server, mode, body)
    assert anonymous == _rest_error(request(server.url, "POST", f"/v1/check-inbox?name={victim}"))
    assert peek(server.url, victim)["pending"] == 1  # nothing was consumed


@pytest.mark.parametrize("mode", MODES)
def test_missing_identity_is_a_tool_error_that_says_what_to_pass(server: Daemon, mode: str) -> None:
    peer = unique("peer")

    async def body(client: mcp.Client) -> None:
        message = tool_error(await client.call_tool("send", {"to": peer, "body": "anonymous"}))
        assert "`from`" in message and "X-Mailbox" in message, message
        for tool in ("check_inbox", "peek_inbox"):
            message = tool_error(await client.call_tool(tool, {}))
            assert "`name`" in message and "X-Mailbox" in message, message
        # Listing works anonymously: presence needs a name, reading the list does not.
        listed = ok(await client.call_tool("list_mailboxes", {}))
        assert (listed["you"], listed["pendingForYou"]) == (None, 0)

    with_client(server, mode, body)
    assert peek(server.url, peer)["pending"] == 0


def _rest_error(reply: Any) -> str:
    return str(reply.error()["message"])


@pytest.mark.parametrize("mode", MODES)
def test_tool_errors_use_the_same_words_as_rest(server: Daemon, mode: str) -> None:
    alice, bob = unique("alice"), unique("bob")
    rest_bad_to = _rest_error(send(server.url, alice, "bad name", "x"))
    rest_too_big = _rest_error(send(server.url, alice, bob, "x" * 65537))
    rest_empty = _rest_error(send(server.url, alice, bob, "  "))
    rest_bad_name = _rest_error(request(server.url, "GET", "/v1/peek?name=" + "n" * 65))

    async def body(client: mcp.Client) -> None:
        assert tool_error(await client.call_tool("send", {"to": "bad name", "body": "x", "from": alice})) == rest_bad_to
        too_big = tool_error(await client.call_tool("send", {"to": bob, "body": "x" * 65537, "from": alice}))
        assert too_big == rest_too_big
        assert "65537" in too_big and "65536" in too_big
        assert tool_error(await client.call_tool("send", {"to": bob, "body": "  ", "from": alice})) == rest_empty
        assert tool_error(await client.call_tool("peek_inbox", {"name": "n" * 65})) == rest_bad_name
        assert tool_error(await client.call_tool("check_inbox", {"name": "n" * 65})) == rest_bad_name
        unknown = tool_error(await client.call_tool("delete_everything", {}))
        assert "delete_everything" in unknown and "send" in unknown

    with_client(server, mode, body)
    assert peek(server.url, bob)["pending"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_unknown_arguments_are_refused_in_rest_words(server: Daemon, mode: str) -> None:
    """The tools' `additionalProperties: false` is enforced, with the words REST uses for the same input."""
    alice, bob = unique("alice"), unique("bob")
    extra = {"to": bob, "body": "x", "from": alice, "cc": "carol"}
    rest = _rest_error(request(server.url, "POST", "/v1/send", json_body=extra))

    async def body(client: mcp.Client) -> None:
        assert tool_error(await client.call_tool("send", extra)) == rest == "unknown field(s): cc"
        refused = tool_error(await client.call_tool("peek_inbox", {"name": bob, "all": True}))
        assert refused == "unknown field(s): all"

    with_client(server, mode, body)
    assert peek(server.url, bob)["pending"] == 0  # nothing was sent


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_x_mailbox_header_is_an_error_not_ignored(server: Daemon, mode: str) -> None:
    rest = _rest_error(request(server.url, "GET", "/v1/list", headers={"X-Mailbox": "bad name"}))

    async def body(client: mcp.Client) -> None:
        for tool, args in (("list_mailboxes", {}), ("peek_inbox", {}), ("check_inbox", {})):
            assert tool_error(await client.call_tool(tool, args)) == rest
        assert tool_error(await client.call_tool("send", {"to": "x", "body": "y"})) == rest

    with_client(server, mode, body, headers={"X-Mailbox": "bad name"})


@pytest.mark.parametrize("mode", MODES)
def test_claude_pid_header_maps_to_the_session_mailbox(server: Daemon, mode: str) -> None:
    """What the plugin's headersHelper does: only X-Mailbox-Claude-Pid, resolved through the session
    that the SessionStart hook registered for that Claude Code process."""
    session_id = str(uuid.uuid4())
    pid = str(os.getpid())
    hook = request(
        server.url,
        "POST",
        "/v1/hooks/session-start",
        json_body={"session_id": session_id, "hook_event_name": "SessionStart", "source": "startup", "cwd": "/tmp"},
        headers={"X-Mailbox-Claude-Pid": pid},
    )
    assert hook.status == 200, hook.body
    whoami = request(server.url, "GET", f"/v1/whoami?session={session_id}")
    assert whoami.status == 200, whoami.body
    mailbox = whoami.json["name"]
    assert mailbox.endswith(session_id.replace("-", "")[:8])
    assert mailbox in hook.body.decode()  # the session was told its name
    peer = unique("peer")
    assert send(server.url, peer, mailbox, "to the session").status == 201

    async def body(client: mcp.Client) -> None:
        assert ok(await client.call_tool("peek_inbox", {}))["name"] == mailbox
        sent = ok(await client.call_tool("send", {"to": peer, "body": "reply"}))
        assert sent["from"] == mailbox
        checked = ok(await client.call_tool("check_inbox", {}))
        assert (checked["name"], [m["body"] for m in checked["messages"]]) == (mailbox, ["to the session"])
        # X-Mailbox would win over the pid; an explicit argument wins over both.
        assert ok(await client.call_tool("peek_inbox", {"name": peer}))["name"] == peer

    with_client(server, mode, body, headers={"X-Mailbox-Claude-Pid": pid})

    async def header_wins(client: mcp.Client) -> None:
        assert ok(await client.call_tool("peek_inbox", {}))["name"] == peer

    with_client(server, mode, header_wins, headers={"X-Mailbox-Claude-Pid": pid, "X-Mailbox": peer})


@pytest.mark.parametrize("mode", MODES)
def test_unknown_claude_pid_is_missing_identity(server: Daemon, mode: str) -> None:
    async def body(client: mcp.Client) -> None:
        message = tool_error(await client.call_tool("check_inbox", {}))
        assert "`name`" in message

    # pid 1 has no registered session in this data dir
    with_client(server, mode, body, headers={"X-Mailbox-Claude-Pid": "1"})


# --- HTTP rules on /mcp ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_on_mcp_are_405(server: Daemon, method: str) -> None:
    reply = request(server.url, method, "/mcp", headers={"Accept": "text/event-stream"}, timeout=5.0)
    assert reply.status == 405
    assert reply.error()["code"] == "method_not_allowed"
    assert "POST" in reply.headers.get("Allow", "")


def test_raw_tools_call_over_post(server: Daemon) -> None:
    """A handshake-era client that skips the SDK: one JSON-RPC POST, one JSON answer."""
    peer = unique("peer")
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
        "X-Mailbox": unique("raw"),
    }
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "send", "arguments": {"to": peer, "body": "raw"}},
    }
    reply = request(server.url, "POST", "/mcp", json_body=call, headers=headers)
    assert reply.status == 200, reply.body
    data = reply.json
    assert data["id"] == 7
    assert data["result"]["isError"] is False
    assert data["result"]["structuredContent"]["to"] == peer
    assert peek(server.url, peer)["pending"] == 1
