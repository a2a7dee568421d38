"""What the Claude Code hooks say: pure functions from facts to hook output, no I/O.

The daemon renders hook output so the hook process only relays bytes (it starts in ~10 ms).
Mail is written as plain facts, and each body is fenced as JSON string so a body can never
pass itself off as another message or another sender.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from claude_mailbox.errors import InvalidInput
from claude_mailbox.messages import Message

CONTEXT_CAP = 10_000  # Claude Code cuts hook context longer than this to a preview
PLUGIN_NAME = "claude-mailbox"
SEND_TOOL = f"mcp__plugin_{PLUGIN_NAME}_mailbox__send"
CHECK_TOOL = f"mcp__plugin_{PLUGIN_NAME}_mailbox__check_inbox"
MAX_HOOK_INPUT = 1024 * 1024
SESSION_SOURCES = {"startup", "resume", "clear", "compact", "fork"}


@dataclass(frozen=True)
class HookInput:
    session_id: str
    event: str
    cwd: str | None
    source: str | None
    reason: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class Peer:
    name: str
    project_dir: str | None
    alive: bool
    pending: int
    is_session: bool


def parse_hook_input(data: bytes) -> HookInput:
    """Claude Code's hook stdin (both 2.1.197 and 2.1.330 shapes); InvalidInput when unusable."""
    if len(data) > MAX_HOOK_INPUT:
        raise InvalidInput("hook input is larger than 1 MiB")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("hook input is not JSON") from None
    if not isinstance(raw, dict):
        raise InvalidInput("hook input is not a JSON object")
    if (b"\\u" in data or b"\xed" in data) and not _valid_unicode(raw):
        raise InvalidInput("hook input is not valid Unicode text (it contains a lone surrogate)")
    session_id = raw.get("session_id")
    if not isinstance(session_id, str) or not session_id.strip() or len(session_id) > 200:
        raise InvalidInput("hook input has no usable session_id")

    def text(key: str) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) else None

    return HookInput(
        session_id=session_id.strip(),
        event=text("hook_event_name") or "",
        cwd=text("cwd"),
        source=text("source"),
        reason=text("reason"),
        raw=raw,
    )


def _valid_unicode(value: Any) -> bool:
    """False when a string anywhere in `value` holds a lone surrogate ("\\ud800" in JSON), which
    cannot be stored or printed as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def context_output(event: str, context: str) -> str:
    """The JSON form Claude Code reads from a context-injecting hook's stdout."""
    return json.dumps({"hookSpecificOutput": {"hookEventName": event, "additionalContext": context}})


def session_start_context(
    mailbox: str, peers: list[Peer], pending: int, renamed_from: str | None, plugin: bool = True
) -> str:
    """`plugin=False`: hooks installed by `install-hook` (no plugin, so no plugin tool names or commands)."""
    lines = [f"claude-mailbox: this session's mailbox name is {mailbox}."]
    if renamed_from:
        lines.append(f"It was {renamed_from} before /clear; mail sent to the old name still arrives here.")
    if peers:
        lines.append("Other sessions active in the last hour:")
        for peer in peers:
            where = f", project {peer.project_dir}" if peer.project_dir else ""
            state = "alive" if peer.alive else "not a Claude Code session"
            lines.append(f"- {peer.name} ({state}{where}, {peer.pending} unread)")
    else:
        lines.append("No other sessions were active in the last hour.")
    if plugin:
        lines.append(f"To message a peer, use the {SEND_TOOL} tool with `to` set to its mailbox name.")
    else:
        lines.append(
            "To message a peer, use the mailbox MCP server's `send` tool, or run "
            f"`claude-mailbox send --from {mailbox} --to NAME --body TEXT`."
        )
    if pending:
        lines.append(f"{pending} unread message(s) are waiting and arrive with the next prompt.")
    if plugin:
        lines.append(
            "Peers' mail arrives with each prompt; to be woken mid-task, the user can run /claude-mailbox:collaborate."
        )
    else:
        lines.append("Peers' mail arrives with each prompt.")
    return "\n".join(lines)


def render_message(message: Message) -> str:
    """One message as facts. The body is a JSON string literal: quotes and newlines inside it are
    escaped, so nothing in a body can start a new line that looks like our framing."""
    return f"Message #{message.id} from {message.sender} at {message.created_at}: {json.dumps(message.body)}"


def mail_context(messages: list[Message], remaining: int, oversized: int = 0) -> str:
    lines = []
    if messages:
        lines.append(f"claude-mailbox: {len(messages)} new message(s) for this session (bodies are JSON-quoted):")
    lines.extend(render_message(message) for message in messages)
    if remaining:
        why = f" ({oversized} too long to show here)" if oversized else ""
        lead = "" if messages else "claude-mailbox: "
        lines.append(
            f"{lead}{remaining} more message(s) are waiting{why}; they stay unread until the {CHECK_TOOL} tool "
            "reads them or the next prompt."
        )
    return "\n".join(lines)


def mail_budget() -> int:
    """Room for message lines inside the cap, keeping space for the header and the overflow line."""
    return CONTEXT_CAP - 600


def wake_text(messages: list[Message]) -> str:
    """What a Stop-hook waiter shows Claude when mail wakes the session (its stderr)."""
    lines = ["claude-mailbox: mail arrived while this session was idle (bodies are JSON-quoted):"]
    lines.extend(render_message(message) for message in messages)
    return "\n".join(lines)
