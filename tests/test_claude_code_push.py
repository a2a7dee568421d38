"""Push delivery end to end with the real Claude Code CLI and a fake Messages API.

Session A runs `claude -p --input-format stream-json` (stdin kept open, so the session outlives
its turns, as an interactive one does). The user turns collaboration mode on with the plugin's
`/claude-mailbox:collaborate` command; when the turn ends, the plugin's async Stop hook waits on
the daemon. Session B, a second real Claude Code process, sends A a message with the plugin's MCP
`send` tool. A is woken with no user input: Claude Code sends the fake API a new request that
carries the mail. Then `collaborate off` returns A to next-prompt delivery.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from claude_code import ClaudeStream, run_claude
from fake_anthropic import FakeAnthropic, tool_use
from harness import REPO, Daemon
from pushkit import wait_until

pytestmark = [pytest.mark.claude_code, pytest.mark.slow]

SEND_TOOL = "mcp__plugin_claude-mailbox_mailbox__send"
BODY = 'PUSH_E2E_7c1d: schema merged, please rebase "now"'
LATER = "PUSH_E2E_9e4a: this one waits for the next prompt"


def user_messages_text(request_body: dict[str, object]) -> str:
    """Every text block of the newest user message in a Messages API request."""
    messages = request_body["messages"]
    assert isinstance(messages, list)
    content = messages[-1]["content"]
    blocks = [content] if isinstance(content, str) else [b.get("text", "") for b in content]
    return "\n".join(blocks)


def test_idle_collaborating_session_is_woken_by_a_peer_message(
    claude_bin: Path, daemon: Daemon, tmp_path: Path
) -> None:
    env = {"CLAUDE_MAILBOX_HOME": str(daemon.home), "CLAUDE_MAILBOX_URL": daemon.url}
    client = daemon.client()
    with (
        FakeAnthropic() as api,
        ClaudeStream(fake_api_url=api.url, home=tmp_path / "a", plugin_dir=REPO, env_extra=env, binary=claude_bin) as a,
    ):
        # 1. The user runs the plugin command; it turns collaboration mode on through the plugin's launcher.
        a.send("/claude-mailbox:collaborate")
        assert a.wait_for_results(1, timeout=90), a.debug_log()[-3000:]
        session_id = next(e["session_id"] for e in a.events if e.get("type") == "system" and e.get("subtype") == "init")
        name = client.call("GET", f"/v1/whoami?session={session_id}")["name"]
        assert f"collaboration mode is on for {name}" in api.agent_requests()[0].text()

        # 2. The turn ended: the Stop hook's waiter is attached to the daemon, and nothing else happens.
        def waiter_attached() -> bool:
            return bool(client.call("GET", f"/v1/collaborate?name={name}")["stopWaiter"])

        wait_until(waiter_attached, timeout=30, what="the Stop-hook waiter")
        turns_before = len(api.agent_requests())
        assert turns_before == 1

        # 3. Session B (another real Claude Code) sends A a message with the plugin's MCP tool.
        with FakeAnthropic([tool_use(SEND_TOOL, {"to": name, "body": BODY})]) as peer_api:
            peer = run_claude(
                "tell the other session the schema is merged",
                fake_api_url=peer_api.url,
                plugin_dir=REPO,
                home=tmp_path / "b",
                env_extra=env,
                allowed_tools=["mcp__plugin_claude-mailbox_mailbox__*"],
                timeout=90,
                binary=claude_bin,
            )
            assert peer.returncode == 0, peer.explain()
            sent = json.loads(peer_api.tool_results()[0]["text"])
        assert sent["to"] == name

        # 4. A wakes with no user input: a new turn whose request carries the mail as plain facts.
        assert a.wait_for_results(2, timeout=30), a.debug_log()[-3000:]
        requests = api.agent_requests()
        assert len(requests) == turns_before + 1
        woken = user_messages_text(requests[-1].body)
        assert "claude-mailbox: mail arrived while this session was idle" in woken
        assert f"Message #{sent['id']} from {sent['from']} at " in woken
        assert f": {json.dumps(BODY)}" in woken  # JSON-quoted: the body cannot fake framing
        assert "tell the other session" not in api.all_text()  # B's prompt never reached A
        assert client.peek(name)["pending"] == 0  # consumed once, by the waiter

        # 5. Collaboration off: the waiter ends, mail waits for the next prompt again.
        wait_until(waiter_attached, timeout=30, what="the waiter after the woken turn")
        a.send("/claude-mailbox:collaborate off")
        assert a.wait_for_results(3, timeout=60)
        assert f"collaboration mode is off for {name}" in user_messages_text(api.agent_requests()[-1].body)
        wait_until(lambda: not waiter_attached(), timeout=10, what="the waiter to end")
        client.send("peer", name, LATER)
        time.sleep(1.5)
        assert len(a.results()) == 3  # not woken
        a.send("next prompt")
        assert a.wait_for_results(4, timeout=60)
        assert json.dumps(LATER) in user_messages_text(api.agent_requests()[-1].body)

    # No waiter was left, so Claude Code did not have to wait for an async hook to exit.
    assert a.returncode == 0, a.stderr[-3000:]


def test_plain_print_run_in_collaboration_mode_neither_hangs_nor_eats_mail(
    claude_bin: Path, daemon: Daemon, tmp_path: Path
) -> None:
    """Plain `claude -p` cannot be woken (an asyncRewake exit 2 during its exit starts no turn) and
    waits up to 30 s for a pending async hook before exiting. The waiter sees the one-shot run and
    does not wait: the run exits promptly and later mail stays in the inbox."""
    env = {"CLAUDE_MAILBOX_HOME": str(daemon.home), "CLAUDE_MAILBOX_URL": daemon.url}
    with FakeAnthropic() as api:
        result = run_claude(
            "/claude-mailbox:collaborate",
            fake_api_url=api.url,
            plugin_dir=REPO,
            home=tmp_path / "p",
            env_extra=env,
            timeout=90,
            binary=claude_bin,
        )
    assert result.returncode == 0, result.explain()
    assert result.wall < 20, result.explain()  # not the ~30 s wait for a pending async hook
    (box,) = [b for b in daemon.client().list()["mailboxes"] if b["state"] in ("alive", "ended")]
    assert "collaboration mode is on for " + box["name"] in api.agent_requests()[0].text()
    daemon.client().send("peer", box["name"], "after the run")
    time.sleep(0.5)
    assert daemon.client().peek(box["name"])["pending"] == 1
