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
from typing import Any

from claude_mailbox import __version__, locate, paths
from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import DaemonUnreachable, InvalidInput, MailboxError
from claude_mailbox.messages import Message

EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3
EPILOG = """exit codes: 0 ok, 1 error (a one-line message says which), 2 daemon unreachable,
3 watch --block timed out without mail.
Every verb accepts --url (default: $CLAUDE_MAILBOX_URL, then the running daemon's address,
then config.toml, then http://127.0.0.1:37849)."""

Command = Callable[[argparse.Namespace], int]


def default_url() -> str:
    """--url default: $CLAUDE_MAILBOX_URL, else the running daemon's address, else the configured
    bind/port, else the built-in default."""
    known = os.environ.get("CLAUDE_MAILBOX_URL") or locate.running_daemon_url()
    if known:
        return known
    if paths.config_path().is_file() or paths.legacy_config_path().is_file():
        from claude_mailbox import config

        try:
            return config.load().url.replace("://0.0.0.0:", "://127.0.0.1:")
        except MailboxError:
            pass  # a broken config is reported by the verbs that need it, not by every call
    return paths.DEFAULT_URL


def client(args: argparse.Namespace, timeout: float = 5.0) -> MailboxClient:
    return MailboxClient(args.url or default_url(), timeout=timeout)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False) if getattr(args, "json", False) else text)


def quoted(body: str) -> str:
    """Bodies are printed as JSON strings: a body cannot fake a second message or sender line."""
    return json.dumps(body, ensure_ascii=False)


# --- verbs -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from claude_mailbox import config, server

    settings = config.with_overrides(
        config.load(Path(args.config) if args.config else None),
        port=args.port,
        bind=args.bind,
        db_path=Path(args.db_path).expanduser() if args.db_path else None,
    )
    return server.run(settings)


def cmd_send(args: argparse.Namespace) -> int:
    body = sys.stdin.read() if args.body == "-" else args.body
    result = client(args).send(args.sender, args.to, body)
    emit(args, result, f"sent message #{result['id']} from {result['from']} to {result['to']}")
    return EXIT_OK


def cmd_peek(args: argparse.Namespace) -> int:
    result = client(args).peek(args.name)
    oldest = f" (oldest {result['oldestAt']})" if result.get("oldestAt") else ""
    emit(args, result, f"{args.name}: {result['pending']} pending{oldest}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    if args.hook:
        return _check_as_hook(args)
    result = client(args).check(args.name)
    lines = [
        f"Message #{m['id']} from {m['from']} at {m['createdAt']}: {quoted(m['body'])}" for m in result["messages"]
    ]
    emit(args, result, "\n".join(lines) if lines else f"{args.name}: no new mail")
    return EXIT_OK


def _check_as_hook(args: argparse.Namespace) -> int:
    """`check --hook`: the legacy UserPromptSubmit hook for a fixed name. Never fails the prompt."""
    from claude_mailbox import hooks

    try:
        result = client(args, timeout=2.0).check(args.name, max_chars=hooks.mail_budget())
    except MailboxError:
        return EXIT_OK
    messages = [Message.from_json(m, args.name) for m in result["messages"]]
    if messages or result["remaining"]:
        print(hooks.context_output("UserPromptSubmit", hooks.mail_context(messages, result["remaining"])))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    result = client(args).list(args.name)
    rows = [
        f"{box['name']:<32} {box['state']:<7} {box['pending']:>5} pending  last seen {box['lastSeen']}"
        + (f"  -> {box['aliasOf']}" if box.get("aliasOf") else "")
        + (f"  {box['projectDir']}" if box.get("projectDir") else "")
        for box in result["mailboxes"]
    ]
    emit(args, result, "\n".join(rows) if rows else "no mailboxes yet")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    mailbox_client = client(args, timeout=2.0)
    try:
        health = mailbox_client.health()
    except DaemonUnreachable as exc:
        emit(args, {"state": "Stopped", "url": mailbox_client.url}, f"Stopped: {exc.message}")
        return EXIT_UNREACHABLE
    boxes = mailbox_client.list()["mailboxes"]
    data = {"state": "Running", "url": mailbox_client.url, **health, "mailboxes": boxes}
    lines = [
        f"Running: claude-mailbox {health['version']} at {mailbox_client.url}",
        f"database: {health['dbPath']}",
        f"mailboxes: {len(boxes)}",
    ]
    lines += [f"  {box['name']:<32} {box['state']:<7} {box['pending']:>5} pending" for box in boxes]
    emit(args, data, "\n".join(lines))
    return EXIT_OK


def session_id_from_env() -> str | None:
    return os.environ.get("CLAUDE_CODE_SESSION_ID") or os.environ.get("CLAUDE_SESSION_ID") or None


def current_mailbox(args: argparse.Namespace) -> str:
    """This session's mailbox: asked of the daemon (it knows renames), else derived from the id."""
    from claude_mailbox import identity

    session_id = getattr(args, "session", None) or session_id_from_env()
    if not session_id:
        raise InvalidInput("no Claude Code session here: pass --session ID (or run this inside Claude Code)")
    try:
        return str(client(args, timeout=2.0).call("GET", f"/v1/whoami?session={session_id}")["name"])
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


def cmd_watch(args: argparse.Namespace) -> int:
    """The seed's `watch --block` contract: exactly one event, then exit."""
    if not args.block:
        raise InvalidInput("watch needs --block (it waits for exactly one event and exits)")
    try:
        result = client(args).watch(args.name, args.timeout)
    except DaemonUnreachable:
        return EXIT_UNREACHABLE
    if result["event"] == "mail":
        for message in result["messages"]:
            print(f"[Claude-Mailbox] Mail from {message['from']}: {quoted(message['body'])}")
        return EXIT_OK
    if result["event"] == "renamed":
        print(f"[Claude-Mailbox] Mailbox renamed to '{result['newName']}'")
        return EXIT_OK
    if result["event"] == "shutdown":
        return EXIT_UNREACHABLE
    return EXIT_TIMEOUT


def cmd_collaborate(args: argparse.Namespace) -> int:
    name = args.name or current_mailbox(args)
    mailbox_client = client(args)
    if args.state == "status":
        result = mailbox_client.call("GET", f"/v1/collaborate?name={name}")
    else:
        result = mailbox_client.call("POST", "/v1/collaborate", payload={"name": name, "on": args.state == "on"})
    state = "on" if result["collaborating"] else "off"
    emit(args, result, f"collaboration mode is {state} for {name}")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from claude_mailbox import config
    from claude_mailbox.store import Store, iso_before

    days = parse_days(args.delivered_older_than)
    settings = config.load(Path(args.config) if args.config else None)
    store = Store(settings.database, durability=settings.durability, busy_timeout_ms=settings.busy_timeout_ms)
    try:
        count = store.prune(iso_before(days * 86400), dry_run=args.dry_run)
    finally:
        store.close()
    verb = "would delete" if args.dry_run else "deleted"
    emit(args, {"deleted": count, "dryRun": args.dry_run}, f"{verb} {count} delivered message(s); pending mail kept")
    return EXIT_OK


def parse_days(text: str) -> float:
    """`30d`, `12h`, `90m` or a bare number of days."""
    units = {"d": 1.0, "h": 1 / 24, "m": 1 / 1440}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        value = float(number)
    except ValueError:
        raise InvalidInput(f"cannot read {text!r} as an age: use e.g. 30d, 12h or 90m") from None
    if value < 0:
        raise InvalidInput("the age must not be negative")
    return value * units[unit]


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claude-mailbox",
        description="A mailbox for parallel Claude Code sessions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"claude-mailbox {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="daemon address (default: config, then http://127.0.0.1:37849)")
    readable = argparse.ArgumentParser(add_help=False, parents=[common])
    readable.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def verb(name: str, run: Command, help_text: str, *, json_output: bool = True) -> argparse.ArgumentParser:
        command = sub.add_parser(
            name, help=help_text, description=help_text, parents=[readable if json_output else common]
        )
        command.set_defaults(run=run)
        return command

    serve = verb("serve", cmd_serve, "run the daemon in the foreground", json_output=False)
    serve.add_argument("--port", type=int, help=f"TCP port (default {paths.DEFAULT_PORT}; 0 picks a free one)")
    serve.add_argument("--bind", help="address to listen on (loopback only; default 127.0.0.1)")
    serve.add_argument("--db-path", help="database file (default: mailbox.db in the data dir)")
    serve.add_argument("--config", help="config file (default: config.toml in the data dir)")

    send = verb("send", cmd_send, "send a message")
    send.add_argument("--from", dest="sender", required=True, help="your mailbox name")
    send.add_argument("--to", required=True, help="the recipient's mailbox name")
    send.add_argument("--body", required=True, help="the message text, or - to read it from stdin")

    verb("peek", cmd_peek, "count pending mail without reading it").add_argument("--name", required=True)
    check = verb("check", cmd_check, "read (and mark delivered) all pending mail")
    check.add_argument("--name", required=True)
    check.add_argument("--hook", action="store_true", help="print as UserPromptSubmit hook output; never fail")
    verb("list", cmd_list, "list mailboxes with pending counts and liveness").add_argument(
        "--name", help="your mailbox name (registers presence)"
    )
    verb("status", cmd_status, "is the daemon up; version, database, mailboxes")
    verb("whoami", cmd_whoami, "this Claude Code session's mailbox name").add_argument("--session", help="session id")

    watch = verb("watch", cmd_watch, "wait for exactly one event: mail (0), rename (0), timeout (3)", json_output=False)
    watch.add_argument("--block", action="store_true", help="wait for one event, then exit (required)")
    watch.add_argument("--name", required=True)
    watch.add_argument("--timeout", type=float, default=25.0, help="seconds to wait (default 25)")

    collaborate = verb("collaborate", cmd_collaborate, "turn collaboration mode (wake on mail) on or off")
    collaborate.add_argument("state", choices=["on", "off", "status"])
    collaborate.add_argument("--name", help="mailbox (default: this session's)")
    collaborate.add_argument("--session", help="session id (default: from the Claude Code environment)")

    prune = verb("prune", cmd_prune, "delete delivered mail older than an age; pending mail is never pruned")
    prune.add_argument("--delivered-older-than", required=True, metavar="AGE", help="e.g. 30d, 12h")
    prune.add_argument("--dry-run", action="store_true", help="count only")
    prune.add_argument("--config", help="config file (default: config.toml in the data dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except MailboxError as exc:
        print(f"claude-mailbox: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
