"""The hook relay: relay Claude Code's hook stdin to the daemon and print what it renders.

This runs before every prompt, so its fast path imports nothing but `os`, `sys`, the raw-socket
`httpclient` module and the Claude Code pid lookup (the interpreter runs with -I -S: no
site-packages, no user path). Everything the hook says is decided by the daemon. Every path ends in
exit 0, except the Stop waiter's exit 2 that wakes Claude with new mail; no exception ever reaches
Claude Code.

Slow paths (daemon down at SessionStart, version mismatch) may import more; they are rare. The Stop
waiter's loop is in stopwaiter.py; hooks/hook.py sends `headers` to mcpheaders.py and `cli` to
launcher.py.
"""

from __future__ import annotations

import os
import sys

from claude_mailbox import __version__, auth
from claude_mailbox.claudeproc import claude_pid
from claude_mailbox.errors import DaemonUnreachable
from claude_mailbox.httpclient import NotOurDaemon, TlsFailed, http_request
from claude_mailbox.locate import daemon_url

MAX_STDIN = 1024 * 1024
# post-tool runs after every tool call: a stuck daemon may cost it a second, never a prompt's five.
TIMEOUTS = {"session-start": 5.0, "prompt-submit": 5.0, "post-tool": 1.0, "session-end": 0.8}
BETWEEN_TOOLS_ENV = "CLAUDE_MAILBOX_BETWEEN_TOOLS"  # "0": this session gets no mail between tool calls
# "1": an unattended session (`claude -p`, the Agent SDK's stream-json) that does not collaborate is
# still held for urgent mail. Off by default: such a session's end waits ~30 s for a held Stop hook.
WAKE_UNATTENDED_ENV = "CLAUDE_MAILBOX_WAKE_UNATTENDED"
# Said when the daemon could not be reached at SessionStart: Claude Code then offers no mailbox tools
# for the session's life, so the line must not point the model at one.
OFFLINE_LINE = (
    "claude-mailbox: mail is offline in this session (the mailbox daemon is not running), so it has no mailbox "
    "tools; the user can set it up and start it with /claude-mailbox:mailbox-doctor"
)


class Restarting(DaemonUnreachable):
    """The daemon answered 503 to a waiting Stop hook: it is stopping, and a new one may follow."""


def relay(
    event: str, data: bytes, url: str, timeout: float | None, mailbox: str | None = None
) -> tuple[int, str, str, str]:
    """POST the hook input; returns (exit code, stream, text, daemon version). `mailbox` fixes the
    session's mailbox name (hooks installed by `install-hook --name N`) instead of deriving it."""
    headers = {
        "Content-Type": "application/json",
        "X-Mailbox-Claude-Pid": str(claude_pid()),
        "X-Mailbox-Plugin-Version": __version__,
        "X-Mailbox-Ack": "manual",  # mail in the answer is acknowledged by acknowledge(), once printed
        **auth.auth_header(),  # read per relay: a daemon started by this hook has just written it
    }
    if mailbox:
        headers["X-Mailbox"] = mailbox
    unattended = os.environ.get("CLAUDE_CODE_SESSION_ATTENDED") == "0"
    if event == "stop" and unattended and os.environ.get(WAKE_UNATTENDED_ENV) != "1":
        headers["X-Mailbox-Urgent-Wake"] = "0"
    prefix = os.environ.get("CLAUDE_MAILBOX_NAME", "")
    if prefix.isascii() and prefix.isprintable():
        headers["X-Mailbox-Prefix"] = prefix
    response = http_request(url, "POST", f"/v1/hooks/{event}", body=data, headers=headers, timeout=timeout or 1e9)
    version = response.headers.get("x-mailbox-daemon-version", "")
    if response.status == 503 and event == "stop":
        raise Restarting("the daemon is shutting down")
    if response.status != 200:
        return 0, "stdout", "", version
    code = response.headers.get("x-hook-exit", "0")
    stream = response.headers.get("x-hook-stream", "stdout")
    lease, name = response.headers.get("x-mailbox-lease"), response.headers.get("x-mailbox-lease-name")
    if lease and name:
        _unacknowledged.append((url, name, lease))
    return (2 if code == "2" else 0), stream, response.body.decode("utf-8", "replace"), version


# Leases of mail relayed but not yet printed: (daemon url, mailbox, lease id).
_unacknowledged: list[tuple[str, str, str]] = []


def acknowledge() -> None:
    """After the hook's output is written and flushed: tell the daemon the mail was delivered. A hook
    killed before this loses nothing (the lease expires and the mail comes back); a failed ack can
    only show the mail once more, never lose it."""
    while _unacknowledged:
        url, name, lease = _unacknowledged.pop()
        try:  # noqa: SIM105 - contextlib is one import more on every prompt
            http_request(
                url,
                "POST",
                f"/v1/ack?name={name}",
                body=f'{{"leaseId": "{lease}"}}'.encode(),
                headers={"Content-Type": "application/json", "X-Mailbox": name, **auth.auth_header()},
                timeout=2.0,
            )
        except Exception:  # a hook never fails
            pass


def run(event: str, data: bytes, *, url: str | None = None, mailbox: str | None = None) -> tuple[int, str, str]:
    """Relay one hook event (also used by the CLI's `session-announce`); never raises
    DaemonUnreachable. `url` overrides the located daemon address."""
    located = url or daemon_url()
    if event == "stop":
        from claude_mailbox import stopwaiter

        return stopwaiter.wait(lambda at: relay("stop", data, at, None)[:3], located)
    try:
        code, stream, text, version = relay(event, data, located, TIMEOUTS.get(event, 5.0), mailbox)
    except DaemonUnreachable as exc:
        if event != "session-start":
            return 0, "stdout", ""  # never slow a prompt down for a daemon that is not there
        if isinstance(exc, NotOurDaemon):  # it got no token (issue 20.1); starting ours would not help
            return 0, "stdout", _foreign_holder(located, answered=True, unproven=True) or OFFLINE_LINE
        if isinstance(exc, TlsFailed):  # a daemon runs there, untrusted: starting one would not help
            return 0, "stdout", f"claude-mailbox: mail is offline in this session, so it has no mailbox tools: {exc}"
        return _session_start_slow(data, url, mailbox)
    if event == "session-start" and not version:  # something answered, but not a mailbox daemon
        return 0, "stdout", _foreign_holder(located, answered=True) or ""
    if event == "session-start" and version and version != __version__:
        # The running daemon has registered and announced the session: keep that reply (relaying
        # again would lose a /clear rename note) and add what the version sync did.
        return code, stream, _with_note(text, _bring_up(version))
    return code, stream, text


def _session_start_slow(data: bytes, url: str | None, mailbox: str | None) -> tuple[int, str, str]:
    """Daemon down: start it (updating its environment if the plugin is newer), then announce."""
    note = _bring_up(None)
    located = url or daemon_url()  # re-located: a daemon started just now may have written a new daemon.url
    try:
        _, stream, text, version = relay("session-start", data, located, TIMEOUTS["session-start"], mailbox)
    except NotOurDaemon:
        return 0, "stdout", _foreign_holder(located, answered=True, unproven=True) or OFFLINE_LINE
    except DaemonUnreachable:
        return 0, "stdout", _with_note(_foreign_holder(located, answered=False) or OFFLINE_LINE, note)
    if not version:
        return 0, "stdout", _foreign_holder(located, answered=True) or ""
    return 0, stream, _with_note(text, note)


def _foreign_holder(url: str, answered: bool, unproven: bool = False) -> str | None:
    """The SessionStart line when another program holds the daemon's port (`answered`: it answered
    HTTP without being a mailbox daemon; `unproven`: it could not prove it holds the token), else
    None. Rare: may import psutil."""
    try:
        import site

        site.main()  # psutil names the holder where it is installed
        from claude_mailbox import portholder
        from claude_mailbox.locate import Endpoint

        found = portholder.holder(Endpoint.parse(url).port)
        if found is not None and found[2] and not unproven:
            return None  # our own daemon, still starting or stuck: the offline line says what to do
        if found is None and not answered:
            return None  # nothing is known to hold it
        return portholder.foreign_port_line(url, found[:2] if found else None)
    except Exception:  # a hook never fails: the offline line still goes out
        return None


def _bring_up(running_version: str | None) -> str | None:
    """lifecycle.bring_up (start, or update to this plugin's version); its one-line note or None."""
    try:
        import site

        site.main()  # the slow path may need site-packages (psutil for autostart)
        from claude_mailbox.setup import lifecycle

        return lifecycle.bring_up(running_version)
    except Exception:  # no psutil, no service manager: still say that mail is offline
        return None


def _with_note(text: str, note: str | None) -> str:
    if not note:
        return text
    from claude_mailbox.setup import lifecycle

    return lifecycle.with_note(text, note)


def main(argv: list[str]) -> None:
    """`hook.py EVENT`: relay stdin, print the answer, acknowledge the mail in it, exit."""
    code, stream, text = 0, "stdout", ""
    try:
        event = argv[0] if argv else ""
        if event == "post-tool" and os.environ.get(BETWEEN_TOOLS_ENV) == "0":
            os._exit(0)  # turned off for this session: not even a request
        data = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read(MAX_STDIN + 1)
        code, stream, text = run(event, data)
    except BaseException:
        code, text = 0, ""
    if text:
        out = sys.stderr if stream == "stderr" else sys.stdout
        try:
            out.write(text if text.endswith("\n") else text + "\n")
            out.flush()
            acknowledge()  # only once the mail is out
        except (OSError, ValueError):
            pass
    os._exit(code)  # skips interpreter teardown: ~10 ms saved on every prompt
