"""`install-hook` / `uninstall-hook`: add claude-mailbox's hooks to a Claude Code settings file.

For people who run the daemon without the plugin. The file is `~/.claude/settings.json` (user
scope) or `./.claude/settings.json` (project scope). Rules:

- every other key and every other hook is preserved, in order;
- installing twice changes nothing (our old entries are replaced, not duplicated);
- our entries are recognised by MARKER, a shell comment at the end of their command, so
  uninstalling removes only them;
- a file that is not a JSON object (or whose `hooks` is not shaped as Claude Code expects) is
  left untouched and reported with its path;
- writes are atomic (fsutil.atomic_write: a temp file beside it, then os.replace); a symlinked settings
  file (dotfile managers) is written through to its target.

Stdlib only; nothing here talks to the daemon.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_mailbox import fsutil, identity
from claude_mailbox.errors import MailboxError

MARKER = "# claude-mailbox:install-hook"
SESSION_START_TIMEOUT = 30  # may start the daemon (up to ~2 s) before announcing
PROMPT_SUBMIT_TIMEOUT = 10
EVENTS = ("SessionStart", "UserPromptSubmit")


class SettingsError(MailboxError):
    code = "settings_error"


@dataclass(frozen=True)
class PatchResult:
    path: Path
    changed: bool
    count: int  # hook entries written (install) or removed (uninstall)


def settings_path(project: bool, cwd: Path | None = None) -> Path:
    """`./.claude/settings.json` for --project, else `~/.claude/settings.json`."""
    if project:
        return (cwd or Path.cwd()) / ".claude" / "settings.json"
    return Path.home() / ".claude" / "settings.json"


def cli_prefix() -> list[str]:
    """How a hook runs this installed CLI: the console script beside this interpreter, else
    `python -m claude_mailbox` with this interpreter (both absolute: hooks run with Claude Code's
    PATH, which may not contain the virtual environment)."""
    script = Path(sys.executable).with_name("claude-mailbox.exe" if os.name == "nt" else "claude-mailbox")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "claude_mailbox"]


def hook_commands(name: str, url: str | None = None, prefix: Sequence[str] | None = None) -> dict[str, str]:
    """The command line of each of our hooks, marker included."""
    identity.validate_name(name, "--name")
    base = list(prefix or cli_prefix())
    url_args = ["--url", url] if url else []
    return {
        "SessionStart": shlex.join([*base, "session-announce", "--name", name, *url_args]) + "  " + MARKER,
        "UserPromptSubmit": shlex.join([*base, "check", "--name", name, "--hook", *url_args]) + "  " + MARKER,
    }


def is_ours(hook: object) -> bool:
    return isinstance(hook, dict) and isinstance(hook.get("command"), str) and MARKER in hook["command"]


def load(path: Path) -> dict[str, Any]:
    """The settings object; {} for a missing or empty file. SettingsError names the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {_reason(exc)}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"{path} is not valid JSON ({exc}); left it untouched: fix or remove it first") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} does not hold a JSON object; left it untouched")
    return data


def _hooks_table(settings: dict[str, Any], path: Path) -> dict[str, Any] | None:
    table = settings.get("hooks")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: `hooks` is not an object; left the file untouched")
    for event, groups in table.items():
        if not isinstance(groups, list):
            raise SettingsError(f"{path}: `hooks.{event}` is not a list; left the file untouched")
    return table


def _without_ours(settings: dict[str, Any], path: Path) -> tuple[dict[str, Any], int]:
    """A copy of `settings` with our hook entries gone, and how many there were. Groups and
    events that only held ours are dropped; everything else keeps its place."""
    table = _hooks_table(settings, path)
    if table is None:
        return settings, 0
    removed = 0
    new_table: dict[str, Any] = {}
    for event, groups in table.items():
        new_groups = []
        for group in groups:
            inner = group.get("hooks") if isinstance(group, dict) else None
            if not isinstance(inner, list):
                new_groups.append(group)
                continue
            kept = [hook for hook in inner if not is_ours(hook)]
            removed += len(inner) - len(kept)
            if kept or len(kept) == len(inner):
                new_groups.append({**group, "hooks": kept} if len(kept) != len(inner) else group)
        if new_groups or not groups:
            new_table[event] = new_groups
    result = dict(settings)
    if new_table or not table:
        result["hooks"] = new_table
    else:
        del result["hooks"]
    return result, removed


def install(path: Path, name: str, url: str | None = None, prefix: Sequence[str] | None = None) -> PatchResult:
    """Add (or replace) our SessionStart and UserPromptSubmit hooks for mailbox `name`."""
    commands = hook_commands(name, url, prefix)
    settings = load(path)
    cleaned, _ = _without_ours(settings, path)
    table = dict(cleaned.get("hooks") or {})
    timeouts = {"SessionStart": SESSION_START_TIMEOUT, "UserPromptSubmit": PROMPT_SUBMIT_TIMEOUT}
    for event in EVENTS:
        entry = {"type": "command", "command": commands[event], "timeout": timeouts[event]}
        table[event] = [*table.get(event, []), {"hooks": [entry]}]
    result = dict(settings)  # keeps `hooks` where it was among the other keys
    result["hooks"] = table
    changed = result != settings
    if changed:
        write_atomic(path, result)
    return PatchResult(path, changed, len(EVENTS))


def uninstall(path: Path) -> PatchResult:
    """Remove our hooks only. A missing file is fine (nothing to remove)."""
    settings = load(path)
    result, removed = _without_ours(settings, path)
    if removed:
        write_atomic(path, result)
    return PatchResult(path, bool(removed), removed)


def write_atomic(path: Path, settings: dict[str, Any]) -> None:
    """Write JSON (indent 2, final newline) with fsutil's atomic write, keeping the file's mode; a
    symlinked settings file is written through to its target."""
    target = path.resolve() if path.is_symlink() else path
    data = (json.dumps(settings, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        try:
            mode: int | None = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = None
        fsutil.atomic_write(target, data, mode=mode)
    except OSError as exc:
        raise SettingsError(f"cannot write {path}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
