"""Mail reaches a busy session between tool calls (issue 22), end to end with the real Claude Code
CLI and a fake Messages API.

The scripted session runs three Bash tool calls. The second waits for a go file, so the test sends
its mail after the first tool call has finished and before the second ends; the plugin's
PostToolUse hook hands the mail over, and the fake API sees it in the request that follows the
second tool call, once.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from claude_code import run_claude
from fake_anthropic import FakeAnthropic, RecordedRequest, text, tool_use
from harness import REPO, Daemon

pytestmark = [pytest.mark.claude_code, pytest.mark.slow]

BODY = 'BUSY_E2E_51f2: stop, I am changing that API "now"'


def go_wait(go: Path) -> str:
    """A Bash command that ends once `go` exists (at most 60 s)."""
    return f"for i in $(seq 600); do [ -e {shlex.quote(str(go))} ] && break; sleep 0.1; done; echo waited"


def three_tool_calls(go: Path) -> list:
    return [
        tool_use("Bash", {"command": "echo first", "description": "first"}),
        tool_use("Bash", {"command": go_wait(go), "description": "second"}),
        tool_use("Bash", {"command": "echo third", "description": "third"}),
        text("done"),
    ]


def request_text(request: RecordedRequest) -> str:
    return request.text()


def test_mail_sent_mid_task_arrives_after_the_next_tool_call_once(
    claude_bin: Path, daemon: Daemon, tmp_path: Path
) -> None:
    env = {"CLAUDE_MAILBOX_HOME": str(daemon.home), "CLAUDE_MAILBOX_URL": daemon.url}
    go = tmp_path / "go"
    client = daemon.client()
    sent: dict = {}
    with FakeAnthropic(three_tool_calls(go)) as api:

        def send_after_first_tool(requests: list[RecordedRequest]) -> bool:
            # The second agent request carries the first tool's result: the first call is done.
            if len([r for r in requests if r.is_agent_turn]) < 2:
                return False
            if not sent:
                (box,) = [b["name"] for b in client.list()["mailboxes"] if b["state"] == "alive"]
                sent.update(client.send("peer", box, BODY))
                go.touch()
            return True

        import threading

        waiter = threading.Thread(target=lambda: api.wait_for(send_after_first_tool, timeout=90), daemon=True)
        waiter.start()
        result = run_claude(
            "do the three steps",
            fake_api_url=api.url,
            plugin_dir=REPO,
            home=tmp_path / "home",
            env_extra=env,
            allowed_tools=["Bash"],
            timeout=120,
            binary=claude_bin,
        )
        waiter.join(5)
    assert result.returncode == 0, result.explain()
    requests = api.agent_requests()
    assert len(requests) == 4, result.explain()
    assert sent, "the mail was never sent"
    line = f"Message #{sent['id']} from peer at {sent['createdAt']}: {json.dumps(BODY)}"
    # Not before the second tool call ended; in the request right after it; never again.
    assert line not in requests[1].text()
    assert line in requests[2].text(), requests[2].text()[-3000:]
    later = requests[3].body["messages"][len(requests[2].body["messages"]) :]
    assert line not in json.dumps(later)
    assert client.peek(sent["to"])["pending"] == 0
    assert [m["id"] for m in client.check(sent["to"])["messages"]] == []  # acknowledged, not just leased
