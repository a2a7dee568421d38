"""The MCP tool table: one row per tool (schema, description, annotations) and a plain async
function over the service behind it. No transport code: tests call these functions directly.

Descriptions say "claude-mailbox" so that the model never confuses them with Claude Code's
built-in SendMessage (live sessions only, no history).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from claude_mailbox.errors import IdentityRequired, InvalidInput
from claude_mailbox.schemas import mailbox_json
from claude_mailbox.service import Caller, MailboxService

ToolFunction = Callable[[MailboxService, dict[str, Any], Caller], Awaitable[dict[str, Any]]]

_NAME_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "maxLength": 64}


@dataclass(frozen=True)
class Tool:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool
    idempotent: bool
    destructive: bool
    run: ToolFunction


async def send(service: MailboxService, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
    sender = await service.resolve_caller(args.get("from"), caller, "from")
    sent = await service.send(sender, args.get("to"), args.get("body"), args.get("idempotencyKey"))
    message = sent.message
    result = {"id": message.id, "from": message.sender, "to": message.recipient, "createdAt": message.created_at}
    return {**result, "repeated": True} if sent.repeated else result


# The tool result carries the mail twice (text and structured content), JSON-escaped again in the text.
MCP_EXPANSION = 3


async def check_inbox(service: MailboxService, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
    name = await service.own_inbox(args.get("name"), caller)
    lease = await service.take(name, expansion=MCP_EXPANSION)
    if caller.leases is not None:
        caller.leases.append(lease)  # acknowledged once the transport has written the result
    else:
        await service.settle(lease, written=True)
    result: dict[str, Any] = {
        "name": name,
        "messages": [m.to_json() for m in lease.messages],
        "remaining": lease.remaining,
    }
    if lease.remaining:
        result["note"] = f"{lease.remaining} more message(s) are waiting: call check_inbox again to read them"
    return result


async def peek_inbox(service: MailboxService, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
    name = await service.resolve_caller(args.get("name"), caller, "name")
    pending, oldest = await service.peek(name)
    return {"name": name, "pending": pending, "oldestAt": oldest}


async def list_mailboxes(service: MailboxService, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
    try:
        name: str | None = await service.resolve_caller(args.get("name"), caller, "name")
    except IdentityRequired:
        name = None  # listing works anonymously; only presence needs a name (a bad one is still an error)
    views, pending_for_you = await service.list(name)
    return {"you": name, "mailboxes": [mailbox_json(v) for v in views], "pendingForYou": pending_for_you}


TOOLS: tuple[Tool, ...] = (
    Tool(
        name="send",
        title="claude-mailbox: send",
        description=(
            "claude-mailbox: leave a message in another session's claude-mailbox inbox (kept until read, "
            "even if that session is closed). `from` defaults to this session's mailbox."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "to": {**_NAME_SCHEMA, "description": "The recipient's mailbox name, e.g. claude-1a2b3c4d."},
                "body": {"type": "string", "minLength": 1, "description": "The message text."},
                "from": {**_NAME_SCHEMA, "description": "Your mailbox name; omit to use this session's."},
                "idempotencyKey": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 200,
                    "description": "Optional: a retry with the same key within 24 h returns the first message "
                    "instead of sending it twice.",
                },
            },
            "required": ["to", "body"],
            "additionalProperties": False,
        },
        read_only=False,
        idempotent=False,
        destructive=False,
        run=send,
    ),
    Tool(
        name="check_inbox",
        title="claude-mailbox: check inbox",
        description=(
            "claude-mailbox: read and mark delivered the unread messages in this session's claude-mailbox inbox "
            "(a large inbox is read in pages: `remaining` says how many are still waiting)."
        ),
        input_schema={
            "type": "object",
            "properties": {"name": {**_NAME_SCHEMA, "description": "Mailbox to read; omit for this session's."}},
            "additionalProperties": False,
        },
        read_only=False,
        idempotent=False,
        destructive=False,
        run=check_inbox,
    ),
    Tool(
        name="peek_inbox",
        title="claude-mailbox: peek inbox",
        description="claude-mailbox: count unread messages in a claude-mailbox inbox without reading them.",
        input_schema={
            "type": "object",
            "properties": {"name": {**_NAME_SCHEMA, "description": "Mailbox to count; omit for this session's."}},
            "additionalProperties": False,
        },
        read_only=True,
        idempotent=True,
        destructive=False,
        run=peek_inbox,
    ),
    Tool(
        name="list_mailboxes",
        title="claude-mailbox: list mailboxes",
        description=(
            "claude-mailbox: list known claude-mailbox mailboxes (live sessions first) and how many unread "
            "messages are waiting for you."
        ),
        input_schema={
            "type": "object",
            "properties": {"name": {**_NAME_SCHEMA, "description": "Your mailbox name; omit for this session's."}},
            "additionalProperties": False,
        },
        read_only=True,
        idempotent=True,
        destructive=False,
        run=list_mailboxes,
    ),
)

TOOLS_BY_NAME = {tool.name: tool for tool in TOOLS}


def check_arguments(tool: Tool, args: dict[str, Any]) -> None:
    """`additionalProperties: false`, enforced: refused in REST's words for an unknown JSON field."""
    unknown = set(args) - set(tool.input_schema["properties"])
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
