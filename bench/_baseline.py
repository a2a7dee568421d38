"""The floor the daemon is measured against, run in the same benchmark so that the machine's speed
that day cancels out: the least an aiohttp server can do on the same two routes.

- POST /v1/send: parse the JSON body, one INSERT through APSW on the event loop (WAL,
  synchronous=NORMAL, like the daemon), answer 201 with a small JSON object. No token, no checks,
  no leases, no counts: what any aiohttp + SQLite daemon pays before it does anything of its own.
- POST /mcp: a canned JSON-RPC responder (initialize, tools/list, tools/call answered from fixed
  dicts, notifications 202), no MCP SDK on the server side: the SDK *client's* own cost per call.
- GET /health: 200, so the benchmark can wait for it like for the daemon.

    python bench/_baseline.py --port P --db PATH
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import apsw
from aiohttp import web

TOOL = {
    "name": "send",
    "description": "Leave a message.",
    "inputSchema": {
        "type": "object",
        "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
        "required": ["to", "body"],
    },
}


def make_app(db_path: str) -> web.Application:
    db = apsw.Connection(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, sender, recipient, body, created_at)")

    async def send(request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        db.execute(
            "INSERT INTO messages (sender, recipient, body, created_at) VALUES (?, ?, ?, datetime('now'))",
            (request.headers.get("X-Mailbox"), payload["to"], payload["body"]),
        )
        return web.json_response({"id": db.last_insert_rowid(), "to": payload["to"]}, status=201)

    async def mcp(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message:  # a notification
            return web.Response(status=202)
        result: dict[str, Any]
        if message["method"] == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "baseline", "version": "0"},
            }
        elif message["method"] == "tools/list":
            result = {"tools": [TOOL]}
        elif message["method"] == "tools/call":
            answer = {"id": 1, "to": message["params"]["arguments"]["to"]}
            result = {"content": [{"type": "text", "text": json.dumps(answer)}], "structuredContent": answer}
        else:
            result = {}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/send", send)
    app.router.add_post("/mcp", mcp)
    app.router.add_get("/health", health)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    ns = parser.parse_args()
    web.run_app(make_app(ns.db), host="127.0.0.1", port=ns.port, print=None, access_log=None)
