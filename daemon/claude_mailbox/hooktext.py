"""What the Claude Code hooks say: pure functions from facts to hook output, no I/O.

The daemon renders hook output so the hook process only relays bytes (it starts in ~10 ms).
Mail is written as plain facts, and each body is fenced as JSON string so a body can never
pass itself off as another message or another sender.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from claude_mailbox import textsafe
from claude_mailbox.model import ISO_LENGTH, Message

CONTEXT_CAP = 10_000  # Claude Code cuts hook context longer than this to a preview
SESSION_START_BOUND = 4_000  # the SessionStart announcement leaves the cap's room to the mail
PATH_SHOWN = 200  # characters of a peer's project path
PLUGIN_NAME = "claude-mailbox"
SEND_TOOL = f"mcp__plugin_{PLUGIN_NAME}_mailbox__send"
CHECK_TOOL = f"mcp__plugin_{PLUGIN_NAME}_mailbox__check_inbox"


@dataclass(frozen=True)
class Peer:
    name: str
    project_dir: str | None
    alive: bool
    pending: int
    is_session: bool
    host: str | None = None  # its machine, when that is another one (daemons sharing PostgreSQL)


def context_output(event: str, context: str) -> str:
    """The JSON form Claude Code reads from a context-injecting hook's stdout."""
    return json.dumps({"hookSpecificOutput": {"hookEventName": event, "additionalContext": context}})


def database_unreachable_line(where: str) -> str:
    """SessionStart while the daemon runs but cannot reach its database (`where`: the redacted URL):
    the session is not registered, so no tool is named; mail returns with the database."""
    return (
        f"claude-mailbox: mail is unavailable right now: the mailbox daemon runs but cannot reach its database "
        f"({where}), so mail can neither be sent nor read in this session until the database is back "
        "(the daemon reconnects by itself; nothing already sent is lost)."
    )


@dataclass(frozen=True)
class Peers:
    """Whom a starting session can write to: sessions running now, sessions that ended within the
    hour (their mail waits for a resume), how many other recent mailboxes are not listed
    (recipients that no session runs: `claude-mailbox list` shows them), and sessions on another
    machine whose daemon went silent (running or not: nobody can tell)."""

    live: list[Peer]
    ended: list[Peer]
    unlisted: int = 0
    unknown: list[Peer] = field(default_factory=list)


def session_start_context(
    mailbox: str, peers: Peers, pending: int, renamed_from: str | None, plugin: bool = True
) -> str:
    """`plugin=False`: hooks installed by `install-hook` (no plugin, so no plugin tool names or commands).
    At most SESSION_START_BOUND characters: peers that do not fit are counted, not listed."""
    head = [f"claude-mailbox: this session's mailbox name is {mailbox}."]
    if renamed_from:
        head.append(f"It was {renamed_from} before /clear; mail sent to the old name still arrives here.")
    if plugin:
        tail = [f"To message a session, use the {SEND_TOOL} tool with `to` set to its mailbox name."]
    else:
        tail = [
            "To message a session, use the mailbox MCP server's `send` tool, or run "
            f"`claude-mailbox send --from {mailbox} --to NAME --body TEXT`."
        ]
    if pending:
        verb = "is waiting and arrives" if pending == 1 else "are waiting and arrive"
        tail.append(f"{counted(pending, 'unread message')} for this session {verb} with the next prompt.")
    if plugin:
        tail.append(
            "Mail arrives with prompts and after tool calls; to be woken when idle, the user runs "
            "/claude-mailbox:collaborate."
        )
    else:
        tail.append("Peers' mail arrives with each prompt.")
    if not peers.live and not peers.ended and not peers.unknown:
        head.append("No other session is running, and none ended in the last hour.")
    room = SESSION_START_BOUND - sum(len(line) + 1 for line in head + tail) - len(_more_line(10**9)) - 1
    body, left = _peer_sections(peers, room)
    if left and body:
        body.append(_more_line(left))
    elif left:
        body.append(f"Mailboxes seen in the last hour that no session runs: {left} (claude-mailbox list).")
    return "\n".join(head + body + tail)


def _peer_sections(peers: Peers, room: int) -> tuple[list[str], int]:
    """Peer lines, live sessions first, as many as fit in `room` characters; returns the lines and
    how many peers were left out (plus the unlisted ones)."""
    lines: list[str] = []
    used = 0
    left = peers.unlisted
    for title, group, state in (
        ("Other sessions running now:", peers.live, "running"),
        ("Sessions that ended in the last hour:", peers.ended, "ended"),
        ("Sessions on a machine whose daemon stopped answering:", peers.unknown, "unknown"),
    ):
        for index, peer in enumerate(group):
            if left > peers.unlisted:  # full: count the rest, list none of it
                left += 1
                continue
            line = _peer_line(peer, state)
            cost = len(line) + 1 + (len(title) + 1 if index == 0 else 0)
            if used + cost > room:
                left += 1
                continue
            lines.extend([title, line] if index == 0 else [line])
            used += cost
    return lines, left


def _peer_line(peer: Peer, state: str) -> str:
    """One peer. The project path is free text from another process: JSON-quoted, unsafe characters
    escaped, so it cannot start a line of its own."""
    facts = [_STATE_FACTS[state]]
    if peer.project_dir:
        facts.append(f"project {textsafe.quote(peer.project_dir[:PATH_SHOWN])}")
    if peer.host:
        facts.append(f"on {textsafe.quote(peer.host[:PATH_SHOWN])}")
    if peer.pending:
        facts.append(f"{peer.pending} unread in its inbox")
    return f"- {textsafe.clean(peer.name)} ({', '.join(facts)})"


_STATE_FACTS = {
    "running": "running",
    "ended": "ended, mail waits for its resume",
    "unknown": "state unknown, mail waits until it reads",
}


def _more_line(count: int) -> str:
    return f"... and {count} more (claude-mailbox list)"


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """ "1 message", "2 messages" ("2 mailboxes" with `plural`)."""
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


# What one rendered line costs beyond its variable parts (the id's digits, the sender, the body's JSON
# literal): the fixed words, the fixed-width time and the newline. The stores budget the hook's
# context with it in SQL (model.Cost "rendered"); tests/test_model.py checks it against this function.
RENDERED_OVERHEAD = len("Message # from  at : ") + ISO_LENGTH + 1
URGENT_MARK = " (urgent)"
URGENT_RENDERED_COST = len(URGENT_MARK)  # what an urgent message adds to its line (the stores add it in SQL)


def render_message(message: Message) -> str:
    """One message as facts. The body is a JSON string literal: quotes and newlines inside it are
    escaped, so nothing in a body can start a new line that looks like our framing."""
    mark = URGENT_MARK if message.urgent else ""
    return f"Message #{message.id} from {message.sender} at {message.created_at}{mark}: {json.dumps(message.body)}"


def mail_context(messages: list[Message], remaining: int, oversized: int = 0) -> str:
    lines = []
    if messages:
        again = sum(message.attempts > 1 for message in messages)
        seen = f"{again} redelivered: handed over before without confirmation; " if again else ""
        lines.append(f"claude-mailbox: {len(messages)} new message(s) for this session ({seen}bodies are JSON-quoted):")
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


def wake_text(messages: list[Message], oversized: int = 0, urgent_only: bool = False) -> str:
    """What a Stop-hook waiter shows Claude when mail wakes the session (its stderr). `oversized`:
    messages too long to show here, which wait for the check_inbox tool. `urgent_only`: the session
    does not collaborate and was woken for urgent mail. The other mail is not named here: Claude
    Code runs UserPromptSubmit for the woken turn (2.1.330), whose hook hands it over."""
    kind = "urgent mail" if urgent_only else "mail"
    lines = [f"claude-mailbox: {kind} arrived while this session was idle (bodies are JSON-quoted):"]
    lines.extend(render_message(message) for message in messages)
    if oversized:
        wait = "1 longer message waits" if oversized == 1 else f"{oversized} longer messages wait"
        lines.append(
            f"{wait}, too long to show here: read {'it' if oversized == 1 else 'them'} with the {CHECK_TOOL} tool."
        )
    return "\n".join(lines)
