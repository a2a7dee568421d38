"""Keeping the daemon up and at the plugin's version: the SessionStart hook's slow path, `doctor`
and `update` share this.

The managed virtual environment (`paths.managed_venv_dir()`) holds the daemon installed from the
plugin's own source tree, so the daemon's version is the plugin's version by construction. When a
plugin update brings a newer version, the first SessionStart that sees the older daemon reinstalls
that environment from the new plugin root and restarts the daemon (gracefully: SIGTERM, so the
daemon finishes its requests and every stored message stays stored), then says so in one line.
An older plugin still loaded in an older session never downgrades a newer daemon.

Imported only on slow paths (daemon down, version mismatch, doctor), with only the stdlib and our
light modules: it must run before the managed environment exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from claude_mailbox import __version__, fsutil, paths
from claude_mailbox.client import probe_health
from claude_mailbox.errors import MailboxError
from claude_mailbox.locate import daemon_url
from claude_mailbox.setup import autostart, venv
from claude_mailbox.setup.venv import (
    PIP_TIMEOUT_SECONDS,
    can_run_daemon_here,
    installed_version,
    managed_python,
    pip_install,
    probe,
    probe_problem,
    run_cli,
)

START_WAIT_SECONDS = 2.0
RESTART_WAIT_SECONDS = 15.0
HOOK_BUDGET_SECONDS = 50.0  # the SessionStart hook's timeout is 60 s (hooks/hooks.json)
UPDATE_LOCK = "update.lock"
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


# --- the plugin and its versions -------------------------------------------------------------------


def plugin_root() -> Path | None:
    """The plugin's source tree: ${CLAUDE_PLUGIN_ROOT}, else the checkout this code runs from."""
    for candidate in (os.environ.get("CLAUDE_PLUGIN_ROOT"), Path(__file__).resolve().parents[3]):
        if candidate and is_source_tree(Path(candidate)):
            return Path(candidate).resolve()
    return None


def is_source_tree(root: Path) -> bool:
    return (root / "pyproject.toml").is_file() and (root / "daemon" / "claude_mailbox" / "__init__.py").is_file()


def source_version(root: Path) -> str | None:
    """The version a `pip install <root>` installs (the package's single source of truth)."""
    try:
        text = (root / "daemon" / "claude_mailbox" / "__init__.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = _VERSION_LINE.search(text)
    return match.group(1) if match else None


def version_key(version: str) -> tuple[int, ...]:
    numbers = [int(part) for part in re.findall(r"\d+", version.split("+", 1)[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def should_update(running: str, target: str) -> bool:
    """True when the daemon at `running` must move to `target`. Never downgrade: an older plugin,
    still loaded in an older session, meets a daemon that a newer session already updated."""
    return running != target and version_key(running) <= version_key(target)


# --- the running daemon ----------------------------------------------------------------------------


def daemon_version(url: str, timeout: float = 1.0) -> str | None:
    health = probe_health(url, timeout)
    return str(health.get("version")) if health else None


def restart_daemon(url: str, python: Path, wait: float = RESTART_WAIT_SECONDS) -> bool:
    """Stop the daemon (SIGTERM: in-flight requests finish, the database closes cleanly) and start
    it with `python` through its service manager. False when the daemon is not ours to restart
    (no autostart entry, no pid file: someone runs `claude-mailbox serve` by hand)."""
    if not autostart.stop():
        return False
    autostart.restart(python, url, wait)
    return True


# --- what SessionStart calls -----------------------------------------------------------------------


def bring_up(running_version: str | None) -> str | None:
    """Start the daemon if it is down, or update it if it is older than this plugin.

    Returns one line for the session's announcement, or None. Never raises: whatever goes wrong,
    the session starts, the old daemon keeps running, and the note says what to do.
    """
    try:
        return _bring_up(running_version, time.monotonic() + HOOK_BUDGET_SECONDS)
    except ImportError:  # a fresh install: the daemon's packages (psutil, aiohttp, ...) are not installed yet
        return (
            "claude-mailbox: the mailbox daemon is not installed on this machine yet; "
            "run /claude-mailbox:mailbox-doctor"
        )
    except Exception as exc:  # a hook must never break the session
        return (
            f"claude-mailbox: could not check the mailbox daemon ({_describe(exc)}); run /claude-mailbox:mailbox-doctor"
        )


def _bring_up(running_version: str | None, deadline: float) -> str | None:
    root = plugin_root()
    if root is None:  # installed without a plugin tree: nothing to update from
        if running_version is None:
            autostart.ensure_running(daemon_url(), None, wait=START_WAIT_SECONDS)
        return None
    return bring_up_to(root, running_version, deadline=deadline, wait=START_WAIT_SECONDS)


def bring_up_to(
    root: Path, running_version: str | None, *, deadline: float | None = None, wait: float = RESTART_WAIT_SECONDS
) -> str | None:
    """Make the daemon run the version of the plugin at `root`: start it if it is down (updating
    its environment first if that is behind), update and restart it if it is older."""
    deadline = deadline or time.monotonic() + PIP_TIMEOUT_SECONDS
    target = source_version(root)
    if target is None:
        return f"claude-mailbox: {root} is not a claude-mailbox plugin tree"
    if running_version is not None:
        return sync(root, daemon_url(), deadline=deadline, running_version=running_version)
    url = daemon_url()
    note = None
    venv = paths.managed_venv_dir()
    have = installed_version(venv)
    if have and should_update(have, target):
        with _update_lock(deadline) as held:
            if held and installed_version(venv) == have:
                note = _reinstall(root, have, target, deadline)
    reinstalled = have is not None and installed_version(venv) != have
    if reinstalled:  # a first start after an install compiles and imports more: give it longer
        wait = max(wait, min(RESTART_WAIT_SECONDS, deadline - time.monotonic()))
    if not autostart.ensure_running(url, None, wait=wait):
        return note
    if note is None and reinstalled:
        note = f"mailbox daemon updated {have} -> {target}"
    return note


def sync(
    root: Path, url: str | None = None, *, deadline: float | None = None, running_version: str | None = None
) -> str | None:
    """Bring a running daemon to the version of the plugin at `root`: reinstall the managed
    environment from `root`, restart the daemon. Returns the one-line note (None: nothing to do)."""
    url = url or daemon_url()
    deadline = deadline or time.monotonic() + PIP_TIMEOUT_SECONDS
    target = source_version(root)
    if target is None:
        return f"claude-mailbox: {root} is not a claude-mailbox plugin tree"
    with _update_lock(deadline) as held:
        current = daemon_version(url) or running_version
        if current is None:
            return None  # down: the caller starts it
        if not held or not should_update(current, target):
            return None  # another session updated it meanwhile, or it is newer than this plugin
        venv = paths.managed_venv_dir()
        python = paths.venv_python(venv)
        if python.exists():
            if installed_version(venv) != target:
                note = _reinstall(root, current, target, deadline)
                if note is not None:
                    return note
        elif can_run_daemon_here():
            python = Path(sys.executable)  # no managed environment: the daemon runs from this source tree
        else:
            return (
                f"mailbox daemon {current} is older than the plugin ({target}) and there is no managed "
                "environment to update; run /claude-mailbox:mailbox-doctor"
            )
        if not restart_daemon(url, python, wait=max(2.0, min(RESTART_WAIT_SECONDS, deadline - time.monotonic()))):
            return (
                f"mailbox daemon {current} was not started by claude-mailbox's autostart, so it was left "
                f"running; restart it to run {target} (or run /claude-mailbox:mailbox-doctor)"
            )
        now = daemon_version(url, timeout=2.0)
        if now == target:
            return f"mailbox daemon updated {current} -> {target}"
        if now is None:
            return f"mailbox daemon {target} did not come back after the update; run /claude-mailbox:mailbox-doctor"
        return f"mailbox daemon is still {now} after the update to {target}; run /claude-mailbox:mailbox-doctor"


def _reinstall(root: Path, current: str, target: str, deadline: float) -> str | None:
    """Reinstall and verify the managed environment; None on success, else the failure note."""
    python = managed_python()
    try:
        pip_install(python, root, timeout=max(1.0, deadline - time.monotonic() - 5.0))
        problem = probe_problem(probe(python, timeout=max(5.0, deadline - time.monotonic())), target)
        if problem:
            raise MailboxError(f"the reinstalled environment {problem}")
    except MailboxError as exc:
        return (
            f"mailbox daemon {current} kept running: updating it to {target} failed ({exc.message}); "
            "run /claude-mailbox:mailbox-doctor"
        )
    return None


def _update_lock(deadline: float) -> contextlib.AbstractContextManager[bool]:
    """One updater at a time; the others wait (until `deadline`) and then find the work done."""
    return fsutil.file_lock(paths.data_dir() / UPDATE_LOCK, wait=max(0.0, deadline - time.monotonic()), poll=0.2)


def _tail(output: object) -> str:
    last = venv.last_line(str(output))
    return f" ({last})" if last else ""


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, MailboxError) else f"{type(exc).__name__}: {exc}"


# --- `claude-mailbox update` (the mailbox-update slash command) ------------------------------------


def newest_plugin_root(root: Path | None = None) -> Path | None:
    """The newest installed copy of this plugin. `claude plugin update` unpacks a new version next
    to the running one (~/.claude/plugins/cache/<marketplace>/<plugin>/<version>/) while this
    session keeps the old ${CLAUDE_PLUGIN_ROOT} until /reload-plugins."""
    root = root or plugin_root()
    if root is None:
        return None
    candidates = [root]
    if root.parent.parent.parent.name == "cache":  # inside Claude Code's plugin cache: look at siblings
        with contextlib.suppress(OSError):
            candidates += [child for child in root.parent.iterdir() if child.is_dir() and is_source_tree(child)]
    versioned = [(version_key(source_version(c) or "0"), c) for c in candidates]
    return max(versioned, key=lambda pair: pair[0])[1]


PLUGIN_NAME = "claude-mailbox"
PULL_TIMEOUT_SECONDS = 180.0


def claude_command() -> str | None:
    """The `claude` CLI: on PATH, else the binary of the Claude Code running this command."""
    import shutil

    found = shutil.which("claude") or os.environ.get("CLAUDE_CODE_EXECPATH")
    return found if found and os.access(found, os.X_OK) else None


def pull_plugin(root: Path | None = None) -> list[dict[str, object]]:
    """`claude plugin marketplace update <marketplace>` then `claude plugin update
    <plugin>@<marketplace>`, where the `claude` command is available. One entry per command:
    {command, ok, output}."""
    root = root or plugin_root()
    in_cache = root is not None and root.parent.parent.parent.name == "cache"
    marketplace = root.parent.parent.name if in_cache and root else PLUGIN_NAME
    claude = claude_command()
    commands = [["plugin", "marketplace", "update", marketplace], ["plugin", "update", f"{PLUGIN_NAME}@{marketplace}"]]
    results: list[dict[str, object]] = []
    for args in commands:
        shown = "claude " + " ".join(args)
        if claude is None:
            results.append({"command": shown, "ok": False, "output": "the `claude` command is not on PATH"})
            continue
        try:
            done = subprocess.run(
                [claude, *args],
                capture_output=True,
                text=True,
                timeout=PULL_TIMEOUT_SECONDS,
                stdin=subprocess.DEVNULL,
            )
            output = (done.stdout + done.stderr).strip()
            results.append({"command": shown, "ok": done.returncode == 0, "output": output[-2000:]})
        except (OSError, subprocess.TimeoutExpired) as exc:
            results.append({"command": shown, "ok": False, "output": str(exc)})
        if not results[-1]["ok"]:
            break  # no plugin update from a marketplace that did not refresh
    return results


def update(root: Path | None = None, url: str | None = None, *, pull: bool = False) -> dict[str, object]:
    """`pull`: first fetch the newest plugin version (pull_plugin). Then reinstall the managed
    environment from the newest installed plugin copy and restart the daemon, or start it if it
    is down. Returns {ok, message, before, after, pluginVersion, pluginRoot, url, pulled}."""
    pulled = pull_plugin(root) if pull else []
    lines = [f"{entry['command']}: {'ok' if entry['ok'] else 'failed'}" + _tail(entry["output"]) for entry in pulled]
    root = root or newest_plugin_root()
    if root is None or not is_source_tree(root):
        where = root or "this installation"
        message = f"no claude-mailbox plugin tree at {where}"
        return {"ok": False, "message": "\n".join([*lines, message]), "pulled": pulled, "pluginRoot": str(root)}
    if not _has_module("psutil"):  # plain python3 (hooks/run before the managed environment exists)
        result = _update_in_managed_environment(root, url)
        result["message"] = "\n".join([*lines, str(result["message"])])
        return {**result, "pulled": pulled}
    url = daemon_url(url)
    target = source_version(root) or "unknown"
    before = daemon_version(url)
    note = bring_up_to(root, before)
    after = daemon_version(url, timeout=2.0)
    ok = after is not None and not should_update(after, target)
    if note:
        message = note
    elif after is None:
        message = f"the mailbox daemon is not running at {url}; run /claude-mailbox:mailbox-doctor"
    elif after == target:
        message = f"mailbox daemon {after} already runs the plugin's version ({root})"
    else:
        message = f"mailbox daemon {after} is newer than the plugin at {root} ({target}); nothing to do"
    return {
        "ok": ok,
        "message": "\n".join([*lines, message]),
        "pulled": pulled,
        "before": before,
        "after": after,
        "pluginVersion": target,
        "pluginRoot": str(root),
        "url": url,
    }


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _update_in_managed_environment(root: Path, url: str | None) -> dict[str, object]:
    """Run `update --root ROOT --json` with the managed environment's interpreter (this one cannot
    drive the service manager) and return its result."""
    python = managed_python()
    if not python.exists():
        return {"ok": False, "message": "claude-mailbox is not set up here yet: run /claude-mailbox:mailbox-doctor"}
    argv = ["update", "--json", "--root", str(root), *(["--url", url] if url else [])]
    try:
        result = json.loads(run_cli(root, argv, capture=True, timeout=PIP_TIMEOUT_SECONDS + 60).stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return {"ok": False, "message": f"could not run the update in {python}: {_describe(exc)}"}
    return result if isinstance(result, dict) else {"ok": False, "message": "unexpected answer"}


# --- the announcement ------------------------------------------------------------------------------


def with_note(hook_output: str, note: str | None) -> str:
    """Prefix the SessionStart context with a note (e.g. "mailbox daemon updated 1.2.0 -> 1.3.0")."""
    if not note:
        return hook_output
    if not hook_output:
        return note
    try:
        data = json.loads(hook_output)
        output = data["hookSpecificOutput"]
        output["additionalContext"] = f"{note}\n{output['additionalContext']}"
        return json.dumps(data)
    except (ValueError, KeyError, TypeError):
        return f"{note}\n{hook_output}"


__all__ = ["__version__", "bring_up", "plugin_root", "source_version", "sync", "with_note"]
