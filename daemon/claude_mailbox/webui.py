"""The human view (issue 14): the live page at `/` and its static files from `web/`. The feed behind
it, `GET /v1/feed` (rest.py), is what `claude-mailbox tail` follows too.

The page is plain files: no build step, nothing fetched from elsewhere. It holds no data of its own,
so it is served without the token (the API calls it makes carry the token as a header); its headers
forbid framing, foreign scripts and referrers.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from claude_mailbox.errors import NotFound

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


def _static(name: str) -> bytes:
    return (resources.files("claude_mailbox") / "web" / name).read_bytes()


async def page(request: web.Request) -> web.Response:
    return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_TYPES:
        raise NotFound(f"no static file {request.path}")
    return web.Response(body=_static(name), headers={**PAGE_HEADERS, "Content-Type": STATIC_TYPES[name]})
