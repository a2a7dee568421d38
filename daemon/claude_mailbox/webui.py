"""The human view (issue 14): the live page at `/` (static files from `web/`) and the feed behind it,
`GET /v1/feed`, which `claude-mailbox tail` follows too. Watching never consumes: the feed reads
messages with their read state and takes no lease.

The page is plain files: no build step, nothing fetched from elsewhere. It holds no data of its own,
so it is served without the token (the API calls it makes carry the token as a header); its headers
forbid framing, foreign scripts and referrers.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from aiohttp import web

from claude_mailbox.errors import InvalidInput, NotFound
from claude_mailbox.model import FeedFilter, Message
from claude_mailbox.service import MailboxService

FEED_LIMIT = 500  # messages per answer
MAX_FEED_WAIT = 60.0  # seconds a feed long-poll may hold
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")
_FEED_PARAMETERS = frozenset({"after", "limit", "name", "peer", "since", "wait"})
STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def feed_json(message: Message) -> dict[str, Any]:
    """A message as people see it: both ends, and whether its recipient has read it."""
    return {
        "id": message.id,
        "from": message.sender,
        "to": message.recipient,
        "body": message.body,
        "createdAt": message.created_at,
        "deliveredAt": message.delivered_at,
        "read": message.delivered_at is not None,
    }


def _static(name: str) -> bytes:
    return (resources.files("claude_mailbox") / "web" / name).read_bytes()


def _integer(text: str | None, key: str, default: int, high: int) -> int:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or int(text) > high:
        raise InvalidInput(f"{key} must be a whole number from 0 to {high}")
    return int(text)


def add_routes(app: web.Application, service: MailboxService) -> None:
    """The page, its two static files and the feed, on the daemon's app (one call from make_app)."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_TYPES:
            raise NotFound(f"no static file {request.path}")
        return web.Response(body=_static(name), headers={**PAGE_HEADERS, "Content-Type": STATIC_TYPES[name]})

    async def feed(request: web.Request) -> web.Response:
        """GET /v1/feed?after=ID&limit=N&name=A&peer=B&since=ISO&wait=S: see MailboxService.feed."""
        query = request.query
        unknown = set(query) - _FEED_PARAMETERS
        if unknown:
            raise InvalidInput(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        for key in query:
            if len(query.getall(key)) > 1:
                raise InvalidInput(f"query parameter {key!r} given more than once")
        since = query.get("since")
        if since is not None and not _ISO.fullmatch(since):
            raise InvalidInput("since must be a UTC time like 2026-01-31T12:00:00.000Z")
        after = query.get("after")
        messages, last = await service.feed(
            None if after is None else _integer(after, "after", 0, 2**62),
            _integer(query.get("limit"), "limit", 100, FEED_LIMIT),
            FeedFilter(query.get("name"), query.get("peer"), since),
            wait=float(_integer(query.get("wait"), "wait", 0, int(MAX_FEED_WAIT))),
            still_connected=lambda: request.transport is not None and not request.transport.is_closing(),
        )
        return web.json_response({"messages": [feed_json(m) for m in messages], "last": last})

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/v1/feed", feed)
