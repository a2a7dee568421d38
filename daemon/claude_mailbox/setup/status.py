"""`claude-mailbox status`: what runs, at which version, where, and who has mail, at a glance.

Stdlib and light modules only (the slash command runs it with plain python3): psutil is used
through autostart when it is there, and its absence only makes the autostart column vaguer.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone
from typing import Any

from claude_mailbox import __version__, auth, locate, paths, portholder
from claude_mailbox.client import MailboxClient, probe_health
from claude_mailbox.errors import DaemonError, DaemonUnreachable, MailboxError
from claude_mailbox.httpclient import NotOurDaemon, TlsFailed
from claude_mailbox.locate import Endpoint

# What .mcp.json's url says: Claude Code expands it from its own environment only.
MCP_DEFAULT_URL = locate.DEFAULT_URL


def gather(flag: str | None = None, session_id: str | None = None) -> dict[str, Any]:
    """Everything `status` shows. Top-level `state` is Running, Stopped (nothing answers) or Untrusted
    (an https daemon answers, but its certificate does not verify here); `autostart.state` is
    Running / Stopped / NotInstalled. `flag`: the --url flag."""
    url, source = locate.resolve(flag)
    client = MailboxClient(url, timeout=2.0)
    data: dict[str, Any] = {"state": "Stopped", "url": client.url, "urlSource": source}
    try:
        health: dict[str, Any] | None = client.health(detailed=True)
    except DaemonUnreachable as exc:
        health = None
        data["error"] = exc.message
        if isinstance(exc, TlsFailed):
            data["state"] = "Untrusted"
        elif isinstance(exc, NotOurDaemon):  # issue 20.1: it got no token; say who holds the port
            data["portHolder"] = portholder.describe(client.url, unproven=True)
    if health is not None:
        data.update(health)
        data["state"] = "Running"
    elif data["state"] == "Stopped" and "portHolder" not in data:
        data["portHolder"] = portholder.describe(client.url)
    data["mcpNote"] = mcp_note(client.url, source)
    data.setdefault("port", _port(client.url))
    data.update(_plugin())
    data["database"] = _database(health)
    data["autostart"] = _autostart(client.url)
    data["auth"] = auth_info(health)
    if session_id:
        data["session"] = {"id": session_id, "mailbox": _session_mailbox(client, session_id, health is not None)}
    data["mailboxes"] = []
    if health is not None and health.get("status") == "ok":  # else every read answers 503
        try:
            data["mailboxes"] = client.list()["mailboxes"]
        except DaemonError as exc:
            if exc.code == "database_unavailable":  # the daemon runs, its database does not answer
                data["database"]["unreachable"] = True
            elif exc.http_status != 401:
                raise
            else:
                data["auth"]["error"] = exc.message  # the rest of the status is still worth showing
    return data


def auth_info(health: dict[str, Any] | None) -> dict[str, Any]:
    """Which auth mode is on (the running daemon's word, else config.toml's) and where the token is."""
    mode = health.get("auth") if health else None
    if mode not in auth.MODES:
        try:
            from claude_mailbox import config

            mode = config.load().auth
        except MailboxError:
            mode = "token"
    path = auth.token_path(locate.data_dir())
    source = "$" + auth.TOKEN_ENV if os.environ.get(auth.TOKEN_ENV, "").strip() else path
    token = auth.read_token()
    info = {"mode": mode, "tokenPath": path, "tokenSource": source, "tokenFound": token is not None}
    if source != path and token != auth.read_token_file(path):
        # Claude Code withholds variables named like secrets from the MCP headersHelper, which then
        # reads only the file: the hooks would work and the session would have no mailbox tools.
        info["mcpWarning"] = f"Claude Code's MCP connection does not see ${auth.TOKEN_ENV}: put the token in {path}"
    return info


def auth_line(info: dict[str, Any]) -> str:
    """One line for status and doctor: the mode, where the token is, and trouble with it."""
    if info["mode"] == "none":
        return 'none (auth = "none" in config.toml: any local process can read and send mail)'
    line = f"token ({info['tokenPath']}"
    line += f", sent from {info['tokenSource']})" if info["tokenSource"] != info["tokenPath"] else ")"
    if info.get("error"):
        line += f"; refused: {info['error']}"
    elif info.get("mcpWarning"):
        line += f"; {info['mcpWarning']}"
    elif not info["tokenFound"]:
        line += "; no token file yet (the daemon writes it at its first start)"
    return line


def render(data: dict[str, Any], now: datetime | None = None) -> str:
    version = data.get("version")
    plugin = data.get("pluginVersion")
    if data["state"] == "Running":
        daemon = f"Running  {version} at {data['url']}"
        if plugin and version != plugin:
            daemon += f"  (plugin is {plugin}: the next session start updates it)"
    elif data["state"] == "Untrusted":
        daemon = f"Untrusted  {data['error']}"
    elif data.get("portHolder"):
        daemon = f"Stopped  {data['portHolder']}"
    else:
        daemon = f"Stopped  nothing answers at {data['url']}"
    autostart = data["autostart"]
    how = autostart.get("mechanism") or ("not registered" if autostart["state"] == "NotInstalled" else "")
    database = data["database"]
    if database.get("unreachable"):
        size = (
            f"{'PostgreSQL, ' if database.get('server') else ''}UNREACHABLE: the daemon cannot reach it, so mail "
            "can neither be sent nor read until it is back; the daemon reconnects by itself"
        )
    elif database.get("server"):
        size = "PostgreSQL"
    else:
        size = _size(database["bytes"]) if database.get("bytes") is not None else "not created yet"
    rows = [
        ("daemon", daemon),
        ("plugin", f"{plugin}" + (f"  {data['pluginRoot']}" if data.get("pluginRoot") else "")),
        ("port", f"{data.get('port', '')}  (address from {data.get('urlSource', locate.FROM_DEFAULT)})"),
        ("database", f"{database.get('path') or 'unknown'}  ({size})"),
        *([("problem", f"UNAVAILABLE  {data['problem']}")] if data.get("problem") else []),
        ("autostart", f"{autostart['state']}" + (f"  {how}" if how else "")),
    ]
    integrity = data.get("integrity")
    if isinstance(integrity, dict):
        rows.append(("integrity", integrity_line(integrity)))
    if "maxWatchers" in data:
        rows.append(
            (
                "load",
                f"{data.get('connections', 0)}/{data.get('maxConnections')} connections, "
                f"{data.get('waiters', 0)}/{data['maxWatchers']} waiting long-polls",
            )
        )
    if "session" in data:
        rows.append(("session", f"{data['session']['mailbox']}  (this session)"))
    if data.get("auth"):
        rows.append(("auth", auth_line(data["auth"])))
    if data.get("mcpNote"):
        rows.append(("mcp", data["mcpNote"]))
    lines = ["claude-mailbox status"] + [f"  {label:<10} {value}" for label, value in rows]
    boxes = data.get("mailboxes", [])
    if data["state"] == "Running":
        lines.append(f"mailboxes ({len(boxes)})" + (":" if boxes else ": none yet"))
    if boxes:
        now = now or datetime.now(timezone.utc)  # noqa: UP017 - runs on python3 < 3.11 too
        width = max(len("NAME"), *(len(box["name"]) for box in boxes))
        lines.append(f"  {'NAME':<{width}}  {'STATE':<6} {'PENDING':>7}  {'LAST SEEN':<9}  PROJECT")
        for box in boxes:
            state = box["state"] + ("+collab" if box.get("collaborating") else "")
            extra = f"-> {box['aliasOf']}" if box.get("aliasOf") else (box.get("projectDir") or "")
            seen = _ago(box.get("lastSeen"), now)
            lines.append(f"  {box['name']:<{width}}  {state:<6} {box['pending']:>7}  {seen:<9}  {extra}".rstrip())
    return "\n".join(lines)


def integrity_line(integrity: dict[str, Any]) -> str:
    """The running daemon's last PRAGMA quick_check (at open, on its schedule, at SIGHUP)."""
    state, when = integrity.get("state"), integrity.get("checkedAt") or "never"
    if state == "damaged":
        return (
            f"DAMAGED  (quick_check at {when}: {integrity.get('problem')}); stop the daemon, copy the "
            "database aside, restore a backup"
        )
    every = integrity.get("everyMinutes")
    schedule = f"every {every} min and at SIGHUP" if every else "at SIGHUP"
    return f"{state}  (last quick_check {when}; {schedule})"


def _plugin() -> dict[str, Any]:
    from claude_mailbox.setup import lifecycle

    root = lifecycle.plugin_root()
    version = (lifecycle.source_version(root) if root else None) or __version__
    return {"pluginVersion": version, "pluginRoot": str(root) if root else None}


def _port(url: str) -> int | None:
    try:
        return Endpoint.parse(url).port
    except MailboxError:
        return None


def _database(health: dict[str, Any] | None) -> dict[str, Any]:
    if health and "database" in health and "dbPath" not in health:  # PostgreSQL: no file to measure
        return {"path": health["database"], "bytes": None, "server": True}
    path: str | None = health.get("dbPath") if health else None
    if path is None:
        try:
            from claude_mailbox import config

            path = str(config.load().database)
        except MailboxError:
            path = str(paths.default_db_path())
    size = None
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            size = (size or 0) + os.path.getsize(path + suffix)
    return {"path": path, "bytes": size}


def _autostart(url: str) -> dict[str, Any]:
    """Running / Stopped / NotInstalled, and by what. Without psutil (plain python3) the pid file
    cannot be checked; the answer then rests on the service definition alone."""
    from claude_mailbox.setup import autostart

    mechanism = autostart.installed_mechanism()
    try:
        state = autostart.state(url).value
        detached = autostart.detached_pid() if mechanism is None else None
        if mechanism is None and detached is None and state == "Running":
            state = "NotInstalled"  # the daemon runs (started by hand), but nothing would start it again
    except ImportError:
        healthy = probe_health(url) is not None
        state = "Running" if healthy else ("Stopped" if mechanism else "NotInstalled")
        if healthy and mechanism is None and not paths.pid_file().exists():
            state = "NotInstalled"  # started by hand: nothing would start it again
        detached = None
    name = mechanism.value if mechanism else (f"detached process (pid {detached})" if detached else None)
    return {"state": state, "mechanism": name, "location": autostart.installed_location()}


def mcp_note(url: str, source: str) -> str | None:
    """When the resolved address is not where the MCP tools connect: .mcp.json only sees Claude
    Code's environment (`${CLAUDE_MAILBOX_URL:-http://127.0.0.1:37849}`), so a port set in
    config.toml (or a daemon started elsewhere) leaves the tools on the default. The one line that
    fixes it, or None."""
    if source in (locate.FROM_ENV, locate.FROM_FLAG) or url.rstrip("/") == MCP_DEFAULT_URL:
        return None
    where = "config.toml" if source == locate.FROM_CONFIG else f"the running daemon ({locate.URL_FILE})"
    return (
        f"{where} puts the daemon at {url}, but the mailbox MCP tools only see $CLAUDE_MAILBOX_URL and use "
        f"{MCP_DEFAULT_URL} without it; fix: add `export CLAUDE_MAILBOX_URL={url}` to your shell profile "
        "(~/.bashrc, ~/.zshrc), then restart Claude Code"
    )


def _session_mailbox(client: MailboxClient, session_id: str, running: bool) -> str:
    if running:
        try:
            return client.whoami(session_id)
        except MailboxError:
            pass
    from claude_mailbox import identity

    prefix = os.environ.get("CLAUDE_MAILBOX_NAME")
    if not prefix:
        try:
            from claude_mailbox import config

            prefix = config.load().prefix
        except MailboxError:
            prefix = None
    return identity.session_mailbox(session_id, prefix)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"


def _ago(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "-"
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


__all__ = ["auth_info", "auth_line", "gather", "render"]
