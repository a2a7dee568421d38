"""The `claude-mailbox` command. Thin: parse arguments, call the client (or start the daemon),
print. Exit codes: 0 ok, 1 error, 2 daemon unreachable, 3 `watch --block` timed out.

Only `serve` imports the daemon's heavy modules (aiohttp, mcp, apsw); every other verb starts
in tens of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from claude_mailbox import __version__, locate, paths, textsafe
from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import DaemonUnreachable, InvalidInput, MailboxError

EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3
EPILOG = """exit codes: 0 ok, 1 error (a one-line message says which), 2 daemon unreachable,
3 watch --block timed out without mail.
Every verb accepts --url (default: $CLAUDE_MAILBOX_URL, then the running daemon's address,
then config.toml, then http://127.0.0.1:37849)."""

VERB_EXITS = "exit codes: 0 ok, 1 error (a one-line message on stderr says which), 2 daemon unreachable."
HOOK_EXITS = "exit code: always 0 (a hook must never break the Claude Code session); prints nothing on failure."
LOCAL_EXITS = "exit codes: 0 ok, 1 error (a one-line message on stderr says which). Does not need the daemon."
SETUP_EXITS = "exit codes: 0 ok, 1 error (a one-line message on stderr says which)."

Command = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit 1 (argparse's own exit 2 means "daemon
    unreachable" here)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def client(args: argparse.Namespace, timeout: float = 5.0) -> MailboxClient:
    return MailboxClient(locate.daemon_url(args.url), timeout=timeout)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Fields in `data` come from other processes (names, project dirs): a control character, bidi
    override or line separator in one is printed escaped, never acted on by the terminal."""
    if getattr(args, "json", False):
        print(textsafe.dumps(data, indent=2))
    else:
        print("\n".join(textsafe.clean(line) for line in text.split("\n")))


def quoted(body: str) -> str:
    """Bodies are printed as JSON strings: a body cannot fake a second message or sender line."""
    return textsafe.quote(body)


# --- verbs -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from claude_mailbox import config, listen

    settings = config.with_overrides(
        config.load(Path(args.config) if args.config else None),
        port=args.port,
        bind=args.bind,
        db_path=Path(args.db_path).expanduser() if args.db_path else None,
        database_url=args.database_url,
    )
    # Every file the daemon writes is this user's alone, wherever db_path points (issue 20.2): SQLite
    # creates the database, -wal and -shm files under the umask; the ones it finds are tightened.
    os.umask(0o077)
    from claude_mailbox import fsutil

    for private in (paths.log_file(), paths.pid_file(), paths.url_file()):
        fsutil.make_private(private)
    if settings.auth == "token":  # before listening: a client that connects must find the token file
        from claude_mailbox import auth

        auth.ensure_token(locate.data_dir())
    # Listen before importing aiohttp, mcp and apsw: a client that connects while they load (Claude
    # Code's MCP connection during a lazy start) waits in the backlog instead of being refused.
    sock = listen.listen(settings)
    from claude_mailbox import server

    code = server.run(settings, sock)
    # The database and the URL file are closed by now. Skip the interpreter's module-by-module teardown
    # of mcp, pydantic and aiohttp: it took 0.15-0.9 s on every stop and restart (bench/daemon.py).
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_send(args: argparse.Namespace) -> int:
    from claude_mailbox import identity

    identity.validate_name(args.sender, "--from")  # the daemon would blame the X-Mailbox header
    body = sys.stdin.read() if args.body == "-" else args.body
    result = client(args).send(args.sender, args.to, body, urgent=args.urgent)
    urgent = "urgent " if args.urgent else ""
    emit(args, result, f"sent {urgent}message #{result['id']} from {result['from']} to {result['to']}")
    return EXIT_OK


def cmd_peek(args: argparse.Namespace) -> int:
    result = client(args).peek(args.name)
    oldest = f" (oldest {result['oldestAt']})" if result.get("oldestAt") else ""
    emit(args, result, f"{args.name}: {result['pending']} pending{oldest}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    if args.hook:
        return _check_as_hook(args)
    from claude_mailbox import identity

    identity.validate_name(args.name, "--name")  # the daemon would blame the X-Mailbox header
    mailbox_client = client(args)
    first = True
    while True:  # page by page (each answer is bounded by the daemon's max_response_bytes)
        result = mailbox_client.check(args.name, manual=True)
        lease = result.pop("leaseId", None)
        result.pop("leaseExpiresAt", None)
        lines = [
            f"Message #{m['id']} from {m['from']} at {m['createdAt']}: {quoted(m['body'])}" for m in result["messages"]
        ]
        if lines or first:
            emit(args, result, "\n".join(lines) if lines else f"{args.name}: no new mail")
            sys.stdout.flush()
        if lease:
            mailbox_client.ack(args.name, lease)  # only once the page is out: a killed check loses nothing
        first = False
        if not result["messages"] or not result["remaining"]:
            return EXIT_OK


def _check_as_hook(args: argparse.Namespace) -> int:
    """`check --hook`: the UserPromptSubmit hook for a fixed name (`install-hook`). Goes through the
    same daemon endpoint as the plugin's hook, so the same 10,000-character cap, rendering and
    overflow note apply. Never fails the prompt."""
    data = _hook_stdin()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("session_id"), str):
        data = json.dumps({"session_id": "cli-check-hook", "hook_event_name": "UserPromptSubmit"}).encode()
    return _relay_hook("prompt-submit", data, args)


def cmd_session_announce(args: argparse.Namespace) -> int:
    """The SessionStart hook for a fixed name (`install-hook`): registers the session and prints
    its announcement, exactly like the plugin's hook (starting the daemon if it is down)."""
    return _relay_hook("session-start", _hook_stdin(), args)


def _hook_stdin() -> bytes:
    from claude_mailbox.hookrelay import MAX_STDIN

    try:
        return b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read(MAX_STDIN + 1)
    except (OSError, ValueError):
        return b""


def _relay_hook(event: str, data: bytes, args: argparse.Namespace) -> int:
    """Run one hook event through hookrelay (the plugin's code path); print its output; exit 0."""
    from claude_mailbox import hookrelay

    try:
        _, stream, text = hookrelay.run(event, data, url=args.url, mailbox=args.name)
    except Exception:  # a hook must never break the Claude Code session
        return EXIT_OK
    if text:
        out = sys.stderr if stream == "stderr" else sys.stdout
        print(text, file=out, flush=True)
        hookrelay.acknowledge()
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    result = client(args).list(args.name)
    rows = [
        f"{box['name']:<32} {box['state']:<7} {box['pending']:>5} pending  last seen {box['lastSeen']}"
        + (f"  -> {box['aliasOf']}" if box.get("aliasOf") else "")
        + (f"  {textsafe.clean(box['projectDir'])}" if box.get("projectDir") else "")  # a newline stays one row
        for box in result["mailboxes"]
    ]
    emit(args, result, "\n".join(rows) if rows else "no mailboxes yet")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Daemon state and version, plugin version, port, database, autostart, this session's mailbox,
    mailboxes with pending counts and liveness (status.py). Exit 2 when the daemon is down."""
    from claude_mailbox.setup import status

    data = status.gather(args.url, getattr(args, "session", None) or session_id_from_env())
    emit(args, data, status.render(data))
    return EXIT_OK if data["state"] == "Running" else EXIT_UNREACHABLE


def cmd_doctor(args: argparse.Namespace) -> int:
    from claude_mailbox.setup import doctor

    return doctor.main(yes=args.yes, as_json=args.json, prefix=args.prefix, url=args.url, resume=args.resume)


def cmd_install_autostart(args: argparse.Namespace) -> int:
    """Register the daemon with the service manager (or start it detached where there is none) on
    the resolved address."""
    from claude_mailbox.setup import autostart

    url = locate.daemon_url(args.url)
    result = autostart.install(autostart.default_python(), url)
    data = {"mechanism": result.mechanism.value, "location": result.location, "changed": result.changed, "url": url}
    emit(args, data, result.message)
    return EXIT_OK


def cmd_uninstall_autostart(args: argparse.Namespace) -> int:
    from claude_mailbox.setup import autostart

    message = autostart.uninstall(purge=args.purge)
    emit(args, {"message": message, "purged": args.purge}, message)
    return EXIT_OK


START_WAIT_SECONDS = 15.0  # a first start on a slow machine imports aiohttp and mcp (about 2 s here)


def cmd_start(args: argparse.Namespace) -> int:
    """Start the daemon at the resolved address, as a session start would: through the service
    manager when autostart is registered, else as a detached process."""
    from claude_mailbox.client import probe_health
    from claude_mailbox.locate import Endpoint
    from claude_mailbox.setup import autostart

    url = locate.daemon_url(args.url)
    if probe_health(url, timeout=2.0) is not None:
        emit(args, {"url": url, "started": False}, f"the daemon at {url} is already running")
        return EXIT_OK
    if not Endpoint.parse(url).is_loopback:
        raise MailboxError(f"the daemon at {url} runs on another machine: start it there")
    if not autostart.ensure_running(url, autostart.default_python(), wait=START_WAIT_SECONDS):
        raise DaemonUnreachable(f"the daemon at {url} did not start; see its log {paths.log_file()}")
    emit(args, {"url": url, "started": True}, f"started the daemon at {url}")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the daemon this data dir started (service manager or detached process). One started by
    hand (`claude-mailbox serve`) is not ours to stop: it is named, and left running."""
    from claude_mailbox.client import probe_health
    from claude_mailbox.setup import autostart

    url = locate.daemon_url(args.url)
    was_running = probe_health(url, timeout=2.0) is not None
    registered = autostart.installed_mechanism()
    autostart.stop()
    if probe_health(url, timeout=2.0) is not None:
        raise MailboxError(
            f"the daemon at {url} was not started by this data dir's autostart (`claude-mailbox serve` by hand, "
            "or another data dir): stop it where it runs"
        )
    again = (
        f"; {registered.value} starts it again at login, and so does the next Claude Code session"
        if registered
        else "; the next Claude Code session starts it again"
    )
    text = (f"stopped the daemon at {url}" if was_running else f"no daemon runs at {url}") + again
    emit(args, {"url": url, "stopped": was_running}, text)
    return EXIT_OK


def cmd_update(args: argparse.Namespace) -> int:
    """The version sync on demand (after `claude plugin update`): see lifecycle.update."""
    from claude_mailbox.setup import lifecycle

    result = lifecycle.update(Path(args.root) if args.root else None, args.url, pull=args.pull)
    emit(args, result, str(result["message"]))
    return EXIT_OK if result["ok"] else EXIT_ERROR


def session_id_from_env() -> str | None:
    return os.environ.get("CLAUDE_CODE_SESSION_ID") or os.environ.get("CLAUDE_SESSION_ID") or None


def current_mailbox(args: argparse.Namespace) -> str:
    """This session's mailbox: asked of the daemon (it knows renames), else derived from the id."""
    from claude_mailbox import identity

    session_id = getattr(args, "session", None) or session_id_from_env()
    if not session_id:
        raise InvalidInput("no Claude Code session here: pass --session ID (or run this inside Claude Code)")
    try:
        return client(args, timeout=2.0).whoami(session_id)
    except DaemonUnreachable:
        raise
    except MailboxError:
        prefix = os.environ.get("CLAUDE_MAILBOX_NAME")
        if not prefix:
            from claude_mailbox import config

            prefix = config.load().prefix
        return identity.session_mailbox(session_id, prefix)


def cmd_whoami(args: argparse.Namespace) -> int:
    name = current_mailbox(args)
    emit(args, {"name": name}, name)
    return EXIT_OK


def _settings_file(args: argparse.Namespace) -> Path:
    from claude_mailbox.setup import settings_patch

    return settings_patch.settings_path(project=args.scope == "project")


def cmd_install_hook(args: argparse.Namespace) -> int:
    from claude_mailbox.setup import settings_patch

    result = settings_patch.install(_settings_file(args), args.name, url=args.url)
    state = "installed" if result.changed else "already installed"
    emit(
        args,
        {"path": str(result.path), "changed": result.changed, "name": args.name},
        f"claude-mailbox hooks (SessionStart, UserPromptSubmit) for mailbox {args.name} {state} in {result.path}",
    )
    return EXIT_OK


def cmd_uninstall_hook(args: argparse.Namespace) -> int:
    from claude_mailbox.setup import settings_patch

    result = settings_patch.uninstall(_settings_file(args))
    text = (
        f"removed {result.count} claude-mailbox hook(s) from {result.path}"
        if result.changed
        else f"no claude-mailbox hooks in {result.path}"
    )
    emit(args, {"path": str(result.path), "changed": result.changed, "removed": result.count}, text)
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """The seed's `watch --block` contract: exactly one event, then exit."""
    if not args.block:
        raise InvalidInput("watch needs --block (it waits for exactly one event and exits)")
    mailbox_client = client(args)
    # DaemonUnreachable: one stderr line, exit 2
    result = mailbox_client.watch(args.name, args.timeout, manual=True)
    if result["event"] == "mail":
        for message in result["messages"]:
            print(f"[Claude-Mailbox] Mail from {textsafe.clean(message['from'])}: {quoted(message['body'])}")
        sys.stdout.flush()
        if result.get("leaseId"):
            mailbox_client.ack(args.name, result["leaseId"])  # printed first: a killed watcher loses nothing
        return EXIT_OK
    if result["event"] == "renamed":
        print(f"[Claude-Mailbox] Mailbox renamed to '{result['newName']}'")
        return EXIT_OK
    if result["event"] == "shutdown":
        raise DaemonUnreachable(f"the mailbox daemon at {mailbox_client.url} shut down during the wait")
    return EXIT_TIMEOUT


TAIL_WAIT_SECONDS = 25  # one feed long-poll; the daemon answers at once when mail is sent


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow all mail as it is sent, like `tail -f`. Reads the feed (GET /v1/feed): never consumes,
    and wakes on the daemon's answer to a long-poll, not by polling the database."""
    from urllib.parse import urlencode

    from claude_mailbox import identity, textsafe

    mailbox_client = client(args, timeout=TAIL_WAIT_SECONDS + 10.0)  # sends the token
    filters = {"name": identity.validate_name(args.name, "--name")} if args.name else {}
    if args.since:
        from datetime import UTC, datetime, timedelta

        moment = datetime.now(UTC) - timedelta(days=parse_days(args.since))
        filters["since"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        after = 0  # everything since then, page by page, then follow
    else:
        after = int(mailbox_client.call("GET", f"/v1/feed?{urlencode({**filters, 'limit': '0'})}")["last"])
    while True:
        query = urlencode({**filters, "after": str(after), "wait": str(TAIL_WAIT_SECONDS), "limit": "500"})
        answer = mailbox_client.call("GET", f"/v1/feed?{query}")
        for message in answer["messages"]:
            if args.json:
                print(textsafe.dumps(message))
            else:
                urgent = " (urgent)" if message.get("urgent") else ""
                line = f"{message['createdAt']} {message['from']} -> {message['to']}{urgent}: "
                print(line + textsafe.quote(message["body"]) + ("" if message["read"] else "  (unread)"))
        sys.stdout.flush()
        after = int(answer["last"])


def cmd_open(args: argparse.Namespace) -> int:
    """Print the login link of the web page (the token rides in the fragment, which browsers never
    send to a server) and open it in the browser."""
    from claude_mailbox import auth

    url = locate.resolve(args.url)[0]
    mailbox_client = MailboxClient(url, timeout=5.0)
    mailbox_client.health()  # DaemonUnreachable (also one that cannot prove it holds the token): one line, exit 2
    mailbox_client.list()  # a refused token (401) fails here, in one line, not later in the page
    token = auth.read_token()
    link = f"{url}/#token={token}" if token else f"{url}/"
    print(link, flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(link)
    return EXIT_OK


def cmd_collaborate(args: argparse.Namespace) -> int:
    name = args.name or current_mailbox(args)
    mailbox_client = client(args)
    if args.state == "status":
        result = mailbox_client.call("GET", f"/v1/collaborate?name={quote(name)}")
    else:
        result = mailbox_client.call(
            "POST", "/v1/collaborate", payload={"name": name, "on": args.state == "on"}, mailbox=name
        )
    state = "on" if result["collaborating"] else "off"
    text = f"collaboration mode is {state} for {name}"
    if args.state == "status" and result["collaborating"]:
        text += (
            "; its Stop-hook waiter is waiting for mail"
            if result.get("stopWaiter")
            else "; no Stop-hook waiter yet (one starts when the current turn ends)"
        )
    emit(args, result, text)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """The daemon deletes (POST /v1/prune): the client side never opens the database (issue 9.2)."""
    days = parse_days(args.delivered_older_than)
    # DaemonUnreachable: one stderr line, exit 2 (start it with `claude-mailbox serve` or the doctor)
    count = client(args, timeout=60.0).prune(days, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    emit(args, {"deleted": count, "dryRun": args.dry_run}, f"{verb} {count} delivered message(s); pending mail kept")
    return EXIT_OK


def cmd_import_sqlite(args: argparse.Namespace) -> int:
    """Copy this machine's SQLite mailbox into PostgreSQL, once (setup/importer.py): the move to
    several machines. Reads the config as `serve` does; the daemon on that file must be stopped."""
    from claude_mailbox import config
    from claude_mailbox.errors import ConfigError
    from claude_mailbox.hooktext import counted
    from claude_mailbox.setup import importer

    loaded = config.load()
    settings = config.with_overrides(loaded, database_url=args.database_url)
    if not settings.database_url:
        raise ConfigError(
            "no PostgreSQL database to import into: pass --database-url postgresql://user@host:port/dbname "
            "or set database_url in config.toml"
        )
    source = Path(args.source).expanduser() if args.source else settings.database
    result = importer.run(
        source,
        settings.database_url,
        host=settings.host_id,
        daemon_url=locate.daemon_url(args.url),
        connect_timeout=settings.database_connect_timeout_seconds,
    )
    configured = loaded.database_url is not None and args.database_url in (None, loaded.database_url)
    next_step = (
        "start the daemon (config.toml names this database)"
        if configured
        else "set database_url in config.toml and start the daemon"
    )
    if result.recovered:
        text = (
            f"{source} had been copied into {result.database} at {result.imported_at} by a run that stopped "
            f"before noting it; noted now, nothing copied twice; {next_step}"
        )
    else:
        text = (
            f"imported {counted(result.mailboxes, 'mailbox', 'mailboxes')} "
            f"({counted(result.sessions, 'session')}), {result.pending} pending and "
            f"{counted(result.delivered, 'delivered message')}, {counted(result.keys, 'idempotency key')} "
            f"from {source} into {result.database}; {next_step}"
        )
    emit(args, result.to_json(), text)
    return EXIT_OK


MAX_AGE_DAYS = 36_500


def parse_days(text: str) -> float:
    """`30d`, `12h`, `90m` or a bare number of days."""
    units = {"d": 1.0, "h": 1 / 24, "m": 1 / 1440}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        value = float(number)
    except ValueError:
        raise InvalidInput(f"cannot read {text!r} as an age: use e.g. 30d, 12h or 90m") from None
    if not 0 <= value * units[unit] <= MAX_AGE_DAYS:  # also false for nan
        raise InvalidInput(f"the age must be between 0 and {MAX_AGE_DAYS} days, not {text!r}")
    return value * units[unit]


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="claude-mailbox",
        description="A mailbox for parallel Claude Code sessions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"claude-mailbox {__version__}")
    common = Parser(add_help=False)
    common.add_argument("--url", help="daemon address (default: config, then http://127.0.0.1:37849)")
    readable = Parser(add_help=False, parents=[common])
    readable.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def verb(
        name: str, run: Command, help_text: str, *, json_output: bool = True, exits: str = VERB_EXITS
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=exits,
            parents=[readable if json_output else common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.set_defaults(run=run)
        return command

    serve = verb(
        "serve",
        cmd_serve,
        "run the daemon in the foreground",
        json_output=False,
        exits="exit codes: 0 stopped, 1 error.",
    )
    serve.add_argument("--port", type=int, help=f"TCP port (default {paths.DEFAULT_PORT}; 0 picks a free one)")
    serve.add_argument("--bind", help="address to listen on (default 127.0.0.1; beyond loopback: token + TLS)")
    serve.add_argument("--db-path", help="database file (default: mailbox.db in the data dir)")
    serve.add_argument(
        "--database-url",
        help="postgresql://user@host:port/dbname: keep the mail in PostgreSQL, shared by daemons on several machines",
    )
    serve.add_argument("--config", help="config file (default: config.toml in the data dir)")

    send = verb("send", cmd_send, "send a message")
    send.add_argument("--from", dest="sender", required=True, help="your mailbox name")
    send.add_argument("--to", required=True, help="the recipient's mailbox name")
    send.add_argument("--body", required=True, help="the message text, or - to read it from stdin")
    send.add_argument(
        "--urgent", action="store_true", help="deliver at once: between tool calls, or wake an idle session"
    )

    verb("peek", cmd_peek, "count pending mail without reading it").add_argument("--name", required=True)
    check = verb("check", cmd_check, "read (and mark delivered) all pending mail")
    check.add_argument("--name", required=True)
    check.add_argument(
        "--hook",
        action="store_true",
        help="act as a UserPromptSubmit hook: read its stdin, print the mail as additionalContext (within "
        "Claude Code's 10,000-character cap), always exit 0",
    )
    verb("list", cmd_list, "list mailboxes with pending counts and liveness").add_argument(
        "--name", help="your mailbox name (registers presence)"
    )
    verb(
        "status",
        cmd_status,
        "daemon state and version, plugin version, port, database, autostart, this session's mailbox, "
        "mailboxes with pending counts and liveness",
    ).add_argument("--session", help="session id (default: from the Claude Code environment)")
    doctor = verb(
        "doctor",
        cmd_doctor,
        "check the set-up (Python, the daemon in its managed environment, autostart, name prefix, a smoke "
        "test) and fix what is wrong, after asking",
        exits="exit codes: 0 everything ok or fixed, 1 a check failed (its fix line says what to do).",
    )
    doctor.add_argument("--yes", "-y", action="store_true", help="fix without asking")
    doctor.add_argument("--prefix", metavar="NAME", help="base of session mailbox names, e.g. backend ('' removes it)")
    doctor.add_argument("--resume", help=argparse.SUPPRESS)  # the hand-over to the managed environment
    update = verb(
        "update",
        cmd_update,
        "bring the daemon to the newest installed plugin version: reinstall its managed environment from "
        "that plugin, restart it (run after `claude plugin update`)",
        exits="exit codes: 0 the daemon runs the plugin's version, 1 it does not (the message says why).",
    )
    update.add_argument("--root", help="plugin source tree (default: the newest installed copy of this plugin)")
    update.add_argument(
        "--pull",
        action="store_true",
        help="first run `claude plugin marketplace update` and `claude plugin update` (where `claude` is available)",
    )
    verb("whoami", cmd_whoami, "this Claude Code session's mailbox name").add_argument("--session", help="session id")

    watch = verb(
        "watch",
        cmd_watch,
        "wait for exactly one event: mail (0), rename (0), timeout (3)",
        json_output=False,
        exits="exit codes: 0 mail or rename, 1 error, 2 daemon unreachable, 3 timed out without mail.",
    )
    watch.add_argument("--block", action="store_true", help="wait for one event, then exit (required)")
    watch.add_argument("--name", required=True)
    watch.add_argument("--timeout", type=float, default=25.0, help="seconds to wait (default 25)")

    tail = verb(
        "tail",
        cmd_tail,
        "follow all mail as it is sent, one line per message (reads only: nothing is marked read)",
        exits="exit codes: 1 error, 2 daemon unreachable (runs until interrupted: 130).",
    )
    tail.add_argument("--name", help="only mail from or to this mailbox")
    tail.add_argument("--since", metavar="AGE", help="first show the mail of the last AGE, e.g. 10m, 2h, 1d")
    verb(
        "open",
        cmd_open,
        "print the web page's login link (with the token) and open it in the browser",
        json_output=False,
    ).add_argument("--no-browser", action="store_true", help="only print the link")

    collaborate = verb("collaborate", cmd_collaborate, "turn collaboration mode (wake on mail) on or off")
    collaborate.add_argument("state", nargs="?", default="on", choices=["on", "off", "status"], help="default: on")
    collaborate.add_argument("--name", help="mailbox (default: this session's)")
    collaborate.add_argument("--session", help="session id (default: from the Claude Code environment)")

    announce = verb(
        "session-announce",
        cmd_session_announce,
        "SessionStart hook: read the hook's stdin JSON, register the session, print its announcement",
        json_output=False,
        exits=HOOK_EXITS,
    )
    announce.add_argument("--name", help="fixed mailbox name (default: derived from the session id)")

    for verb_name, run, what in (
        ("install-hook", cmd_install_hook, "add claude-mailbox's SessionStart and UserPromptSubmit hooks to"),
        ("uninstall-hook", cmd_uninstall_hook, "remove claude-mailbox's hooks (and nothing else) from"),
    ):
        patch = verb(
            verb_name,
            run,
            f"{what} ~/.claude/settings.json (--user, default) or ./.claude/settings.json (--project); "
            "for use without the plugin",
            exits=LOCAL_EXITS,
        )
        if verb_name == "install-hook":
            patch.add_argument("--name", required=True, help="the mailbox name this user's sessions read")
        scope = patch.add_mutually_exclusive_group()
        scope.add_argument("--user", dest="scope", action="store_const", const="user", help="~/.claude/settings.json")
        scope.add_argument(
            "--project", dest="scope", action="store_const", const="project", help="./.claude/settings.json"
        )
        patch.set_defaults(scope="user")

    verb(
        "install-autostart",
        cmd_install_autostart,
        "start the daemon at login (systemd user unit, launchd agent, Windows logon task; a detached "
        "process where none is usable) and start it now",
        exits=SETUP_EXITS,
    )
    verb("start", cmd_start, "start the daemon now, as a session start would", exits=VERB_EXITS)
    verb("stop", cmd_stop, "stop the daemon until something starts it again (not one run by hand)", exits=SETUP_EXITS)
    uninstall = verb("uninstall-autostart", cmd_uninstall_autostart, "stop the daemon, remove its autostart entry")
    uninstall.add_argument("--purge", action="store_true", help="also delete the data dir (mail, config, token)")
    uninstall.epilog = SETUP_EXITS

    prune = verb(
        "prune",
        cmd_prune,
        "delete delivered mail older than an age; pending mail is never pruned (the daemon does it)",
    )
    prune.add_argument("--delivered-older-than", required=True, metavar="AGE", help="e.g. 30d, 12h")
    prune.add_argument("--dry-run", action="store_true", help="count only")

    importing = verb(
        "import-sqlite",
        cmd_import_sqlite,
        "copy this machine's SQLite mailbox (mailboxes, sessions, pending and delivered mail, idempotency "
        "keys) into PostgreSQL in one transaction, once, when moving to several machines; stop the daemon first",
        exits=SETUP_EXITS + " Refuses a second run and a daemon still running on the file.",
    )
    importing.add_argument(
        "--database-url", help="postgresql://user@host:port/dbname (default: database_url in config.toml)"
    )
    importing.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        help="the SQLite file (default: db_path in config.toml, else mailbox.db in the data dir)",
    )
    return parser


def _holder_of(exc: MailboxError, args: argparse.Namespace) -> str:
    """For a listener that could not prove it holds the token: who it is, where known."""
    from claude_mailbox.httpclient import NotOurDaemon

    if not isinstance(exc, NotOurDaemon):
        return ""
    from claude_mailbox import portholder
    from claude_mailbox.locate import Endpoint

    try:
        port = Endpoint.parse(locate.daemon_url(getattr(args, "url", None))).port
        found = portholder.holder(port)
        known = portholder.who(port, found[:2] if found else None)
    except Exception:  # naming it is a courtesy: the message above already says what happened
        return ""
    return f" ({known})" if known else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except MailboxError as exc:
        print(f"claude-mailbox: {exc.message}{_holder_of(exc, args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except OSError as exc:  # a file the verb needed: one line, no traceback
        print(f"claude-mailbox: {exc}", file=sys.stderr)
        return EXIT_ERROR
