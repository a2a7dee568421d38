"""End to end: the real Claude Code CLI (2.1.330, scripts/install-tools.sh) with this repo loaded as a
plugin (`--plugin-dir`), its hooks and MCP server talking to a real daemon, and the model replaced
by tests/fake_anthropic.py on loopback. Missing CLI: skipped locally, a failure under CI.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_code import ClaudeResult, ClaudeStream, run_claude
from claude_mailbox import hooktext, identity
from fake_anthropic import FakeAnthropic, tool_use
from harness import Daemon, run_cli
from plugin_env import REPO, make_managed_venv

pytestmark = pytest.mark.claude_code

SEND = "mcp__plugin_claude-mailbox_mailbox__send"
ALLOWED = ["mcp__plugin_claude-mailbox_mailbox__*"]


@pytest.fixture
def api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


class World:
    """One daemon, one fake API, one user home; runs Claude Code sessions against them."""

    def __init__(self, tmp_path: Path, daemon: Daemon, api: FakeAnthropic, binary: Path) -> None:
        self.daemon = daemon
        self.api = api
        self.binary = binary
        self.home = tmp_path / "home"
        self.project = tmp_path / "project"
        self.project.mkdir()
        plugin_data = tmp_path / "plugin-data"
        make_managed_venv(plugin_data)
        self.env = {
            "CLAUDE_MAILBOX_URL": daemon.url,
            "CLAUDE_MAILBOX_HOME": str(daemon.home),
            "CLAUDE_PLUGIN_DATA": str(plugin_data),
        }

    def run(self, prompt: str, *extra: str) -> ClaudeResult:
        result = run_claude(
            prompt,
            fake_api_url=self.api.url,
            plugin_dir=REPO,
            home=self.home,
            cwd=self.project,
            env_extra=self.env,
            allowed_tools=ALLOWED,
            extra_args=extra,
            binary=self.binary,
            timeout=90,
        )
        assert result.returncode == 0 and not result.timed_out, result.explain()
        return result

    def stream(self, *extra: str) -> ClaudeStream:
        return ClaudeStream(
            fake_api_url=self.api.url,
            home=self.home,
            plugin_dir=REPO,
            cwd=self.project,
            env_extra=self.env,
            allowed_tools=ALLOWED,
            extra_args=extra,
            binary=self.binary,
        )

    def boxes(self) -> dict[str, dict[str, Any]]:
        return {b["name"]: b for b in self.daemon.client().list()["mailboxes"]}


@pytest.fixture
def world(tmp_path: Path, daemon: Daemon, api: FakeAnthropic, claude_bin: Path) -> World:
    return World(tmp_path, daemon, api, claude_bin)


def contexts(api: FakeAnthropic, kind: str) -> list[str]:
    """Hook context blocks as Claude Code labels them ("SessionStart", "UserPromptSubmit")."""
    text = api.injected_context()
    return re.findall(rf"{kind}(?::\w+)? hook (?:success|additional context): (.*?)(?=\n\n|\Z)", text, re.S)


def test_session_start_announces_the_mailbox_to_the_model(world: World) -> None:
    session = str(uuid.uuid4())
    world.run("hello", "--session-id", session)
    name = identity.session_mailbox(session)
    (agent_request, *_) = world.api.agent_requests()
    assert f"this session's mailbox name is {name}." in agent_request.text()
    assert f"use the {SEND} tool" in world.api.injected_context()
    assert SEND in agent_request.tool_names()  # the MCP server connected, tool named as announced
    box = world.boxes()[name]
    assert box["projectDir"] == str(world.project)
    assert box["state"] == "ended"  # `-p` is over: SessionEnd ran


def test_mail_arrives_with_the_next_prompt_in_one_session(world: World) -> None:
    session = str(uuid.uuid4())
    name = identity.session_mailbox(session)
    with world.stream("--session-id", session) as claude:
        claude.send("first prompt")
        assert claude.wait_for_results(1, 60), claude.stderr
        assert world.boxes()[name]["state"] == "alive"
        sent = run_cli("send", "--from", "peer-b", "--to", name, "--body", 'ship it "now"', env=world.daemon.env())
        assert sent.returncode == 0, sent.stderr
        claude.send("second prompt")
        assert claude.wait_for_results(2, 60), claude.stderr
    mail = [c for c in contexts(world.api, "UserPromptSubmit") if "new message(s)" in c]
    assert len(mail) == 1, world.api.injected_context()
    assert re.search(r'Message #\d+ from peer-b at \S+: "ship it \\"now\\""', mail[0])
    assert "persisted-output" not in mail[0]
    assert world.daemon.client().peek(name)["pending"] == 0
    # Where it landed: the request of the second turn, not the first.
    first, *later = world.api.agent_requests()
    assert "ship it" not in first.text() and any("ship it" in r.text() for r in later)


def test_resume_delivers_mail_that_arrived_while_closed(world: World) -> None:
    session = str(uuid.uuid4())
    name = identity.session_mailbox(session)
    world.run("hello", "--session-id", session)
    assert world.boxes()[name]["state"] == "ended"
    world.daemon.client().send("peer-b", name, "sent while you were away")
    world.run("back again", "--resume", session)
    assert any("1 unread message for this session is waiting" in c for c in contexts(world.api, "SessionStart")), (
        world.api.injected_context()
    )
    assert any('"sent while you were away"' in c for c in contexts(world.api, "UserPromptSubmit"))
    assert world.daemon.client().peek(name)["pending"] == 0
    assert f"mailbox name is {name}." in world.api.injected_context()


def test_model_sends_without_from_and_the_daemon_knows_who(world: World) -> None:
    """The fake model calls the send tool with only {to, body}; Claude Code calls the daemon; the
    daemon maps the headersHelper's pid to the session: the message is from this session."""
    session = str(uuid.uuid4())
    name = identity.session_mailbox(session)
    world.api.enqueue(tool_use(SEND, {"to": "peer-b", "body": "hello from the model"}), "done")
    world.run("tell peer-b hello", "--session-id", session)
    (result,) = world.api.tool_results()
    assert not result.get("is_error"), result
    assert "peer-b" in result["text"]
    (message,) = world.daemon.client().check("peer-b")["messages"]
    assert message["from"] == name
    assert message["body"] == "hello from the model"


def test_clear_keeps_mail_and_identity(world: World) -> None:
    """`/clear` in a live session: new session id, same process. Mail waiting for the old mailbox
    and mail sent to the old name afterwards reach the new one; MCP sends come from the new name."""
    with world.stream() as claude:
        claude.send("first")
        assert claude.wait_for_results(1, 60), claude.stderr
        (old,) = [n for n, b in world.boxes().items() if b["state"] == "alive"]
        world.daemon.client().send("peer-b", old, "waiting across the clear")
        claude.send("/clear")
        assert claude.wait_for_results(2, 60), claude.stderr  # /clear ends with a result event too
        new = _wait_for_new_session(world, old)
        world.daemon.client().send("peer-b", old, "sent to the old name")
        world.api.enqueue(tool_use(SEND, {"to": "peer-b", "body": "after the clear"}), "done")
        claude.send("next")
        assert claude.wait_for_results(3, 60), claude.stderr
    boxes = world.boxes()
    assert boxes[old]["state"] == "alias" and boxes[old]["aliasOf"] == new
    delivered = "\n".join(contexts(world.api, "UserPromptSubmit"))
    assert '"waiting across the clear"' in delivered and '"sent to the old name"' in delivered
    assert f"It was {old} before /clear" in world.api.injected_context()
    (reply,) = world.daemon.client().check("peer-b")["messages"]
    assert reply["from"] == new


def _wait_for_new_session(world: World, old: str, timeout: float = 20.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [n for n, b in world.boxes().items() if b["state"] == "alive" and n != old]
        if alive:
            (new,) = alive
            return new
        time.sleep(0.1)
    raise AssertionError(f"no new session after /clear: {json.dumps(world.boxes(), indent=1)}")


def test_context_stays_under_claude_codes_cap(world: World) -> None:
    """30 KB of pending mail: Claude Code gets the part that fits, inline (not cut to a preview)."""
    session = str(uuid.uuid4())
    name = identity.session_mailbox(session)
    for i in range(30):
        world.daemon.client().send("peer-b", name, f"{i:02d} " + "x" * 1000)
    world.run("hello", "--session-id", session)
    (mail,) = [c for c in contexts(world.api, "UserPromptSubmit") if "new message(s)" in c]
    assert "persisted-output" not in mail
    assert len(mail) < hooktext.CONTEXT_CAP
    left = world.daemon.client().peek(name)["pending"]
    assert 0 < left < 30 and f"{left} more message(s) are waiting" in mail


def test_whoami_from_the_bash_tool(world: World) -> None:
    """The model runs `claude-mailbox whoami` through Claude Code's Bash tool: the environment Claude
    Code gives Bash carries the session id (CLAUDE_CODE_SESSION_ID), so it names this session."""
    session = str(uuid.uuid4())
    command = f"{shlex.quote(sys.executable)} -m claude_mailbox whoami"
    world.api.enqueue(tool_use("Bash", {"command": command, "description": "who am I"}), "done")
    result = run_claude(
        "who am I?",
        fake_api_url=world.api.url,
        plugin_dir=REPO,
        home=world.home,
        cwd=world.project,
        env_extra=world.env,
        allowed_tools=[*ALLOWED, "Bash"],
        extra_args=("--session-id", session),
        binary=world.binary,
        timeout=90,
    )
    assert result.returncode == 0, result.explain()
    (tool_result,) = world.api.tool_results()
    assert tool_result["text"].strip() == identity.session_mailbox(session), tool_result
