"""Keeping the daemon up and at the plugin's version, for the SessionStart hook's slow path.

Imported only when the fast path found the daemon down or at another version than the plugin.
"""

from __future__ import annotations

import json

from claude_mailbox import __version__, autostart
from claude_mailbox.locate import daemon_url

START_WAIT_SECONDS = 2.0


def bring_up(running_version: str | None) -> str | None:
    """Start the daemon if it is down. Returns a one-line note for the announcement, or None."""
    if running_version is None:
        autostart.ensure_running(daemon_url(), None, wait=START_WAIT_SECONDS)
        return None
    return None


def with_note(hook_output: str, note: str | None) -> str:
    """Prefix the SessionStart context with a note (e.g. "mailbox daemon updated 1.2.0 -> 1.3.0")."""
    if not note:
        return hook_output
    try:
        data = json.loads(hook_output)
        output = data["hookSpecificOutput"]
        output["additionalContext"] = f"{note}\n{output['additionalContext']}"
        return json.dumps(data)
    except (ValueError, KeyError, TypeError):
        return f"{note}\n{hook_output}"


__all__ = ["__version__", "bring_up", "with_note"]
