"""Smoke test of the offline harness: the real Claude Code CLI against the fake Messages API.

A throwaway plugin prints markers from SessionStart (plain stdout) and UserPromptSubmit
(JSON additionalContext); the fake API must see both in the request Claude Code sends.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from claude_code import ClaudeStream, run_claude
from fake_anthropic import FakeAnthropic, tool_use

pytestmark = pytest.mark.claude_code

START_MARKER = "HARNESS_SESSIONSTART_MARKER_7f3a"
PROMPT_MARKER = "HARNESS_PROMPT_CONTEXT_MARKER_91bc"


def _probe_plugin(root: Path) -> Path:
    """A minimal plugin named `probe` whose hooks print markers and log their stdin."""
    (root / ".claude-plugin").mkdir(parents=True)
    (root / ".claude-plugin" / "plugin.json").write_text(
        json.dumps({"name": "probe", "version": "0.0.1", "description": "harness probe"})
    )
    hook = root / "hooks" / "probe_hook.py"
    hook.parent.mkdir()
    hook.write_text(
        "import json, os, sys\n"
        "event = sys.argv[1]\n"
        "data = json.load(sys.stdin)\n"
        "log = os.path.join(os.environ['CLAUDE_PLUGIN_ROOT'], 'events.jsonl')\n"
        "with open(log, 'a') as f:\n"
        "    f.write(json.dumps({'event': event, 'stdin': data, 'claude_pid': os.environ.get('CLAUDE_PID')}) + '\\n')\n"
        "if event == 'SessionStart':\n"
        f"    print({START_MARKER!r})\n"
        "elif event == 'UserPromptSubmit':\n"
        "    print(json.dumps({'hookSpecificOutput': {'hookEventName': 'UserPromptSubmit',\n"
        f"                      'additionalContext': {PROMPT_MARKER!r}}}}}))\n"
    )
    py = shlex.quote(sys.executable)

    def cmd(event: str) -> list[dict[str, object]]:
        return [
            {
                "hooks": [
                    {
                        "type": "command",
                        "command": f'{py} "${{CLAUDE_PLUGIN_ROOT}}/hooks/probe_hook.py" {event}',
                        "timeout": 10,
                    }
                ]
            }
        ]

    (root / "hooks" / "hooks.json").write_text(
        json.dumps(
            {
                "description": "harness probe",
                "hooks": {ev: cmd(ev) for ev in ("SessionStart", "UserPromptSubmit", "SessionEnd")},
            }
        )
    )
    return root


def test_hooks_reach_fake_api(claude_bin: Path, tmp_path: Path) -> None:
    plugin = _probe_plugin(tmp_path / "plugin")
    with FakeAnthropic() as api:
        res = run_claude(
            "hello harness",
            plugin_dir=plugin,
            home=tmp_path / "home",
            fake_api_url=api.url,
            timeout=60,
            binary=claude_bin,
        )
        assert res.returncode == 0, res.explain()
        assert res.stdout.strip() == "ok", res.explain()

        agent = api.agent_requests()
        assert len(agent) == 1, [r.path for r in api.requests]
        assert "hello harness" in agent[0].text()
        context = api.injected_context()
        assert START_MARKER in context, res.explain()
        assert PROMPT_MARKER in context, res.explain()

    events = [json.loads(line) for line in (plugin / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names[:2] == ["SessionStart", "UserPromptSubmit"], names
    assert events[0]["stdin"]["source"] == "startup"
    assert events[1]["stdin"]["prompt"] == "hello harness"
    # SessionEnd shares a short budget; a slow interpreter start may lose it, so only check it if present.
    if "SessionEnd" in names:
        assert events[names.index("SessionEnd")]["stdin"]["reason"] == "other"
    session_ids = {e["stdin"]["session_id"] for e in events}
    assert len(session_ids) == 1


def test_tool_use_round_trip(claude_bin: Path, tmp_path: Path) -> None:
    """A scripted tool_use runs a real tool; its tool_result comes back in the next request."""
    home = tmp_path / "home"
    project = tmp_path / "project"
    project.mkdir()
    (project / "note.txt").write_text("CONTENT_OF_NOTE_4d2e\n")
    with FakeAnthropic([tool_use("Read", {"file_path": str(project / "note.txt")})]) as api:
        res = run_claude(
            "read the note",
            home=home,
            cwd=project,
            fake_api_url=api.url,
            allowed_tools=["Read"],
            timeout=60,
            binary=claude_bin,
        )
        assert res.returncode == 0, res.explain()
        assert api.pending == 0
        assert len(api.agent_requests()) == 2, res.explain()
        results = api.tool_results()
        assert len(results) == 1, results
        assert "CONTENT_OF_NOTE_4d2e" in results[0]["text"]


def test_async_rewake_starts_a_turn_in_a_live_session(claude_bin: Path, tmp_path: Path) -> None:
    """A Stop hook with async+asyncRewake that exits 2 wakes a live (stream-json) session:
    Claude Code sends a new request whose system reminder carries the hook's stderr."""
    root = tmp_path / "plugin"
    (root / ".claude-plugin").mkdir(parents=True)
    (root / ".claude-plugin" / "plugin.json").write_text(json.dumps({"name": "probe", "version": "0.0.1"}))
    (root / "hooks").mkdir()
    waiter = root / "hooks" / "waiter.sh"
    # Wake once, on the first turn end only (a flag file), after a short wait.
    waiter.write_text(
        "#!/bin/sh\ncat >/dev/null\n"
        'flag="$CLAUDE_PLUGIN_ROOT/woken"\n'
        '[ -e "$flag" ] && exit 0\n'
        'sleep 1; touch "$flag"\n'
        "echo 'REWAKE_MARKER_c81f: new mail' >&2\nexit 2\n"
    )
    waiter.chmod(0o755)
    (root / "hooks" / "hooks.json").write_text(
        json.dumps(
            {
                "hooks": {
                    "Stop": [
                        {
                            "hooks": [
                                {
                                    "type": "command",
                                    "command": '"${CLAUDE_PLUGIN_ROOT}/hooks/waiter.sh"',
                                    "async": True,
                                    "asyncRewake": True,
                                },
                            ]
                        }
                    ]
                }
            }
        )
    )
    with (
        FakeAnthropic() as api,
        ClaudeStream(fake_api_url=api.url, home=tmp_path / "home", plugin_dir=root, binary=claude_bin) as cc,
    ):
        cc.send("first turn")
        assert cc.wait_for_results(1, timeout=60), cc.debug_log()[-3000:]
        assert cc.wait_for_results(2, timeout=30), cc.debug_log()[-3000:]
        assert len(api.agent_requests()) == 2
        assert "REWAKE_MARKER_c81f: new mail" in api.agent_requests()[1].text()
        assert any("REWAKE_MARKER_c81f" in s for s in api.system_reminders())
    assert cc.returncode == 0, cc.stderr
