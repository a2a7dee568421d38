"""The real Claude Code CLI with a daemon that speaks HTTPS (issue 13.2, a remote daemon): its hooks
(Python, CLAUDE_MAILBOX_CA) and its own MCP connection (Node, NODE_EXTRA_CA_CERTS) both trust a
self-signed certificate they are pointed at, and only then. Model replaced by tests/fake_anthropic.py.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from claude_code import require_claude, run_claude
from claude_mailbox import identity
from claude_mailbox.client import MailboxClient
from fake_anthropic import FakeAnthropic, tool_use
from harness import Daemon
from plugin_env import REPO, make_managed_venv
from test_remote import cert, tls_daemon  # noqa: F401 (fixtures: a self-signed certificate, a daemon using it)

pytestmark = [
    pytest.mark.claude_code,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary"),
]

SEND = "mcp__plugin_claude-mailbox_mailbox__send"


def _session(tmp_path: Path, daemon: Daemon, url: str, trust: dict[str, str], api: FakeAnthropic) -> tuple[str, str]:
    """One `claude -p` session on another machine than the daemon's (its own data dir, holding the
    daemon's token copied there by hand, as the README says) against `url`; the model sends peer-b a
    message. Returns the session's mailbox name and what the hooks put into the model's context.
    The token goes in the file, not only in $CLAUDE_MAILBOX_TOKEN: Claude Code withholds variables
    named like secrets from the headersHelper, so MCP would go without it."""
    laptop = tmp_path / "laptop"
    laptop.mkdir(mode=0o700, exist_ok=True)
    token_file = laptop / "token"
    token_file.write_text(f"{daemon.token}\n", encoding="utf-8")
    token_file.chmod(0o600)
    plugin_data = tmp_path / "plugin-data"
    if not plugin_data.exists():
        make_managed_venv(plugin_data)
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    session = str(uuid.uuid4())
    api.enqueue(tool_use(SEND, {"to": "peer-b", "body": "sent over TLS"}), "done")
    env = {
        "CLAUDE_MAILBOX_URL": url,
        "CLAUDE_MAILBOX_HOME": str(laptop),
        "CLAUDE_PLUGIN_DATA": str(plugin_data),
        **trust,
    }
    result = run_claude(
        "tell peer-b",
        fake_api_url=api.url,
        plugin_dir=REPO,
        home=tmp_path / "home",
        cwd=project,
        env_extra=env,
        allowed_tools=["mcp__plugin_claude-mailbox_mailbox__*"],
        extra_args=("--session-id", session),
        binary=require_claude(),
        timeout=90,
        debug_file=tmp_path / "claude-debug.log",
    )
    assert result.returncode == 0 and not result.timed_out, result.explain()
    return identity.session_mailbox(session), api.injected_context()


def test_claude_code_sends_through_a_tls_daemon_it_is_told_to_trust(
    tmp_path: Path,
    tls_daemon: Daemon,  # noqa: F811 (the imported fixture)
    cert: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"https://localhost:{tls_daemon.port}"
    monkeypatch.setenv("CLAUDE_MAILBOX_CA", str(cert[0]))  # for this test's own client
    reader = MailboxClient(url, token=tls_daemon.token or "")
    trust = {"CLAUDE_MAILBOX_CA": str(cert[0]), "NODE_EXTRA_CA_CERTS": str(cert[0])}
    with FakeAnthropic() as api:
        name, context = _session(tmp_path, tls_daemon, url, trust, api)
        (result,) = api.tool_results()
    assert f"this session's mailbox name is {name}." in context  # SessionStart reached it over https
    assert not result.get("is_error"), result  # Claude Code's MCP connection, Node's TLS
    (message,) = reader.check("peer-b")["messages"]
    assert (message["from"], message["body"]) == (name, "sent over TLS")


def test_without_the_certificate_nothing_is_sent_and_the_session_still_runs(
    tmp_path: Path,
    tls_daemon: Daemon,  # noqa: F811
    cert: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not told to trust the self-signed certificate: the hooks say nothing (never break the session),
    no mailbox tool is offered, and the daemon receives nothing."""
    url = f"https://localhost:{tls_daemon.port}"
    monkeypatch.setenv("CLAUDE_MAILBOX_CA", str(cert[0]))
    reader = MailboxClient(url, token=tls_daemon.token or "")
    before = reader.peek("peer-b")["pending"]
    with FakeAnthropic() as api:
        name, context = _session(tmp_path, tls_daemon, url, {}, api)
        (result,) = api.tool_results()
    assert f"this session's mailbox name is {name}." not in context
    assert result.get("is_error"), result  # the tool is not there (or could not reach the daemon)
    assert reader.peek("peer-b")["pending"] == before
