"""The MCP headersHelper (.mcp.json: `hooks/run headers`): the headers of each MCP connect, after
making sure a daemon listens for it.

Runs just before each MCP connect, with -I -S like a hook: stdlib only until the daemon is found down.
"""

from __future__ import annotations

import os
import sys

from claude_mailbox import auth
from claude_mailbox.claudeproc import claude_pid
from claude_mailbox.locate import Endpoint, daemon_url

MCP_START_WAIT = 3.0  # the headersHelper waits this long for a daemon it started to listen


def headers_helper() -> str:
    """Tell the daemon which Claude Code process is calling, with the daemon's token. A daemon that
    is down is started here too, so that the connect finds a listening socket (and waits in its
    backlog) instead of being refused (issue 11.1); the token file exists before that socket listens."""
    url = daemon_url()
    _listening_daemon(url)
    token = auth.read_token()  # after the start above: a first start creates it
    if token:  # printed for Claude Code to send: only once the listener proved it holds it (issue 20.1)
        from claude_mailbox.httpclient import NotOurDaemon, http_request

        try:
            http_request(url, "GET", "/health", prove=token, timeout=3.0)
        except NotOurDaemon as exc:
            sys.stderr.write(f"claude-mailbox: {exc.message}\n")  # Claude Code's debug log shows it
            token = None  # Claude Code connects without it: the squatter gets nothing secret
        except Exception:
            token = None
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

    try:
        endpoint = Endpoint.parse(url)
    except Exception:
        return

    def listening() -> bool:
        with socket.socket(socket.AF_INET6 if endpoint.ipv6 else socket.AF_INET) as probe:
            probe.settimeout(0.2)
            return probe.connect_ex((endpoint.connect_host, endpoint.port)) == 0

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


def main(argv: list[str]) -> None:
    """`hook.py headers`: print the headers (nothing when anything failed) and exit 0."""
    try:
        text = headers_helper()
    except BaseException:  # Claude Code then connects without them; never a traceback
        text = ""
    if text:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)  # like the hooks: no interpreter teardown
