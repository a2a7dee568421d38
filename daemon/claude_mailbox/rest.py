"""The REST surface: every /v1/* handler and /health (routes.py lists them). Parses the request,
calls the service, answers JSON (or, for hooks, the text hookapi.py renders).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from claude_mailbox import __version__, auth, hookapi, identity, schemas
from claude_mailbox.errors import InvalidInput, NotFound
from claude_mailbox.model import FeedFilter
from claude_mailbox.schemas import mailbox_json
from claude_mailbox.service import Caller, Delivery, MailboxService

SERVICE = web.AppKey("service", MailboxService)
TOKEN = web.AppKey("token", tuple)  # (the token, its file), or () with auth = "none"


def caller_from_headers(headers: Any) -> Caller:
    """Read the caller from request headers (any case-insensitive mapping); MCP uses it too."""
    pid_text = headers.get("x-mailbox-claude-pid") or ""
    return Caller(
        header_name=headers.get("x-mailbox") or None,
        claude_pid=int(pid_text) if pid_text.isascii() and pid_text.isdigit() and len(pid_text) < 10 else None,
    )


# --- request helpers ---------------------------------------------------------------------------


def _query(request: web.Request, shape: Any) -> dict[str, str]:
    """The query string against its shape in schemas.py (unknown, repeated, missing parameters)."""
    return schemas.query(shape, request.query)


async def _json_object(request: web.Request, shape: Any = None) -> dict[str, Any]:
    """The JSON object body; a field its shape in schemas.py does not name is refused."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    if shape is not None:
        schemas.refuse_unknown(shape, data)
    return data


def _caller(request: web.Request) -> Caller:
    return caller_from_headers(request.headers)


def _number(query: dict[str, str], shape: Any, key: str, default: float) -> float:
    low, high = schemas.bounds(shape, key)
    text = query.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{key} must be a number") from None
    if not low <= value <= high:
        raise InvalidInput(f"{key} must be between {low:g} and {high:g}")
    return value


def _connected(request: web.Request) -> Callable[[], bool]:
    return lambda: request.transport is not None and not request.transport.is_closing()


PROOF_TOKEN = web.AppKey("proof_token", str)  # what /health proves it holds: the token, or "" for none


# --- routes ------------------------------------------------------------------------------------


def has_token(request: web.Request) -> bool:
    """Does the request carry this daemon's token (always, with auth = "none")?"""
    token = request.app[TOKEN]
    return not token or auth.matches(request.headers.get("Authorization"), token[0])


async def health(request: web.Request) -> web.Response:
    """Open to any local process, so without the token it says only whether the daemon runs and its
    version (issue 20.8): the database's path or URL, the port and the limits need the token. The one
    place that decides what /health shows."""
    service = request.app[SERVICE]
    lost = service.lost()
    answer: dict[str, Any] = {"status": "database_unavailable" if lost else "ok", "version": __version__}
    if has_token(request):
        answer.update(service.info())
        if lost:
            answer["problem"] = lost
    response = web.json_response(answer)
    nonce, token = request.headers.get(auth.CHALLENGE_HEADER), request.app.get(PROOF_TOKEN)
    if nonce is not None and token:
        if not auth.well_formed_nonce(nonce):
            raise InvalidInput(f"{auth.CHALLENGE_HEADER} must be 32 to 128 lowercase hex digits")
        response.headers[auth.PROOF_HEADER] = auth.proof(token, nonce)  # issue 20.1: clients check it first
    return response


async def send(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    _query(request, schemas.NoQuery)
    payload = await _json_object(request, schemas.SendRequest)
    if "X-Mailbox" in request.headers:  # a malformed identity is an error even when `from` overrides it
        identity.validate_name(request.headers["X-Mailbox"], "X-Mailbox header")
    schemas.require_fields(schemas.SendRequest, payload)
    key = request.headers.get("Idempotency-Key")
    sent = await service.send(
        payload.get("from"), payload["to"], payload["body"], key, _caller(request), payload.get("urgent", False)
    )
    message = sent.message
    return web.json_response(
        {"id": message.id, "from": message.sender, "to": message.recipient, "createdAt": message.created_at},
        status=200 if sent.repeated else 201,  # a repeated Idempotency-Key: the original, nothing stored
    )


async def peek(request: web.Request) -> web.Response:
    query = _query(request, schemas.NameQuery)
    pending, oldest = await request.app[SERVICE].peek(query["name"])
    return web.json_response({"pending": pending, "oldestAt": oldest})


def _manual_ack(query: dict[str, str]) -> bool:
    mode = query.get("ack", "auto")
    if mode not in ("auto", "manual"):
        raise InvalidInput("ack must be auto or manual")
    return mode == "manual"


async def check_inbox(request: web.Request) -> web.StreamResponse:
    """Mail under a lease. ack=auto (the seed's meaning): acknowledged once the whole answer is
    written. ack=manual: the answer names the lease; POST /v1/ack acknowledges it."""
    service = request.app[SERVICE]
    query = _query(request, schemas.CheckInboxQuery)
    name = query["name"]
    service.require_owner(name, request.headers.get("X-Mailbox"))
    await _json_object(request, schemas.NoBody)
    budget = int(_number(query, schemas.CheckInboxQuery, "maxChars", 0)) or None
    manual = _manual_ack(query)
    async with service.delivering(manual=manual) as delivery:
        lease = await service.take(name, budget)
        body: dict[str, Any] = {"messages": [m.to_json() for m in lease.messages], "remaining": lease.remaining}
        if manual:
            body.update(leaseId=lease.id, leaseExpiresAt=lease.expires_at)
        return await _write(request, delivery, json.dumps(body).encode(), "application/json")


async def ack(request: web.Request) -> web.Response:
    """Acknowledge a lease from check-inbox?ack=manual: its mail is delivered. 409 when expired."""
    service = request.app[SERVICE]
    name = _query(request, schemas.NameQuery)["name"]
    service.require_owner(name, request.headers.get("X-Mailbox"))
    payload = await _json_object(request, schemas.AckRequest)
    return web.json_response({"acked": await service.ack(name, payload.get("leaseId"))})


async def list_mailboxes(request: web.Request) -> web.Response:
    _query(request, schemas.NoQuery)
    caller = request.headers.get("X-Mailbox") or None
    if caller is not None:
        identity.validate_name(caller, "X-Mailbox header")  # say which input was wrong, as MCP does
    views, pending = await request.app[SERVICE].list(caller)
    return web.json_response({"mailboxes": [mailbox_json(v) for v in views], "pendingForYou": pending})


async def watch(request: web.Request) -> web.StreamResponse:
    """Long-poll for `watch --block`: answers on mail, rename, or timeout (seconds)."""
    service = request.app[SERVICE]
    query = _query(request, schemas.WatchQuery)
    name = query["name"]
    service.require_owner(name, request.headers.get("X-Mailbox"))
    timeout = _number(query, schemas.WatchQuery, "timeout", 25.0)
    await _json_object(request, schemas.NoBody)
    manual = _manual_ack(query)
    async with service.delivering(manual=manual) as delivery:
        result = await service.watch(name, timeout, still_connected=_connected(request))
        body: dict[str, Any] = {
            "event": result.event,
            "messages": [m.to_json() for m in result.messages],
            "newName": result.new_name,
        }
        if manual and result.lease is not None:
            body.update(leaseId=result.lease.id, leaseExpiresAt=result.lease.expires_at)
        return await _write(request, delivery, json.dumps(body).encode(), "application/json")


async def _write(
    request: web.Request, delivery: Delivery, body: bytes, content_type: str, **headers: str
) -> web.StreamResponse:
    """Write an answer that may carry leased mail, and mark the delivery written once all of it
    reached the socket (see MailboxService.delivering: anything short of that gives the mail back)."""
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type, **headers})
    response.content_length = len(body)
    if not _connected(request)():
        raise ConnectionResetError("client went away")
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()
    delivery.written = True
    return response


async def hook(request: web.Request) -> web.StreamResponse:
    """Claude Code hooks relay their stdin here and print what comes back (see hookrelay.py)."""
    service = request.app[SERVICE]
    _query(request, schemas.NoQuery)
    # A relay that says it acknowledges (after printing the mail) gets the lease to do so.
    manual = request.headers.get("X-Mailbox-Ack") == "manual"
    async with service.delivering(manual=manual) as delivery:
        reply = await hookapi.handle(
            service,
            request.match_info["event"],
            await request.read(),
            _caller(request),
            request.headers.get("X-Mailbox-Prefix") or None,
            _connected(request),
            urgent_wake=request.headers.get("X-Mailbox-Urgent-Wake") != "0",
        )
        stream = "stderr" if reply.stderr else "stdout"
        headers = {"X-Hook-Stream": stream, "X-Hook-Exit": str(reply.exit_code)}
        lease = reply.lease
        if manual and lease is not None and lease.id is not None:
            headers.update({"X-Mailbox-Lease": lease.id, "X-Mailbox-Lease-Name": lease.mailbox})
        text = reply.stderr or reply.stdout
        return await _write(request, delivery, text.encode("utf-8"), "text/plain; charset=utf-8", **headers)


async def collaborate(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name: str | None
    if request.method == "GET":
        name = _query(request, schemas.NameQuery)["name"]
    else:
        _query(request, schemas.NoQuery)
        payload = await _json_object(request, schemas.CollaborateRequest)
        name = payload.get("name")
        on = payload.get("on")
        if not isinstance(on, bool):
            raise InvalidInput("'on' must be true or false")
        if not isinstance(name, str):
            raise InvalidInput("'name' must be a mailbox name")
        await service.set_collaborate(name, on, _caller(request))
    return web.json_response(
        {
            "name": name,
            "collaborating": await service.collaborating(name),
            "stopWaiter": await service.stop_waiter_attached(name),
        }
    )


async def whoami(request: web.Request) -> web.Response:
    query = _query(request, schemas.WhoamiQuery)
    session_id = query["session"]
    mailbox = await request.app[SERVICE].whois(session_id)
    if mailbox is None:
        raise NotFound(f"no session {session_id!r} has registered (did its SessionStart hook run?)")
    return web.json_response({"session": session_id, "name": mailbox})


async def prune(request: web.Request) -> web.Response:
    """Delete delivered mail older than `olderThanDays` (what `claude-mailbox prune` asks for).
    Pending mail is never touched, so no mailbox's owner is asked: the token is the gate, as for
    the retention_days setting."""
    _query(request, schemas.NoQuery)
    payload = await _json_object(request, schemas.PruneRequest)
    schemas.require_fields(schemas.PruneRequest, payload)
    days, dry_run = payload["olderThanDays"], payload.get("dryRun", False)
    low, high = schemas.bounds(schemas.PruneRequest, "olderThanDays")
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not low <= days <= high:
        raise InvalidInput(f"olderThanDays must be a number of days from {low:g} to {high:g}")
    if not isinstance(dry_run, bool):
        raise InvalidInput("'dryRun' must be true or false")
    deleted = await request.app[SERVICE].prune(float(days), dry_run=dry_run)
    return web.json_response({"deleted": deleted, "dryRun": dry_run})


async def forget(request: web.Request) -> web.Response:
    """Remove a mailbox that only ever wrote to itself (the doctor's smoke test). Its owner asks:
    X-Mailbox must name it. Refused quietly (forgotten: false) for a mailbox a session owns, an
    alias, or one that holds or exchanged mail."""
    _query(request, schemas.NoQuery)
    payload = await _json_object(request, schemas.ForgetRequest)
    schemas.require_fields(schemas.ForgetRequest, payload)
    name = payload["name"]
    forgotten = await request.app[SERVICE].forget(name, request.headers.get("X-Mailbox"))
    return web.json_response({"name": name, "forgotten": forgotten})


_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


def _whole_number(query: dict[str, str], key: str, default: int) -> int:
    high = int(schemas.bounds(schemas.FeedQuery, key)[1])
    text = query.get(key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or int(text) > high:
        raise InvalidInput(f"{key} must be a whole number from 0 to {high}")
    return int(text)


async def feed(request: web.Request) -> web.Response:
    """Messages in order with their read state, for the page and `tail`; never consumes (see
    MailboxService.feed). `wait`: hold until something newer than `after` arrives."""
    query = _query(request, schemas.FeedQuery)
    since = query.get("since")
    if since is not None and not _ISO.fullmatch(since):
        raise InvalidInput("since must be a UTC time like 2026-01-31T12:00:00.000Z")
    after = query.get("after")
    messages, last = await request.app[SERVICE].feed(
        None if after is None else _whole_number(query, "after", 0),
        _whole_number(query, "limit", 100),
        FeedFilter(query.get("name"), query.get("peer"), since),
        wait=float(_whole_number(query, "wait", 0)),
        still_connected=_connected(request),
    )
    return web.json_response({"messages": [schemas.feed_json(m) for m in messages], "last": last})
