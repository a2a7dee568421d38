"""The hook process: relay Claude Code's hook stdin to the daemon and print what it renders.

This runs before every prompt, so its fast path imports nothing but `os`, `sys` and the raw-socket
`wire` module (the interpreter runs with -I -S: no site-packages, no user path). Everything the
hook says is decided by the daemon. Every path ends in exit 0, except the Stop waiter's exit 2
that wakes Claude with new mail; no exception ever reaches Claude Code.

Slow paths (daemon down at SessionStart, version mismatch) may import more; they are rare.
"""

from __future__ import annotations

import os
import sys

from claude_mailbox import __version__
from claude_mailbox.errors import DaemonUnreachable
from claude_mailbox.locate import daemon_url
from claude_mailbox.wire import http_request

MAX_STDIN = 1024 * 1024
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ash", "busybox", "fish"})
TIMEOUTS = {"session-start": 5.0, "prompt-submit": 5.0, "session-end": 0.8}
STOP_RECONNECT_SECONDS = 60.0  # a Stop waiter rides out a daemon restart (version sync) this long
OFFLINE_LINE = "claude-mailbox: mail is offline (the daemon is not running); run /claude-mailbox:mailbox-doctor"


def claude_pid() -> int:
    """Claude Code's pid: $CLAUDE_PID (2.1.330+), else the nearest ancestor that is not a shell
    (Claude Code runs hooks as `sh -c <command>`, and our launcher is a shell script too)."""
    env = os.environ.get("CLAUDE_PID", "")
    if env.isdigit():
        return int(env)
    pid = os.getppid()
    for _ in range(4):
        name, parent = _process_name_and_parent(pid)
        if name not in SHELLS or parent <= 1:
            return pid
        pid = parent
    return pid


def _process_name_and_parent(pid: int) -> tuple[str, int]:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        return name, int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return _process_name_and_parent_ps(pid)


def _process_name_and_parent_ps(pid: int) -> tuple[str, int]:
    """Systems without /proc (macOS): ask ps. Slower, but only there."""
    import subprocess

    try:
        out = subprocess.run(
            ["ps", "-o", "ppid=,comm=", "-p", str(pid)], capture_output=True, text=True, timeout=2
        ).stdout.split(None, 1)
        return os.path.basename(out[1].strip()).lstrip("-"), int(out[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return "", 0


def relay(event: str, data: bytes, url: str, timeout: float | None) -> tuple[int, str, str, str]:
    """POST the hook input; returns (exit code, stream, text, daemon version)."""
    headers = {
        "Content-Type": "application/json",
        "X-Mailbox-Claude-Pid": str(claude_pid()),
        "X-Mailbox-Plugin-Version": __version__,
    }
    prefix = os.environ.get("CLAUDE_MAILBOX_NAME", "")
    if prefix.isascii() and prefix.isprintable():
        headers["X-Mailbox-Prefix"] = prefix
    response = http_request(url, "POST", f"/v1/hooks/{event}", body=data, headers=headers, timeout=timeout or 1e9)
    version = response.headers.get("x-mailbox-daemon-version", "")
    if response.status != 200:
        return 0, "stdout", "", version
    code = response.headers.get("x-hook-exit", "0")
    stream = response.headers.get("x-hook-stream", "stdout")
    return (2 if code == "2" else 0), stream, response.body.decode("utf-8", "replace"), version


def run(event: str, data: bytes) -> tuple[int, str, str]:
    url = daemon_url()
    if event == "stop":
        return _stop(data, url)
    try:
        code, stream, text, version = relay(event, data, url, TIMEOUTS.get(event, 5.0))
    except DaemonUnreachable:
        if event != "session-start":
            return 0, "stdout", ""  # never slow a prompt down for a daemon that is not there
        return _session_start_slow(data)
    if event == "session-start" and version and version != __version__:
        return _session_start_slow(data, version)
    return code, stream, text


def _session_start_slow(data: bytes, running_version: str | None = None) -> tuple[int, str, str]:
    """Daemon down, or of another version than this plugin: start or update it, then announce."""
    import site

    site.main()  # the slow path may need site-packages (psutil for autostart)
    from claude_mailbox import lifecycle

    note = lifecycle.bring_up(running_version)
    try:
        _, stream, text, _ = relay("session-start", data, daemon_url(), TIMEOUTS["session-start"])
    except DaemonUnreachable:
        return 0, "stdout", OFFLINE_LINE
    return 0, stream, lifecycle.with_note(text, note)


def _stop(data: bytes, url: str) -> tuple[int, str, str]:
    """The asyncRewake Stop waiter. Returns at once unless this session is collaborating."""
    import time

    deadline = time.monotonic() + STOP_RECONNECT_SECONDS
    while True:
        try:
            code, stream, text, _ = relay("stop", data, url, None)
            return code, stream, text
        except DaemonUnreachable:
            if time.monotonic() > deadline:
                return 0, "stdout", ""
            time.sleep(1.0)
            url = daemon_url()


def headers_helper() -> str:
    """For .mcp.json's headersHelper: tell the daemon which Claude Code process is calling."""
    return f'{{"X-Mailbox-Claude-Pid": "{claude_pid()}"}}'


def main(argv: list[str]) -> None:
    code, stream, text = 0, "stdout", ""
    try:
        event = argv[0] if argv else ""
        if event == "headers":
            text = headers_helper()
        else:
            data = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read(MAX_STDIN + 1)
            code, stream, text = run(event, data)
    except BaseException:
        code, text = 0, ""
    if text:
        out = sys.stderr if stream == "stderr" else sys.stdout
        try:
            out.write(text if text.endswith("\n") else text + "\n")
            out.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)  # skips interpreter teardown: ~10 ms saved on every prompt
