"""The MCP fast path (McpEndpoint._answer_directly, issue 10): one well-formed tools/call, tools/list
or ping POST is answered through the SDK's `serve_one` instead of the session manager's per-request
transport. Proved here on two in-process apps fed the same requests, one with the fast path and one
without: the fast one counts what it answered itself, and both answers are the same bytes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp
import pytest
from hypothesis import strategies as st
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

import claude_mailbox.server as server_module
import pgkit
from claude_mailbox import routes
from claude_mailbox.mcp_http import McpEndpoint
from harness import InProcessDaemon, in_process_daemon, sqlite_rows
from hostilekit import Hostile, fuzz, mcp_requests, nasty_text, send_hostile
from rawhttp import Reply, request, send

MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "fastpath-test", "version": "1"},
}
HANDSHAKE_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@dataclass
class App:
    daemon: InProcessDaemon
    endpoint: McpEndpoint

    @property
    def url(self) -> str:
        return self.daemon.url


@contextlib.contextmanager
def app_with_endpoint(home: Path, **settings: Any) -> Iterator[App]:
    """An in-process app (conftest) and its McpEndpoint, taken from the app that make_app built."""
    built: list[Any] = []
    make_app = server_module.make_app

    def capture(*args: Any, **kwargs: Any) -> Any:
        built.append(make_app(*args, **kwargs))
        return built[-1]

    async def endpoint_of(app: Any) -> McpEndpoint:
        endpoint: McpEndpoint = await asyncio.shield(app[routes.MCP])  # once the SDK is imported
        return endpoint

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_module, "make_app", capture)
        with in_process_daemon(home, **settings) as daemon:
            endpoint = asyncio.run_coroutine_threadsafe(endpoint_of(built[0]), daemon.loop).result(30)
            yield App(daemon, endpoint)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, App]]:
    """Two apps in the same state: `fast` with the fast path, `sdk` with every request through the SDK."""
    with (
        app_with_endpoint(tmp_path_factory.mktemp("fast"), rate_limit_per_minute=1_000_000) as fast,
        app_with_endpoint(tmp_path_factory.mktemp("sdk"), rate_limit_per_minute=1_000_000) as sdk,
    ):
        sdk.endpoint.fast_path = False
        yield fast, sdk


def post(app: App, message: Any, era: str, headers: dict[str, str] | None = None) -> Reply:
    """One JSON-RPC POST to /mcp as a client of `era` ("handshake" or "modern") writes it."""
    if era == "modern":
        all_headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN}
        if isinstance(message, dict) and "method" in message:
            all_headers["Mcp-Method"] = message["method"]
            params = message.setdefault("params", {})
            if isinstance(params, dict):
                params.setdefault("_meta", ENVELOPE)
                if message["method"] == "tools/call" and isinstance(params.get("name"), str):
                    all_headers["Mcp-Name"] = params["name"]
    else:
        all_headers = dict(HANDSHAKE_HEADERS)
    all_headers.update(headers or {})
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return request(app.url, "POST", "/mcp", body=body, headers={"Content-Type": "application/json", **all_headers})


def assert_same(fast: Reply, sdk: Reply) -> None:
    """The same answer: status, headers (but the date) and body bytes (but the time stamps in it)."""
    assert (fast.status, fast.content_type) == (sdk.status, sdk.content_type)
    names = {name.lower() for name in fast.headers} - {"date"}
    assert names == {name.lower() for name in sdk.headers} - {"date"}
    for name in names - {"content-length"}:
        assert fast.headers[name] == sdk.headers[name], name
    assert TIMESTAMP.sub(b"T", fast.body) == TIMESTAMP.sub(b"T", sdk.body)


def both(pair: tuple[App, App], send_one: Callable[[App], Any]) -> tuple[Any, Any, int]:
    """`send_one(app)` on both apps: both answers and how many the fast app answered itself."""
    fast, sdk = pair
    before = fast.endpoint.fast_answers
    fast_reply = send_one(fast)
    taken = fast.endpoint.fast_answers - before
    sdk_reply = send_one(sdk)
    assert sdk.endpoint.fast_answers == 0
    return fast_reply, sdk_reply, taken


def call(name: str, arguments: Any, id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


# What each era answers, the fast path's way and the SDK's: (request, extra headers, the eras in
# which the fast path answers it).
BOTH, HANDSHAKE, NEITHER = frozenset({"handshake", "modern"}), frozenset({"handshake"}), frozenset[str]()
CASES: dict[str, tuple[Any, dict[str, str], frozenset[str]]] = {
    "tools/list": ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {}, BOTH),
    "ping": ({"jsonrpc": "2.0", "id": "p", "method": "ping"}, {}, BOTH),
    "peek": (call("peek_inbox", {"name": "fp-bob"}), {}, BOTH),
    "check empty inbox": (call("check_inbox", {}), {"X-Mailbox": "fp-nobody"}, BOTH),
    "list": (call("list_mailboxes", {"name": "fp-bob"}), {}, BOTH),
    "unknown tool": (call("no_such_tool", {}), {}, BOTH),
    "unknown argument": (call("peek_inbox", {"name": "fp-bob", "all": True}), {}, BOTH),
    "bad name": (call("peek_inbox", {"name": "bad name"}), {}, BOTH),
    "bad x-mailbox": (call("list_mailboxes", {}), {"X-Mailbox": "bad name"}, BOTH),
    "missing identity": (call("send", {"to": "fp-bob", "body": "x"}), {}, BOTH),
    # No Mcp-Name header can match a name of 5: on the 2026 path the SDK answers the ladder's refusal.
    "params not valid": ({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": 5}}, {}, HANDSHAKE),
    "arguments not an object": (call("send", [1, 2]), {}, BOTH),
    "tools/list with a bad cursor": (
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"cursor": 5}},
        {},
        BOTH,
    ),
    "string id": (call("peek_inbox", {"name": "fp-bob"}, id="é\u2028"), {}, BOTH),
    "unknown method": ({"jsonrpc": "2.0", "id": 4, "method": "resources/list"}, {}, NEITHER),
    "initialize": ({"jsonrpc": "2.0", "id": 5, "method": "initialize", "params": {}}, {}, NEITHER),
    "notification": ({"jsonrpc": "2.0", "method": "tools/list"}, {}, NEITHER),
    "batch": ([{"jsonrpc": "2.0", "id": 6, "method": "ping"}], {}, NEITHER),
    "not json": (b'{"jsonrpc": "2.0", "id": 7, ', {}, NEITHER),
    "wrong jsonrpc": ({"jsonrpc": "1.0", "id": 8, "method": "ping"}, {}, NEITHER),
    "accepts no json": (call("peek_inbox", {"name": "fp-bob"}), {"Accept": "text/event-stream"}, NEITHER),
    "accepts anything": (call("peek_inbox", {"name": "fp-bob"}), {"Accept": "*/*"}, BOTH),
    "content type with a charset": (
        call("peek_inbox", {"name": "fp-bob"}),
        {"Content-Type": "application/json; charset=utf-8"},
        BOTH,
    ),
}
MODERN_ONLY: dict[str, tuple[Any, dict[str, str], frozenset[str]]] = {
    "Mcp-Name differs": (call("peek_inbox", {"name": "fp-bob"}), {"Mcp-Name": "send"}, NEITHER),
    "Mcp-Method differs": (call("peek_inbox", {"name": "fp-bob"}), {"Mcp-Method": "tools/list"}, NEITHER),
    "no envelope": (
        {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"_meta": {}, "name": "peek_inbox"}},
        {"Mcp-Name": "peek_inbox"},
        NEITHER,
    ),
    "unsupported version": (
        {
            "jsonrpc": "2.0",
            "id": 10,
            "method": "ping",
            "params": {"_meta": {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}},
        },
        {"MCP-Protocol-Version": "2099-01-01"},
        NEITHER,
    ),
    "Mcp-Param header": (call("peek_inbox", {"name": "fp-bob"}), {"Mcp-Param-Name": "fp-bob"}, NEITHER),
}
ERA_CASES = [("handshake", name) for name in CASES] + [("modern", name) for name in [*CASES, *MODERN_ONLY]]


@pytest.mark.parametrize(("era", "case"), ERA_CASES)
def test_fast_answers_are_the_sdks_byte_for_byte(pair: tuple[App, App], era: str, case: str) -> None:
    message, headers, fast_eras = {**CASES, **MODERN_ONLY}[case]
    for app in pair:  # the same mail on both sides, so that peek and list say something
        assert send(app.url, "fp-alice", "fp-bob", "hello").status == 201
    # A copy per app: post() adds the 2026 envelope to the message it is given.
    fast, sdk, taken = both(pair, lambda app: post(app, copy.deepcopy(message), era, headers))
    assert_same(fast, sdk)
    assert taken == int(era in fast_eras), (fast.status, fast.body[:300])


@pytest.mark.parametrize("era", ["handshake", "modern"])
@pytest.mark.parametrize(
    "raised", [MCPError(code=-32042, message="no such luck", data={"why": "test"}), RuntimeError("boom")]
)
def test_handler_exceptions_map_as_on_the_sdk_path(
    pair: tuple[App, App], monkeypatch: pytest.MonkeyPatch, era: str, raised: Exception
) -> None:
    """An MCPError carries its own error; any other exception is the era's catch-all (JSON-RPC code 0
    on the handshake era's dispatcher, -32603 on the 2026 entry)."""

    async def fails(*args: Any, **kwargs: Any) -> Any:
        raise raised

    for app in pair:
        monkeypatch.setattr(app.endpoint.service, "peek", fails)
    fast, sdk, taken = both(pair, lambda app: post(app, call("peek_inbox", {"name": "fp-bob"}), era))
    assert_same(fast, sdk)
    assert taken == 1
    assert "error" in fast.json, fast.json


@st.composite
def modern_calls(draw: st.DrawFn) -> Hostile:
    """2026-07-28 calls with the envelope and routing headers right, or one of them a little off."""
    tool = draw(st.sampled_from(["send", "check_inbox", "peek_inbox", "list_mailboxes", "no_such_tool"]))
    arguments: Any = draw(
        st.one_of(
            st.fixed_dictionaries(
                {}, optional={"to": st.sampled_from(["fz-a", "fz-b", "bad name"]), "body": nasty_text(max_size=80)}
            ),
            st.fixed_dictionaries({}, optional={"name": st.sampled_from(["fz-a", "fz-b", "", "x" * 65])}),
            st.just([1]),
        )
    )
    meta = dict(ENVELOPE)
    if draw(st.integers(0, 5)) == 0:
        meta.pop(draw(st.sampled_from(sorted(meta))))
    method = draw(st.sampled_from(["tools/call", "tools/call", "tools/list", "ping"]))
    params: dict[str, Any] = {"_meta": meta}
    if method == "tools/call":
        params.update(name=tool, arguments=arguments)
    message = {
        "jsonrpc": "2.0",
        "id": draw(st.one_of(st.integers(-5, 5), st.text(max_size=3))),
        "method": method,
        "params": params,
    }
    headers = {
        "Accept": b"application/json, text/event-stream",
        "Content-Type": b"application/json",
        "MCP-Protocol-Version": MODERN.encode(),
        "Mcp-Method": method.encode(),
        "Mcp-Name": tool.encode(),
        "X-Mailbox": draw(st.sampled_from([b"fz-a", b"fz-b", b"bad name"])),
    }
    if draw(st.integers(0, 4)) == 0:
        headers[draw(st.sampled_from(sorted(headers)))] = draw(
            st.sampled_from([b"", b"tools/list", b"2025-06-18", b"send"])
        )
    return Hostile("POST", "/mcp", list(headers.items()), json.dumps(message).encode())


def test_hostile_json_rpc_gets_the_same_answer_either_way(pair: tuple[App, App]) -> None:
    """tests/hostilekit's hostile MCP requests (and well-formed 2026 ones), each sent to both apps."""
    fast, sdk = pair
    before = fast.endpoint.fast_answers

    def judge(hostile: Hostile, reply: Reply) -> None:
        assert_same(reply, send_hostile(sdk.url, hostile))

    fuzz(fast.url, st.one_of(mcp_requests(), modern_calls()), judge, 200)
    assert fast.endpoint.fast_answers - before > 50  # the fast path was taken, often


# --- the real SDK client, both eras -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_the_sdk_client_is_answered_by_the_fast_path(pair: tuple[App, App], mode: str) -> None:
    async def session(app: App) -> list[Any]:
        headers = {**app.daemon.headers, "X-Mailbox": f"cl-{mode}"}
        async with (
            create_mcp_http_client(headers=headers) as http,
            mcp.Client(streamable_http_client(f"{app.url}/mcp", http_client=http), mode=mode) as client,
        ):
            tools = await client.list_tools()
            sent = await client.call_tool("send", {"to": f"cl-{mode}", "body": "to myself"})
            peeked = await client.call_tool("peek_inbox", {})
            checked = await client.call_tool("check_inbox", {})
            again = await client.call_tool("check_inbox", {})
            refused = await client.call_tool("send", {"to": "x", "body": "y", "cc": "z"})
            return [
                sorted(tool.name for tool in tools.tools),
                *(result.model_dump(mode="json", by_alias=True) for result in (sent, peeked, checked, again, refused)),
            ]

    fast, sdk, taken = both(pair, lambda app: asyncio.run(session(app)))
    assert TIMESTAMP.sub(b"T", json.dumps(fast).encode()) == TIMESTAMP.sub(b"T", json.dumps(sdk).encode())
    assert [m["body"] for m in fast[3]["structuredContent"]["messages"]] == ["to myself"]
    assert fast[4]["structuredContent"]["messages"] == []
    assert taken >= 6  # tools/list and five calls (the client may list the tools again on its own)


# --- leases: mail in an answer is acknowledged only once that answer is written -----------------


@pytest.fixture
def short(tmp_path: Path) -> Iterator[App]:
    with app_with_endpoint(tmp_path, lease_seconds=2, rate_limit_per_minute=100_000) as app:
        yield app


def lease_count(app: App) -> int:
    url = pgkit.daemon_database(app.daemon)
    if url is not None:  # MAILBOX_TEST_STORE=postgres
        return int(pgkit.query(url, "SELECT count(*) FROM leases")[0][0])
    return int(sqlite_rows(app.daemon.db_path, "SELECT count(*) FROM leases")[0][0])


def check_inbox(app: App, era: str, name: str) -> list[str]:
    reply = post(app, call("check_inbox", {}), era, {"X-Mailbox": name})
    assert reply.status == 200, reply.body
    return [m["body"] for m in reply.json["result"]["structuredContent"]["messages"]]


@pytest.mark.parametrize("era", ["handshake", "modern"])
def test_fast_check_inbox_acknowledges_once_written(short: App, era: str) -> None:
    for body in ("one", "two"):
        assert send(short.url, "alice", "bob", body).status == 201
    before = short.endpoint.fast_answers
    assert check_inbox(short, era, "bob") == ["one", "two"]
    assert short.endpoint.fast_answers == before + 1
    assert check_inbox(short, era, "bob") == []  # reads wait for the acknowledgement (service.settle_later)
    assert lease_count(short) == 0


@pytest.mark.parametrize("cancelled", [False, True], ids=["daemon", "test-server"])
@pytest.mark.parametrize("era", ["handshake", "modern"])
def test_fast_check_inbox_whose_reader_hung_up_loses_nothing(
    short: App, monkeypatch: pytest.MonkeyPatch, era: str, cancelled: bool
) -> None:
    """The answer is held back, once made, until its reader has hung up: its mail comes again at once.
    The daemon's runner lets the handler run on, so writing the answer fails; aiohttp's TestServer
    (handler_cancellation=True) cancels the handler instead."""
    for body in ("one", "two"):
        assert send(short.url, "alice", "bob", body).status == 201
    endpoint = short.endpoint
    answer_directly = endpoint._answer_directly
    answered: list[tuple[int, str] | None] = []
    gate = asyncio.Event()  # opened on the app's loop once the reader is gone

    async def held_back(body: bytes, scope: dict[str, Any]) -> tuple[int, str] | None:
        answer = await answer_directly(body, scope)
        answered.append(answer)
        while not gate.is_set():
            try:
                await gate.wait()
            except asyncio.CancelledError:
                if cancelled:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # as the daemon's runner
        return answer

    monkeypatch.setattr(endpoint, "_answer_directly", held_back)
    before = endpoint.fast_answers
    message = call("check_inbox", {})
    headers = {"Accept": "application/json, text/event-stream", "X-Mailbox": "bob"}
    if era == "modern":
        headers.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "check_inbox"})
        message["params"]["_meta"] = ENVELOPE
    else:
        headers["MCP-Protocol-Version"] = "2025-06-18"
    body = json.dumps(message).encode()
    lines = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{short.daemon.port}",
        "Content-Type: application/json",
        *(f"{name}: {value}" for name, value in {**short.daemon.headers, **headers}.items()),
        f"Content-Length: {len(body)}",
    ]
    with socket.create_connection(("127.0.0.1", short.daemon.port)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        deadline = time.monotonic() + 10
        while not answered and time.monotonic() < deadline:
            time.sleep(0.01)
    assert answered and answered[0] is not None and '"one"' in answered[0][1]  # the mail is in the answer
    time.sleep(0.3)  # the app sees the connection close
    short.daemon.loop.call_soon_threadsafe(gate.set)
    monkeypatch.undo()
    assert check_inbox(short, era, "bob") == ["one", "two"]  # given back at once: no lease expiry waited for
    assert check_inbox(short, era, "bob") == []
    assert endpoint.fast_answers == before + (2 if cancelled else 3)  # the two checks, and the unwritten answer
