"""The OpenAPI 3.1 document of the REST surface, served at /openapi.json (schemathesis tests it)."""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}
# The daemon refuses a body that is only whitespace (Python's str.isspace): at least one other character.
_SPACES = "".join(f"\\u{code:04x}" for code in range(0x3001) if chr(code).isspace())
BODY = {
    "type": "string",
    "minLength": 1,
    "pattern": f"[^{_SPACES}]",
    "description": "At most max_body_bytes (default 64 KiB) of UTF-8.",
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
MESSAGE = {
    "type": "object",
    "required": ["id", "from", "body", "createdAt"],
    "properties": {
        "id": {"type": "integer"},
        "from": NAME,
        "body": {"type": "string"},
        "createdAt": {"type": "string"},
    },
}
MAILBOX = {
    "type": "object",
    "required": ["name", "lastSeen", "pending", "state", "alive"],
    "properties": {
        "name": NAME,
        "lastSeen": {"type": "string"},
        "pending": {"type": "integer"},
        "state": {"enum": ["alive", "ended", "alias", "client"]},
        "alive": {"type": "boolean"},
        "projectDir": {"type": ["string", "null"]},
        "aliasOf": {"type": ["string", "null"]},
        "collaborating": {"type": "boolean"},
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Invalid input",
        403: "Forbidden (foreign Origin, or X-Mailbox does not own the inbox)",
        404: "Not found",
        413: "Body too large",
        415: "Not JSON",
        421: "Foreign Host",
        429: "Rate limited, or the recipient's inbox is full",
        503: "Database busy or unavailable",
        507: "Disk full",
    }
    return {str(status): _json(ERROR, reasons[status]) for status in statuses}


def _header(name: str, required: bool, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": NAME, "description": description}


def _query(name: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


COMMON_ERRORS = (400, 403, 421, 503)


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "claude-mailbox",
            "version": version,
            "description": "A local mailbox for parallel Claude Code sessions. Loopback only.",
        },
        "servers": [{"url": "http://127.0.0.1:37849"}],
        "paths": {
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Is the daemon up; its version and database path.",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["status", "version", "dbPath"],
                                "properties": {
                                    "status": {"const": "ok"},
                                    "version": {"type": "string"},
                                    "dbPath": {"type": "string"},
                                    "port": {"type": "integer"},
                                    "waiters": {"type": "integer", "description": "open long-polls"},
                                },
                            }
                        ),
                        **_errors(403, 421),
                    },
                }
            },
            "/v1/send": {
                "post": {
                    "operationId": "send",
                    "summary": "Leave a message in another mailbox.",
                    "parameters": [_header("X-Mailbox", True, "The sender's mailbox name.")],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["to", "body"],
                                    "properties": {"to": NAME, "body": BODY},
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["id", "from", "to", "createdAt"],
                                "properties": {
                                    "id": {"type": "integer"},
                                    "from": NAME,
                                    "to": NAME,
                                    "createdAt": {"type": "string"},
                                },
                            },
                            "Stored",
                        ),
                        **_errors(*COMMON_ERRORS, 413, 415, 429, 507),
                    },
                }
            },
            "/v1/peek": {
                "get": {
                    "operationId": "peek",
                    "summary": "Count pending mail without consuming it.",
                    "parameters": [_query("name", NAME)],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["pending", "oldestAt"],
                                "properties": {
                                    "pending": {"type": "integer"},
                                    "oldestAt": {"type": ["string", "null"]},
                                },
                            }
                        ),
                        **_errors(*COMMON_ERRORS),
                    },
                }
            },
            "/v1/check-inbox": {
                "post": {
                    "operationId": "checkInbox",
                    "summary": "Take all pending mail (each message is delivered exactly once).",
                    "parameters": [
                        _query("name", NAME),
                        _query("maxChars", {"type": "integer", "minimum": 1, "maximum": 10_000_000}, False),
                        _header("X-Mailbox", True, "Must equal `name`."),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["messages", "remaining"],
                                "properties": {
                                    "messages": {"type": "array", "items": MESSAGE},
                                    "remaining": {"type": "integer"},
                                },
                            }
                        ),
                        **_errors(*COMMON_ERRORS, 415),
                    },
                }
            },
            "/v1/list": {
                "get": {
                    "operationId": "list",
                    "summary": "Every mailbox with liveness, and how much is pending for the caller.",
                    "parameters": [
                        {
                            "name": "X-Mailbox",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^([A-Za-z0-9._-]{1,64})?$"},
                            "description": "Registers the caller's presence (empty: the same as absent).",
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["mailboxes", "pendingForYou"],
                                "properties": {
                                    "mailboxes": {"type": "array", "items": MAILBOX},
                                    "pendingForYou": {"type": "integer"},
                                },
                            }
                        ),
                        **_errors(*COMMON_ERRORS),
                    },
                }
            },
        },
    }
