"""The hook process: relay Claude Code's hook stdin to the daemon and print what it renders.

This runs before every prompt, so its fast path imports nothing but `os`, `sys` and the raw-socket
`httpclient` module (the interpreter runs with -I -S: no site-packages, no user path). Everything the
hook says is decided by the daemon. Every path ends in exit 0, except the Stop waiter's exit 2
that wakes Claude with new mail; no exception ever reaches Claude Code.

Slow paths (daemon down at SessionStart, version mismatch) may import more; they are rare.
"""

from __future__ import annotations

import os
import sys

from claude_mailbox import __version__, auth
from claude_mailbox.errors import DaemonUnreachable
from claude_mailbox.httpclient import ConnectionRefused, TlsFailed, http_request
from claude_mailbox.locate import daemon_url

MAX_STDIN = 1024 * 1024
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ash", "busybox", "fish"})
TIMEOUTS = {"session-start": 5.0, "prompt-submit": 5.0, "session-end": 0.8}
STOP_RECONNECT_SECONDS = 60.0  # a Stop waiter rides out a daemon restart (version sync) this long
STOP_RETRY_SECONDS = 0.5
MCP_START_WAIT = 3.0  # the headersHelper waits this long for a daemon it started to listen
STOP_WAITED_SECONDS = 1.0  # a Stop relay refused sooner never got to wait: the daemon is not running
# Said when the daemon could not be reached at SessionStart: Claude Code then offers no mailbox tools
# for the session's life, so the line must not point the model at one.
OFFLINE_LINE = (
    "claude-mailbox: mail is offline in this session (the mailbox daemon is not running), so it has no mailbox "
    "tools; the user can set it up and start it with /claude-mailbox:mailbox-doctor"
)


class Restarting(DaemonUnreachable):
    """The daemon answered 503 to a waiting Stop hook: it is stopping, and a new one may follow."""


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
        return _stop(data, located)
    try:
        code, stream, text, version = relay(event, data, located, TIMEOUTS.get(event, 5.0), mailbox)
    except DaemonUnreachable as exc:
        if event != "session-start":
            return 0, "stdout", ""  # never slow a prompt down for a daemon that is not there
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
    except DaemonUnreachable:
        return 0, "stdout", _with_note(_foreign_holder(located, answered=False) or OFFLINE_LINE, note)
    if not version:
        return 0, "stdout", _foreign_holder(located, answered=True) or ""
    return 0, stream, _with_note(text, note)


def _foreign_holder(url: str, answered: bool) -> str | None:
    """The SessionStart line when another program holds the daemon's port (`answered`: it answered
    HTTP without being a mailbox daemon), else None. Rare: may import psutil."""
    try:
        import site

        site.main()  # psutil names the holder where it is installed
        from claude_mailbox import portholder
        from claude_mailbox.httpclient import Endpoint

        found = portholder.holder(Endpoint.parse(url).port)
        if found is not None and found[2]:
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


def one_shot_print_run(pid: int) -> bool:
    """Is Claude Code a plain `claude -p` run? It exits after this turn: it holds its exit for up to
    30 s for a pending async hook, and an asyncRewake exit 2 then starts no turn (the mail would be
    consumed and never shown). `-p` with `--input-format stream-json` is a live session: it wakes."""
    if os.environ.get("CLAUDE_CODE_SESSION_ATTENDED") != "0":
        return False  # interactive
    args = _command_line(pid)
    if "--" in args:
        args = args[: args.index("--")]
    live = "stream-json" in args and ("--input-format" in args or "--input-format=stream-json" in args)
    return ("-p" in args or "--print" in args) and not live


def _command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode("utf-8", "replace").split("\0")
    except OSError:
        pass
    import subprocess  # no /proc (macOS)

    try:
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, timeout=2)
        return out.stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []


def _stop(data: bytes, url: str) -> tuple[int, str, str]:
    """The asyncRewake Stop waiter. Returns at once unless this session is collaborating."""
    import time

    if one_shot_print_run(claude_pid()):
        return 0, "stdout", ""
    deadline = None  # counted from the first failure: a waiter may have waited for hours before it
    while True:
        started = time.monotonic()
        try:
            code, stream, text, _ = relay("stop", data, url, None)
            return code, stream, text
        except DaemonUnreachable as exc:
            now = time.monotonic()
            if deadline is None:
                if isinstance(exc, ConnectionRefused) and now - started < STOP_WAITED_SECONDS:
                    # No daemon at all: nothing to wait on. Lingering would also hold up the exit of
                    # `claude -p`, which waits for pending async hooks.
                    return 0, "stdout", ""
                # It was waiting and the daemon went away (killed, or 503: shutting down): find the next one.
                deadline = now + STOP_RECONNECT_SECONDS
            if now > deadline:
                return 0, "stdout", ""
            time.sleep(STOP_RETRY_SECONDS)
            url = daemon_url()


def headers_helper() -> str:
    """For .mcp.json's headersHelper: tell the daemon which Claude Code process is calling, with the
    daemon's token. Runs just before each MCP connect: a daemon that is down is started here too, so
    that the connect finds a listening socket (and waits in its backlog) instead of being refused
    (issue 11.1); the token file exists before that socket listens."""
    _listening_daemon(daemon_url())
    token = auth.read_token()  # after the start above: a first start creates it
    bearer = f', "Authorization": "{auth.SCHEME} {token}"' if token else ""
    return f'{{"X-Mailbox-Claude-Pid": "{claude_pid()}"{bearer}}}'


def _listening_daemon(url: str) -> None:
    """Start the daemon if nothing listens at `url`, and wait (at most MCP_START_WAIT seconds) until
    its socket listens. Claude Code waits for a connect that was accepted; a refused one it retries
    once, and in `claude -p` it does not wait for the retry: the session then has no mailbox tools.
    The SessionStart hook, running at the same time, may start it too (autostart's lock keeps it to
    one). Version updates stay with SessionStart."""
    import socket
    import time

    from claude_mailbox.httpclient import Endpoint

    try:
        endpoint = Endpoint.parse(url)
    except Exception:
        return

    def listening() -> bool:
        with socket.socket(socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET) as probe:
            probe.settimeout(0.2)
            return probe.connect_ex((endpoint.host.replace("localhost", "127.0.0.1"), endpoint.port)) == 0

    if listening():
        return
    import contextlib

    # Whatever goes wrong here, still wait below: the SessionStart hook may be starting it right now.
    with contextlib.suppress(Exception):
        import site

        site.main()  # autostart needs psutil
        from claude_mailbox import paths
        from claude_mailbox.setup import autostart, lifecycle

        # The managed venv is found through CLAUDE_PLUGIN_DATA, which Claude Code leaves out of a
        # headersHelper's environment: hooks/run sets it from the command's --plugin-data (.mcp.json).
        if not (paths.venv_python(paths.managed_venv_dir()).exists() or lifecycle.can_run_daemon_here()):
            return  # a fresh install without the daemon's packages: SessionStart says what to do
        autostart.ensure_running(None, None, wait=0.0)  # at the resolved address
    deadline = time.monotonic() + MCP_START_WAIT
    while not listening() and time.monotonic() < deadline:
        time.sleep(0.02)


def run_cli(args: list[str]) -> int:
    """`hooks/run cli ARGS`: the claude-mailbox CLI from the plugin's own source, for plugin commands
    and skills on machines where `claude-mailbox` is not on PATH. Its output is its own."""
    try:
        import site

        site.main()
        from claude_mailbox.cli import main as cli_main

        return cli_main(args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # one line, not a traceback, and a failing exit code
        if sys.version_info < (3, 11):  # noqa: UP036 - hooks/run may find any python3: say what to install
            version = ".".join(str(part) for part in sys.version_info[:3])
            print(
                f"claude-mailbox: Python {version} ({sys.executable}) is too old; install Python 3.11 or newer "
                "(https://www.python.org/downloads/), then run /claude-mailbox:mailbox-doctor",
                file=sys.stderr,
            )
            return 1
        print(f"claude-mailbox: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        import contextlib

        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


def main(argv: list[str]) -> None:
    code, stream, text = 0, "stdout", ""
    try:
        event = argv[0] if argv else ""
        if event == "headers":
            text = headers_helper()
        elif event == "cli":
            code = run_cli(argv[1:])
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
            acknowledge()  # only once the mail is out
        except (OSError, ValueError):
            pass
    os._exit(code)  # skips interpreter teardown: ~10 ms saved on every prompt
