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
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_code import ClaudeStream, run_claude
from fake_anthropic import FakeAnthropic, RecordedRequest, text, tool_use
from harness import REPO, Daemon
from pushkit import wait_until

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


def when_started(api: FakeAnthropic, then: Callable[[], None], requests: int = 2) -> threading.Thread:
    """Run `then` once the fake API has seen `requests` agent requests (2: the first tool is done)."""

    def seen(recorded: list[RecordedRequest]) -> bool:
        return len([r for r in recorded if r.is_agent_turn]) >= requests

    def run() -> None:
        if api.wait_for(seen, timeout=90):
            then()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def the_session(daemon: Daemon) -> str:
    (name,) = [b["name"] for b in daemon.client().list()["mailboxes"] if b["state"] == "alive"]
    return str(name)


def mailbox_env(daemon: Daemon) -> dict[str, str]:
    return {"CLAUDE_MAILBOX_HOME": str(daemon.home), "CLAUDE_MAILBOX_URL": daemon.url}


def transcript_errors(home: Path) -> list[str]:
    """Hook errors Claude Code recorded in the session transcript (what the interactive UI shows)."""
    found = []
    for path in (home / ".claude" / "projects").rglob("*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            if '"hook_non_blocking_error"' in line or '"hook_error' in line or '"hook_blocking_error"' in line:
                found.append(line[:400])
    return found


def test_mail_sent_mid_task_arrives_after_the_next_tool_call_once(
    claude_bin: Path, daemon: Daemon, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    client = daemon.client()
    sent: dict = {}

    def send_mail() -> None:  # the first tool call is done; the second waits for `go`
        sent.update(client.send("peer", the_session(daemon), BODY))
        go.touch()

    with FakeAnthropic(three_tool_calls(go)) as api:
        waiter = when_started(api, send_mail)
        result = run_claude(
            "do the three steps",
            fake_api_url=api.url,
            plugin_dir=REPO,
            home=tmp_path / "home",
            env_extra=mailbox_env(daemon),
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


def test_turned_off_for_the_session_the_mail_waits_for_the_next_prompt(
    claude_bin: Path, daemon: Daemon, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    sent: dict = {}

    def send_mail() -> None:
        sent.update(daemon.client().send("peer", the_session(daemon), BODY))
        go.touch()

    with FakeAnthropic(three_tool_calls(go)) as api:
        waiter = when_started(api, send_mail)
        result = run_claude(
            "do the three steps",
            fake_api_url=api.url,
            plugin_dir=REPO,
            home=tmp_path / "home",
            env_extra={**mailbox_env(daemon), "CLAUDE_MAILBOX_BETWEEN_TOOLS": "0"},
            allowed_tools=["Bash"],
            timeout=120,
            binary=claude_bin,
        )
        waiter.join(5)
    assert result.returncode == 0, result.explain()
    assert sent and len(api.agent_requests()) == 4
    assert json.dumps(BODY) not in api.all_text()
    assert daemon.client().peek(sent["to"])["pending"] == 1


KILLED_FIRST = """\
import os, sys, time
sys.path.insert(0, {daemon!r})
from claude_mailbox import hookrelay
marker = {marker!r}
if os.path.exists(marker):
    os.execv({run!r}, [{run!r}, "post-tool"])
data = sys.stdin.buffer.read()
code, stream, text = hookrelay.run("post-tool", data)  # the daemon hands the mail over under a lease
open(marker, "w").write(text)
time.sleep(60)  # hung before printing: Claude Code's hook timeout kills it
"""


def killing_plugin(root: Path, marker: Path) -> Path:
    """The plugin with one change: its first PostToolUse hook takes the mail and hangs until Claude
    Code kills it (hooks.json timeout 2 s); later ones are the real hook."""
    plugin = root / "plugin"
    (plugin / "hooks").mkdir(parents=True)
    shutil.copytree(REPO / ".claude-plugin", plugin / ".claude-plugin")
    (plugin / "daemon").symlink_to(REPO / "daemon")
    for name in ("run", "hook.py"):
        (plugin / "hooks" / name).symlink_to(REPO / "hooks" / name)
    script = plugin / "hooks" / "killed_first.py"
    script.write_text(
        KILLED_FIRST.format(daemon=str(REPO / "daemon"), marker=str(marker), run=str(REPO / "hooks" / "run"))
    )
    spec = json.loads((REPO / "hooks" / "hooks.json").read_text())
    spec["hooks"]["PostToolUse"] = [
        {
            "hooks": [
                {
                    "type": "command",
                    "command": f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}",
                    "timeout": 2,
                }
            ]
        }
    ]
    (plugin / "hooks" / "hooks.json").write_text(json.dumps(spec))
    return plugin


def test_a_hook_killed_before_it_printed_loses_nothing(claude_bin: Path, mailbox_home: Path, tmp_path: Path) -> None:
    home = mailbox_home
    (home / "config.toml").write_text("lease_seconds = 2\n")
    marker = tmp_path / "killed-hook-took"
    go = tmp_path / "go"
    with Daemon(home) as daemon:
        sent: dict = {}

        def send_mail() -> None:  # before the first tool call ends: its (killed) hook takes the mail
            sent.update(daemon.client().send("peer", the_session(daemon), BODY))
            go.touch()

        script = [
            tool_use("Bash", {"command": go_wait(go), "description": "first"}),
            tool_use("Bash", {"command": "sleep 3; echo second", "description": "second, past the lease"}),
            tool_use("Bash", {"command": "echo third", "description": "third"}),
            text("done"),
        ]
        with FakeAnthropic(script) as api:
            waiter = when_started(api, send_mail, requests=1)
            result = run_claude(
                "do the three steps",
                fake_api_url=api.url,
                plugin_dir=killing_plugin(tmp_path, marker),
                home=tmp_path / "home",
                env_extra=mailbox_env(daemon),
                allowed_tools=["Bash"],
                timeout=120,
                binary=claude_bin,
            )
            waiter.join(5)
        assert result.returncode == 0, result.explain()
        requests = api.agent_requests()
        assert len(requests) == 4, result.explain()
        line = f"Message #{sent['id']} from peer at {sent['createdAt']}: {json.dumps(BODY)}"
        took = json.loads(marker.read_text())["hookSpecificOutput"]["additionalContext"]
        assert line in took  # the killed hook had the mail in hand
        assert line not in requests[1].text()  # ... and never printed it
        assert line in requests[2].text()  # back after the lease, delivered by the next tool call's hook
        assert "1 redelivered" in requests[2].text()
        assert daemon.client().peek(sent["to"])["pending"] == 0


def test_urgent_mail_wakes_an_idle_session_and_ordinary_mail_does_not(
    claude_bin: Path, daemon: Daemon, tmp_path: Path
) -> None:
    client = daemon.client()
    with (
        FakeAnthropic() as api,
        # A stream-json session is unattended: it opts in to being held for urgent mail (an interactive
        # session is held by default).
        ClaudeStream(
            fake_api_url=api.url,
            home=tmp_path / "a",
            plugin_dir=REPO,
            env_extra={**mailbox_env(daemon), "CLAUDE_MAILBOX_WAKE_UNATTENDED": "1"},
            binary=claude_bin,
        ) as a,
    ):
        a.send("hello")
        assert a.wait_for_results(1, timeout=90), a.debug_log()[-3000:]
        name = the_session(daemon)

        def waiter_attached() -> bool:
            return bool(client.call("GET", f"/v1/collaborate?name={name}")["stopWaiter"])

        wait_until(waiter_attached, timeout=30, what="the Stop-hook waiter")
        assert client.call("GET", f"/v1/collaborate?name={name}")["collaborating"] is False
        client.send("peer", name, "ORDINARY_22: for the next prompt")
        time.sleep(2)
        assert len(api.agent_requests()) == 1 and len(a.results()) == 1  # not woken
        urgent = client.send("boss", name, "URGENT_22: stop, I am changing that API", urgent=True)
        assert a.wait_for_results(2, timeout=30), a.debug_log()[-3000:]
        woken = api.agent_requests()[-1].text()
        assert "claude-mailbox: urgent mail arrived while this session was idle" in woken
        assert f"Message #{urgent['id']} from boss at {urgent['createdAt']} (urgent): " in woken
        # Claude Code runs UserPromptSubmit for the woken turn: the ordinary mail rides along, once.
        assert woken.count("ORDINARY_22: for the next prompt") == 1
        assert client.peek(name)["pending"] == 0
        a.send("next prompt")
        assert a.wait_for_results(3, timeout=60)
        assert "ORDINARY_22" not in json.dumps(api.agent_requests()[-1].body["messages"][-1])
        started = time.monotonic()
        assert a.close(timeout=60) == 0, a.stderr[-3000:]
    # The price of the opt-in: at its end, Claude Code waits about 30 s for the held Stop hook.
    assert time.monotonic() - started < 45


def test_with_the_daemon_down_every_tool_call_works_and_nothing_is_shown(
    claude_bin: Path, daemon: Daemon, tmp_path: Path
) -> None:
    """The daemon stops after the session started: the three tool calls and their hooks run against a
    closed port. Every tool result arrives, no hook error is recorded, nothing reaches the user."""
    go = tmp_path / "go"

    def stop_daemon() -> None:
        daemon.stop()
        go.touch()

    script = [
        tool_use("Bash", {"command": go_wait(go) + "; echo ONE_22", "description": "first"}),
        tool_use("Bash", {"command": "echo TWO_22", "description": "second"}),
        tool_use("Bash", {"command": "echo THREE_22", "description": "third"}),
        text("done"),
    ]
    home = tmp_path / "home"
    with FakeAnthropic(script) as api:
        waiter = when_started(api, stop_daemon, requests=1)
        result = run_claude(
            "do the three steps",
            fake_api_url=api.url,
            plugin_dir=REPO,
            home=home,
            env_extra=mailbox_env(daemon),
            allowed_tools=["Bash"],
            timeout=120,
            binary=claude_bin,
            extra_args=["--output-format", "stream-json", "--verbose"],
        )
        waiter.join(5)
    assert result.returncode == 0, result.explain()
    outputs = [r["text"] for r in api.tool_results()]
    assert len(outputs) == 3 and [o.splitlines()[-1] for o in outputs] == ["ONE_22", "TWO_22", "THREE_22"], outputs
    assert transcript_errors(home) == []
    assert "hook" not in result.stderr.lower()
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert not [e for e in events if "error" in json.dumps(e).lower() and "hook" in json.dumps(e).lower()]
