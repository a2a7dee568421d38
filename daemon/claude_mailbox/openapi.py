"""The OpenAPI 3.1 document of every route, served at /openapi.json (schemathesis tests it). The
shapes come from schemas.py; this module only says which route takes and answers which shape.
Built on the first request (pydantic is imported then, not when the daemon starts) and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from claude_mailbox import hookapi, schemas, webui

NAME = {"type": "string", "pattern": schemas.NAME_RE}
PUBLIC: list[dict[str, Any]] = []  # `security` of the routes that need no token
LONG_POLL = "long-poll"  # tag: the answer may be held for minutes (schemathesis leaves these out)
MCP_TAG = "mcp"  # tag: JSON-RPC, the MCP SDK's protocol (tests/test_mcp.py covers it)

REASONS = {
    400: "Invalid input",
    401: "No or wrong token (Authorization: Bearer <the data dir's token>)",
    403: "Forbidden (foreign Origin, or X-Mailbox does not own the inbox)",
    404: "Not found",
    405: "Method not allowed",
    408: "The request took too long to arrive",
    406: "Not acceptable (MCP: Accept must name application/json and text/event-stream)",
    409: "The lease expired or is unknown",
    413: "Body too large",
    415: "Not JSON",
    421: "Foreign Host",
    429: "Rate limited, or the recipient's inbox is full (Retry-After)",
    503: "Database busy or unavailable, or the daemon is overloaded (Retry-After)",
    507: "Disk full",
}
COMMON = (400, 401, 403, 421, 429, 503)
POST_ERRORS = (*COMMON, 413, 415)


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    operation_id: str
    summary: str
    answer: Any = None  # a schemas.py shape (JSON), or the content type(s) of a text answer
    status: int = 200
    query: Any = schemas.NoQuery
    body: Any = None
    headers: tuple[dict[str, Any], ...] = ()
    errors: tuple[int, ...] = COMMON
    public: bool = False
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # more responses


def _header(name: str, required: bool, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema or NAME, "description": description}


OWNER = _header("X-Mailbox", True, "Must equal `name`: only its owner consumes an inbox.")
OPTIONAL_CALLER = _header(
    "X-Mailbox",
    False,
    "The caller's mailbox (registers its presence; empty: the same as absent).",
    {"type": "string", "pattern": "^([A-Za-z0-9._-]{1,64})?$"},
)
HOOK_TEXT = {"X-Hook-Stream": "stdout or stderr: where the hook prints the body", "X-Hook-Exit": "the hook's exit code"}

OPERATIONS = (
    Operation(
        "/health",
        "get",
        "health",
        "Is the daemon up; its version, database and limits.",
        schemas.Health,
        errors=(403, 421, 503),
        public=True,
    ),
    Operation("/openapi.json", "get", "openapi", "This document.", "application/json", errors=(401, 403, 421)),
    Operation(
        "/v1/send",
        "post",
        "send",
        "Leave a message in another mailbox.",
        schemas.SendResponse,
        201,
        body=schemas.SendRequest,
        headers=(
            _header(
                "X-Mailbox",
                False,
                "The sender's mailbox; this or `from` is required (400 identity_required without both).",
            ),
            _header(
                "Idempotency-Key",
                False,
                "A retry with the same key (same sender, 24 h) answers the "
                "first message, status 200, and stores nothing.",
                {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$"},
            ),
        ),
        errors=(*POST_ERRORS, 507),
        extra={"200": "Repeated Idempotency-Key: the first message"},
    ),
    Operation(
        "/v1/peek",
        "get",
        "peek",
        "Count pending mail without consuming it.",
        schemas.PeekResponse,
        query=schemas.NameQuery,
    ),
    Operation(
        "/v1/check-inbox",
        "post",
        "checkInbox",
        "Take pending mail under a lease (ack=auto: delivered once answered).",
        schemas.CheckInboxResponse,
        query=schemas.CheckInboxQuery,
        headers=(OWNER,),
        errors=POST_ERRORS,
    ),
    Operation(
        "/v1/ack",
        "post",
        "ack",
        "Acknowledge a lease from check-inbox?ack=manual.",
        schemas.AckResponse,
        query=schemas.NameQuery,
        body=schemas.AckRequest,
        headers=(OWNER,),
        errors=(*POST_ERRORS, 409),
    ),
    Operation(
        "/v1/list",
        "get",
        "list",
        "Every mailbox with liveness, and how much is pending for the caller.",
        schemas.ListResponse,
        headers=(OPTIONAL_CALLER,),
    ),
    Operation(
        "/v1/watch",
        "post",
        "watch",
        "Wait for mail, a rename or the timeout (`watch --block`).",
        schemas.WatchResponse,
        query=schemas.WatchQuery,
        headers=(OWNER,),
        errors=POST_ERRORS,
        tags=(LONG_POLL,),
    ),
    Operation(
        "/v1/hooks/{event}",
        "post",
        "hook",
        "Claude Code's hooks relay their stdin here and print the answer (hooks/hook.py). The stop "
        "event holds the answer until mail arrives while the session collaborates.",
        "text/plain",
        body=schemas.HookInput,
        headers=(
            _header("X-Mailbox", False, "A fixed mailbox name for this session."),
            _header("X-Mailbox-Prefix", False, "Base of the session's mailbox name."),
            _header(
                "X-Mailbox-Claude-Pid", False, "The Claude Code process.", {"type": "string", "pattern": "^[0-9]{1,9}$"}
            ),
            _header(
                "X-Mailbox-Ack", False, "manual: the relay acknowledges the mail it printed.", {"enum": ["manual"]}
            ),
        ),
        errors=(*POST_ERRORS, 404),
        tags=(LONG_POLL,),
    ),
    Operation(
        "/v1/collaborate",
        "get",
        "collaborateStatus",
        "Is a mailbox in collaboration mode.",
        schemas.CollaborateResponse,
        query=schemas.NameQuery,
    ),
    Operation(
        "/v1/collaborate",
        "post",
        "collaborate",
        "Turn collaboration mode on or off (the Stop hook then waits for mail).",
        schemas.CollaborateResponse,
        body=schemas.CollaborateRequest,
        headers=(OPTIONAL_CALLER,),
        errors=(*POST_ERRORS, 404),
    ),
    Operation(
        "/v1/whoami",
        "get",
        "whoami",
        "The mailbox a Claude Code session registered.",
        schemas.WhoamiResponse,
        query=schemas.WhoamiQuery,
        errors=(*COMMON, 404),
    ),
    Operation(
        "/v1/prune",
        "post",
        "prune",
        "Delete delivered mail older than an age (pending mail is never touched); needs only the token.",
        schemas.PruneResponse,
        body=schemas.PruneRequest,
        errors=POST_ERRORS,
    ),
    Operation(
        "/v1/forget",
        "post",
        "forget",
        "Remove a mailbox that only ever wrote to itself (the doctor's smoke test); X-Mailbox must name it.",
        schemas.ForgetResponse,
        body=schemas.ForgetRequest,
        headers=(_header("X-Mailbox", True, "Must equal `name`."),),
        errors=POST_ERRORS,
    ),
    Operation(
        "/v1/feed",
        "get",
        "feed",
        "Messages in order with their read state, for the page and `tail` (never consumes).",
        schemas.FeedResponse,
        query=schemas.FeedQuery,
        tags=(LONG_POLL,),
    ),
    Operation("/", "get", "page", "The live web page.", "text/html", errors=(403, 421), public=True),
    Operation(
        "/static/{name}",
        "get",
        "static",
        "The page's script and style.",
        ("text/javascript", "text/css"),
        errors=(403, 404, 421),
        public=True,
    ),
    Operation(
        "/mcp",
        "post",
        "mcp",
        "The MCP endpoint (Streamable HTTP, JSON answers; JSON-RPC body).",
        "application/json",
        body=dict,
        errors=(*POST_ERRORS, 406),
        tags=(MCP_TAG,),
        extra={"202": "A notification or response, accepted"},
    ),
    Operation(
        "/mcp", "get", "mcpGet", "Not offered (no server-initiated stream).", None, 405, errors=(401,), tags=(MCP_TAG,)
    ),
    Operation(
        "/mcp", "delete", "mcpDelete", "Not offered (stateless sessions).", None, 405, errors=(401,), tags=(MCP_TAG,)
    ),
)


def _content(schema: dict[str, Any], content_type: str = "application/json") -> dict[str, Any]:
    return {content_type: {"schema": schema}}


class _Builder:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}
        self.components["Error"] = self.schema_of(schemas.ErrorBody)

    def schema_of(self, shape: Any) -> dict[str, Any]:
        """A shape's schema; the shapes it nests become components."""
        schema = dict(schemas.json_schema(shape, schemas.REF))
        self.components.update(schema.pop("$defs", {}))
        return schema

    def ref(self, shape: Any, *, closed: bool = False) -> dict[str, Any]:
        name = shape.__name__
        if name not in self.components:
            schema = self.schema_of(shape)
            self.components[name] = schemas.closed(schema, name) if closed else schema
        return {"$ref": schemas.REF.format(model=name)}

    def operation(self, op: Operation) -> dict[str, Any]:
        parameters = list(op.headers)
        if op.query is not schemas.NoQuery:
            properties = schemas.json_schema(op.query)["properties"]
            parameters += [
                {"name": key, "in": "query", "required": key in schemas.required(op.query), "schema": schema}
                for key, schema in properties.items()
            ]
        if "{event}" in op.path:
            parameters.append(
                {"name": "event", "in": "path", "required": True, "schema": {"enum": list(hookapi.EVENTS)}}
            )
        if "{name}" in op.path:
            files = {"enum": sorted(webui.STATIC_TYPES)}
            parameters.append({"name": "name", "in": "path", "required": True, "schema": files})
        result: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "responses": {}}
        if op.tags:
            result["tags"] = list(op.tags)
        if parameters:
            result["parameters"] = parameters
        if op.body is dict:
            result["requestBody"] = {"required": True, "content": _content({"type": "object"})}
        elif op.body is not None:
            result["requestBody"] = {"required": True, "content": _content(self.ref(op.body, closed=True))}
        answer: dict[str, Any] = {"description": "OK" if op.status < 400 else REASONS[op.status]}
        if isinstance(op.answer, (str, tuple)):
            types = op.answer if isinstance(op.answer, tuple) else (op.answer,)
            answer["content"] = {
                kind: {"schema": {} if kind == "application/json" else {"type": "string"}} for kind in types
            }
        elif op.answer is not None:
            answer["content"] = _content(self.ref(op.answer))
        if op.operation_id == "hook":
            answer["headers"] = {
                key: {"description": text, "schema": {"type": "string"}} for key, text in HOOK_TEXT.items()
            }
        result["responses"][str(op.status)] = answer
        for extra, description in op.extra.items():
            result["responses"][extra] = {**answer, "description": description}
        for error in op.errors:
            result["responses"][str(error)] = {
                "description": REASONS[error],
                "content": _content({"$ref": schemas.REF.format(model="Error")}),
            }
        if op.public:
            result["security"] = PUBLIC
        return result


@functools.cache
def document(version: str) -> dict[str, Any]:
    builder = _Builder()
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = builder.operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "claude-mailbox",
            "version": version,
            "description": "A local mailbox for parallel Claude Code sessions. Loopback only.",
        },
        "servers": [{"url": "http://127.0.0.1:37849"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": LONG_POLL, "description": "The answer may be held until mail arrives."},
            {"name": MCP_TAG, "description": "The Model Context Protocol endpoint (JSON-RPC)."},
        ],
        "paths": paths,
        "components": {
            "schemas": builder.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The token in the data dir."}
            },
        },
    }
