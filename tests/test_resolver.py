"""One resolver of the daemon's address (issue 9.1, 11.2): flag > $CLAUDE_MAILBOX_URL > daemon.url >
config.toml > default. Each source is set in turn, with every lower source naming a port where
nothing listens, and the CLI (a subprocess), a hook (hooks/run), `status --json` and the doctor's
detached start must all find the same address. Never port 37849: the default is only resolved, never
dialled.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_mailbox import identity, locate
from claude_mailbox.client import MailboxClient, probe_health
from claude_mailbox.setup import autostart, doctor, status
from harness import Daemon, base_env, free_port, run_cli
from plugin_env import hook_env, run_hook, start_input

SOURCES = [locate.FROM_FLAG, locate.FROM_ENV, locate.FROM_URL_FILE, locate.FROM_CONFIG]


def url_of(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def arrange(home: Path, source: str, right: str) -> tuple[dict[str, str], list[str]]:
    """The environment and CLI flags under which `source` names `right` and every source below it
    names a closed port. The daemon.url the running daemon wrote is replaced or removed."""
    wrong = [url_of(free_port()) for _ in range(3)]
    env = base_env(home)
    env.pop("CLAUDE_MAILBOX_URL", None)
    order = SOURCES.index(source)
    flags = ["--url", right] if source == locate.FROM_FLAG else []
    if order <= SOURCES.index(locate.FROM_ENV):
        env["CLAUDE_MAILBOX_URL"] = right if source == locate.FROM_ENV else wrong[0]
    url_file = home / locate.URL_FILE
    if order <= SOURCES.index(locate.FROM_URL_FILE):
        url_file.write_text((right if source == locate.FROM_URL_FILE else wrong[1]) + "\n")
    else:
        url_file.unlink(missing_ok=True)
    config_port = right if source == locate.FROM_CONFIG else wrong[2]
    (home / "config.toml").write_text(f"port = {config_port.rsplit(':', 1)[1]}\n")
    return env, flags


@pytest.fixture
def running(mailbox_home: Path) -> Iterator[Daemon]:
    with Daemon(mailbox_home) as daemon:
        yield daemon


@pytest.mark.parametrize("source", SOURCES)
def test_cli_hook_and_status_agree_on_each_source(mailbox_home: Path, running: Daemon, source: str) -> None:
    env, flags = arrange(mailbox_home, source, running.url)

    shown = run_cli("status", "--json", *flags, env=env)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert (data["url"], data["urlSource"], data["state"]) == (running.url, source, "Running")

    sent = run_cli("send", "--from", "alice", "--to", "bob", "--body", f"via {source}", *flags, env=env)
    assert sent.returncode == 0, sent.stderr
    assert running.client().peek("bob")["pending"] == 1

    session = str(uuid.uuid4())
    if source == locate.FROM_FLAG:  # a hook has no flag: the CLI's hook verb takes --url
        hook = run_cli("session-announce", *flags, env=env, input=json.dumps(start_input(session, "/tmp/p")))
        assert hook.returncode == 0, hook.stderr
    else:
        run = run_hook(
            "session-start",
            start_input(session, "/tmp/p"),
            hook_env(env, url=env.get("CLAUDE_MAILBOX_URL"), claude_pid=None),
        )
        assert run.returncode == 0, run.stderr
    names = {box["name"] for box in running.client().list()["mailboxes"]}
    assert identity.session_mailbox(session) in names


def test_the_default_is_resolved_when_nothing_else_names_an_address(mailbox_home: Path) -> None:
    env = base_env(mailbox_home)
    code = "from claude_mailbox import locate; print(*locate.resolve())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == [locate.DEFAULT_URL, locate.FROM_DEFAULT]
    assert locate.resolve() == (locate.DEFAULT_URL, locate.FROM_DEFAULT)
    assert locate.resolve("http://127.0.0.1:5/") == ("http://127.0.0.1:5", locate.FROM_FLAG)


def test_a_broken_config_does_not_break_resolving(mailbox_home: Path) -> None:
    (mailbox_home / "config.toml").write_text("port = [not toml\n")
    assert locate.resolve() == (locate.DEFAULT_URL, locate.FROM_DEFAULT)


# --- the doctor's detached start (issue 11.2) -----------------------------------------------------


@pytest.fixture
def detached_only() -> Iterator[None]:
    if not sys.platform.startswith("linux") or autostart.user_systemd_available():
        pytest.skip("a user service manager is usable here: the doctor would register a unit, not a detached daemon")
    yield
    autostart.stop()


@pytest.mark.parametrize("source", SOURCES)
def test_the_doctors_detached_start_listens_on_the_resolved_address(
    mailbox_home: Path, monkeypatch: pytest.MonkeyPatch, detached_only: None, source: str
) -> None:
    right = url_of(free_port())
    env, flags = arrange(mailbox_home, source, right)
    monkeypatch.delenv("CLAUDE_MAILBOX_URL", raising=False)
    if "CLAUDE_MAILBOX_URL" in env:
        monkeypatch.setenv("CLAUDE_MAILBOX_URL", env["CLAUDE_MAILBOX_URL"])
    checkup = doctor.Doctor(yes=True, as_json=True, url=flags[1] if flags else None)
    checkup.own_install = Path(sys.executable)  # the daemon runs from this checkout, no managed venv

    check = checkup.check_autostart()

    assert check.status == "fixed", check
    health = probe_health(right, timeout=2.0, detailed=True)
    assert health is not None and health["port"] == int(right.rsplit(":", 1)[1])
    assert f"healthy at {right} (address from {source})" in check.summary
    # status (in-process, same sources) agrees with where the doctor started it
    assert status.gather(flags[1] if flags else None)["url"] == right


def test_env_url_moves_the_doctors_start_off_the_default_port(
    mailbox_home: Path, monkeypatch: pytest.MonkeyPatch, detached_only: None
) -> None:
    """Issue 11.2 as reported: CLAUDE_MAILBOX_URL names a port, config.toml names none."""
    right = url_of(free_port())
    monkeypatch.setenv("CLAUDE_MAILBOX_URL", right)
    checkup = doctor.Doctor(yes=True, as_json=True)
    checkup.own_install = Path(sys.executable)
    assert checkup.check_autostart().status == "fixed"
    assert MailboxClient(right, timeout=2.0).health()["status"] == "ok"
    assert (mailbox_home / "daemon.url").read_text().strip() == right


# --- .mcp.json cannot follow config.toml: status and the doctor say so, with the fix -----------------


def test_status_names_the_mcp_fix_when_config_moves_the_port(mailbox_home: Path) -> None:
    port = free_port()
    (mailbox_home / "config.toml").write_text(f"port = {port}\n")
    env = base_env(mailbox_home)
    shown = run_cli("status", "--json", env=env)
    assert shown.returncode == 2  # nothing runs there
    data = json.loads(shown.stdout)
    assert data["urlSource"] == locate.FROM_CONFIG
    assert f"export CLAUDE_MAILBOX_URL=http://127.0.0.1:{port}" in data["mcpNote"]
    text = run_cli("status", env=env).stdout
    assert f"(address from {locate.FROM_CONFIG})" in text
    assert f"mcp        config.toml puts the daemon at http://127.0.0.1:{port}" in text

    # with the fix applied (the variable in Claude Code's environment) there is nothing to say
    fixed = run_cli("status", "--json", env={**env, "CLAUDE_MAILBOX_URL": f"http://127.0.0.1:{port}"})
    assert json.loads(fixed.stdout)["mcpNote"] is None


def test_mcp_json_reads_only_the_environment_variable() -> None:
    """The note's premise: .mcp.json expands $CLAUDE_MAILBOX_URL with the default port as fallback."""
    repo = Path(__file__).resolve().parent.parent
    server = json.loads((repo / ".mcp.json").read_text())["mcpServers"]["mailbox"]
    assert server["url"] == "${CLAUDE_MAILBOX_URL:-" + status.MCP_DEFAULT_URL + "}/mcp"
