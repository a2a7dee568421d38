"""Who holds the daemon's port when it is not the mailbox daemon, and what to tell the user then
(issue 11.3: another program on the port made the plugin silently absent). Stdlib only; psutil
names the holder where it is importable (the hooks' slow path, the daemon, the doctor).
"""

from __future__ import annotations

import os

from claude_mailbox import textsafe
from claude_mailbox.errors import MailboxError
from claude_mailbox.locate import Endpoint
from claude_mailbox.paths import config_path

# `python -m claude_mailbox serve`, `-m claude_mailbox.setup.autostart ... serve` (Windows entries)
DAEMON_MODULES = ("claude_mailbox", "claude_mailbox.setup.autostart")


def holder(port: int) -> tuple[int, str, bool] | None:
    """(pid, process name, is a claude-mailbox daemon) of the process listening on `port`, or None
    when psutil is missing or cannot tell (another user's process, a platform without the call)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                process = psutil.Process(conn.pid)
                return conn.pid, process.name(), is_daemon_command(process.cmdline())
    except (psutil.Error, OSError):
        return None
    return None


def listener_uid(port: int) -> int | None:
    """The owner uid of the socket listening on `port`, from /proc/net/tcp{,6} (Linux; other users'
    sockets included, which psutil cannot name without root). None where unknown."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 7 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return int(fields[7])
        except (OSError, ValueError):
            continue
    return None


def who(port: int, found: tuple[int, str] | None) -> str:
    """`pid 123, "name", user bob` as far as known, for the lines below."""
    parts = [f"pid {found[0]}, {textsafe.quote(found[1])}"] if found else []
    uid = listener_uid(port)
    if uid is not None:
        try:
            import pwd

            parts.append(f"user {textsafe.quote(pwd.getpwuid(uid).pw_name)}")
        except (ImportError, KeyError):
            parts.append(f"uid {uid}")
    return ", ".join(parts)


def is_daemon_command(cmdline: list[str]) -> bool:
    """Is this command line a claude-mailbox daemon? (`python -m claude_mailbox serve`, the Windows
    entry module, or the `claude-mailbox serve` script; a mere mention of the name is not enough.)"""
    module = any(arg in DAEMON_MODULES for arg in cmdline)
    script = any(os.path.basename(arg).startswith("claude-mailbox") for arg in cmdline)
    return (module or script) and "serve" in cmdline


def foreign_port_line(url: str, pid_and_name: tuple[int, str] | None = None) -> str:
    """The SessionStart line for a port held by something that is not claude-mailbox."""
    try:
        endpoint = Endpoint.parse(url)
        host, port = endpoint.host, endpoint.port
    except Exception:  # a malformed URL was reported elsewhere; name it as it is
        host, port = url, 0
    if pid_and_name is None:
        found = holder(port)
        pid_and_name = (found[0], found[1]) if found else None
    known = who(port, pid_and_name)
    return (
        f"claude-mailbox: port {port} on {textsafe.clean(host)} is held by another program"
        f"{f' ({known})' if known else ''}, not this user's mailbox "
        "daemon, so mail is offline in this session and it has no mailbox tools. To move the mailbox to a free "
        f"port N, the user sets CLAUDE_MAILBOX_URL=http://127.0.0.1:N in the environment Claude Code starts in "
        f"and `port = N` in {textsafe.clean(str(config_path()))}, then restarts Claude Code and runs "
        "/claude-mailbox:mailbox-doctor"
    )


def describe(url: str, unproven: bool = False) -> str | None:
    """For `status` and the doctor: one line naming the port and the program that holds it when that
    is not a claude-mailbox daemon; None when a mailbox daemon answers there or nothing listens.
    `unproven`: something answered but could not prove it holds the token (httpclient.NotOurDaemon)."""
    from claude_mailbox.client import probe_health

    if not unproven and probe_health(url, timeout=1.0) is not None:
        return None
    try:
        port = Endpoint.parse(url).port
    except MailboxError:
        return None
    found = holder(port)
    if found is not None and found[2] and not unproven:
        return None  # our own daemon, starting or stuck: the daemon row says it does not answer
    if found is None and not unproven and not _listening(url):
        return None
    known = who(port, found[:2] if found else None) or "psutil cannot tell which process"
    if unproven:
        return (
            f"port {port} is held by a program that cannot prove it holds this user's token ({known}), so nothing "
            "secret was sent to it; if it is not your daemon, to move the mailbox to a free port N: "
            f"`port = N` in {textsafe.clean(str(config_path()))} and `export CLAUDE_MAILBOX_URL=http://127.0.0.1:N` "
            "in your shell profile, then restart Claude Code"
        )
    return (
        f"port {port} is held by another program ({known}), not claude-mailbox; to move the mailbox to a free port N: "
        f"`port = N` in {textsafe.clean(str(config_path()))} and `export CLAUDE_MAILBOX_URL=http://127.0.0.1:N` "
        "in your shell profile, then restart Claude Code"
    )


def _listening(url: str) -> bool:
    """Does anything accept a TCP connection at `url`?"""
    import socket

    endpoint = Endpoint.parse(url)
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=1.0):
            return True
    except OSError:
        return False
