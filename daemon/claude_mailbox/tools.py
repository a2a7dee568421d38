"""The MCP tool table: one row per tool (schema, description, annotations) and a plain async
function over the service behind it. No transport code: tests call these functions directly.

Descriptions say "claude-mailbox" so that the model never confuses them with Claude Code's
built-in SendMessage (live sessions only, no history).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from claude_mailbox import schemas
from claude_mailbox.errors import IdentityRequired
from claude_mailbox.schemas import mailbox_json
from claude_mailbox.service import Caller, MailboxService

ToolFunction = Callable[[MailboxService, dict[str, Any], Caller], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Tool:
    name: str
    title: str
    description: str
    arguments: Any  # the TypedDict in schemas.py: inputSchema and the argument check come from it
    read_only: bool
    idempotent: bool
    destructive: bool
    run: ToolFunction

    @property
    def input_schema(self) -> dict[str, Any]:
        return schemas.input_schema(self.arguments)


async def send(service: MailboxService, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
    sent = await service.send(
        args.get("from"),
        args.get("to"),
        args.get("body"),
        args.get("idempotencyKey"),
        caller,
        args.get("urgent", False),
    )
    message = sent.message
    result = {"id": message.id, "from": message.sender, "to": message.recipient, "createdAt": message.created_at}
    return {**result, "repeated": True} if sent.repeated else result


# The tool result carries the mail twice (text and structured content), JSON-escaped again in the text.
MCP_EXPANSION = 3


async def check_inbox(service: MailboxService, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
    name = await service.own_inbox(args.get("name"), caller)
    lease = await service.take(name, expansion=MCP_EXPANSION)  # acked once written, or held (service.delivering)
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
        arguments=schemas.SendArguments,
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
        arguments=schemas.CheckInboxArguments,
        read_only=False,
        idempotent=False,
        destructive=False,
        run=check_inbox,
    ),
    Tool(
        name="peek_inbox",
        title="claude-mailbox: peek inbox",
        description="claude-mailbox: count unread messages in a claude-mailbox inbox without reading them.",
        arguments=schemas.PeekArguments,
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
        arguments=schemas.ListArguments,
        read_only=True,
        idempotent=True,
        destructive=False,
        run=list_mailboxes,
    ),
)

TOOLS_BY_NAME = {tool.name: tool for tool in TOOLS}


def check_arguments(tool: Tool, args: dict[str, Any]) -> None:
    """`additionalProperties: false`, enforced: refused in REST's words for an unknown JSON field."""
    schemas.refuse_unknown(tool.arguments, args)
