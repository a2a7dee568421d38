"""The Claude Code hook protocol: parse a hook's stdin, ask the service, and say what the hook
prints (stdout or stderr) and which exit code it ends with. No HTTP here: rest.py carries the
bytes; hooktext.py holds the words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from claude_mailbox import hooktext
from claude_mailbox.errors import InvalidInput, NotFound, StoreUnavailable
from claude_mailbox.model import Lease, iso_before
from claude_mailbox.service import PEER_WINDOW_SECONDS, Caller, MailboxService, MailboxView

MAX_HOOK_INPUT = 1024 * 1024
EVENTS = ("session-start", "prompt-submit", "post-tool", "stop", "session-end")
WAKE_EXIT_CODE = 2  # an asyncRewake Stop hook exiting 2 starts a new turn with its stderr


@dataclass(frozen=True)
class HookInput:
    session_id: str
    event: str
    cwd: str | None
    source: str | None
    reason: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class HookReply:
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    lease: Lease | None = None  # mail in the reply: acknowledged once written (or by the relay)


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


async def handle(
    service: MailboxService,
    event: str,
    data: bytes,
    caller: Caller,
    prefix: str | None,
    still_connected: Callable[[], bool],
    *,
    urgent_wake: bool = True,
) -> HookReply:
    """One hook event, from its stdin bytes to what the hook prints. `urgent_wake=False`: a Stop hook
    of a session that does not collaborate is not held for urgent mail (an unattended run)."""
    if event not in EVENTS:
        raise NotFound(f"no hook event {event!r}")
    hook = parse_hook_input(data)
    if event == "session-start":
        return await _session_start(service, hook, caller, prefix)
    if event == "prompt-submit":
        return await _prompt_submit(service, hook, caller, prefix, "UserPromptSubmit")
    if event == "post-tool":
        if not service.config.deliver_between_tools:
            return HookReply()
        return await _prompt_submit(service, hook, caller, prefix, "PostToolUse")
    if event == "session-end":
        await service.session_end(hook.session_id, hook.reason, caller.claude_pid)
        return HookReply()
    woken = await service.stop_wait(hook.session_id, still_connected, hooktext.mail_budget(), urgent_wake)
    if woken is None:
        return HookReply()
    oversized = woken.lease.oversized if woken.lease else 0
    text = hooktext.wake_text(woken.messages, oversized, woken.urgent_only)
    return HookReply(stderr=text, exit_code=WAKE_EXIT_CODE, lease=woken.lease)


async def _session_start(service: MailboxService, hook: HookInput, caller: Caller, prefix: str | None) -> HookReply:
    project_dir = hook.raw.get("project_dir")
    try:
        started = await service.session_start(
            hook.session_id,
            source=hook.source,
            cwd=hook.cwd,
            project_dir=project_dir if isinstance(project_dir, str) else hook.cwd,
            claude_pid=caller.claude_pid,
            prefix=prefix,
            fixed=caller.header_name,
        )
    except StoreUnavailable:  # the session must still hear that mail is out, not silence
        line = hooktext.database_unreachable_line(service.config.database_label)
        return HookReply(stdout=hooktext.context_output("SessionStart", line))
    context = hooktext.session_start_context(
        started.mailbox,
        _peers(started.views, started.mailbox),
        started.pending,
        started.renamed_from,
        not caller.header_name,
    )
    return HookReply(stdout=hooktext.context_output("SessionStart", context))


async def _prompt_submit(
    service: MailboxService, hook: HookInput, caller: Caller, prefix: str | None, hook_event: str
) -> HookReply:
    """Mail as context for the next request: before a prompt (UserPromptSubmit) or after a tool call
    of a busy session (PostToolUse). The same budget and rules for both."""
    # Budgeted in SQL: a full inbox costs about what an empty one does. One huge message must not
    # hold back the mail behind it (skip_oversized).
    lease = await service.prompt_submit(hook.session_id, prefix, caller.header_name, hooktext.mail_budget())
    if not lease.messages and not lease.remaining:
        return HookReply()
    context = hooktext.mail_context(lease.messages, lease.remaining, lease.oversized)
    return HookReply(stdout=hooktext.context_output(hook_event, context), lease=lease)


def _peers(views: list[MailboxView], me: str) -> hooktext.Peers:
    """Mailboxes seen in the last hour, for a starting session: running sessions, sessions that
    ended (mail waits for their resume), the count of recipients no session runs, and sessions on
    another machine whose daemon is silent."""
    cutoff = iso_before(PEER_WINDOW_SECONDS)
    recent = [v for v in views if v.mailbox.name != me and v.mailbox.last_seen >= cutoff]

    def peer(view: MailboxView) -> hooktext.Peer:
        box = view.mailbox
        return hooktext.Peer(
            box.name, box.project_dir, view.alive, box.pending, view.state != "client", view.remote_host
        )

    return hooktext.Peers(
        live=[peer(v) for v in recent if v.state == "alive"],
        ended=[peer(v) for v in recent if v.state == "ended"],
        unlisted=sum(v.state == "client" for v in recent),
        unknown=[peer(v) for v in recent if v.state == "unknown"],
    )
