"""The OpenAPI 3.1 document of the route table (routes.py), served at /openapi.json (schemathesis
tests it). The shapes come from schemas.py; an Operation says which route takes and answers which
shape, and what the daemon's front door does with it. Built on the first request (pydantic is
imported then, not when the daemon starts).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from claude_mailbox import hookapi, identity, schemas, webui

NAME = {"type": "string", **schemas.NAME_KEYWORDS}
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


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so a table of them can key a cache
class Operation:
    """One route, declared once: what the document says, what handles it and how the front door
    treats it (`public`: answered without the token; `sends`: spends the send budget)."""

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
    handler: Callable[..., Awaitable[Any]] = field(kw_only=True)
    pattern: str | None = field(default=None, kw_only=True)  # aiohttp's path pattern, where it differs from `path`
    # True, or a test of the request body (MCP: only a tools/call of `send` spends).
    sends: bool | Callable[[bytes], bool] = field(default=False, kw_only=True)


def header(name: str, required: bool, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema or NAME, "description": description}


OWNER = header("X-Mailbox", True, "Must equal `name`: only its owner consumes an inbox.")
OPTIONAL_CALLER = header(
    "X-Mailbox",
    False,
    "The caller's mailbox (registers its presence; empty: the same as absent).",
    {"type": "string", "pattern": identity.OPTIONAL_NAME_REGEX},
)
HOOK_TEXT = {"X-Hook-Stream": "stdout or stderr: where the hook prints the body", "X-Hook-Exit": "the hook's exit code"}


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
            content = _content(self.ref(op.body, closed=True))
            result["requestBody"] = {"required": op.body is not schemas.NoBody, "content": content}
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


def build(operations: tuple[Operation, ...], version: str) -> dict[str, Any]:
    builder = _Builder()
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
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
