"""Run the plugin's hooks exactly as Claude Code does, for tests.

Claude Code runs each hooks/hooks.json command with `/bin/sh -c "<command>"` (the command string
unexpanded; sh expands ${CLAUDE_PLUGIN_ROOT}), stdin = the hook JSON, and sets CLAUDE_PID,
CLAUDE_CODE_SESSION_ID, CLAUDE_PLUGIN_ROOT, CLAUDE_PLUGIN_DATA, CLAUDE_PROJECT_DIR
(notes/cc-findings.md a.). The stdin shapes below are verbatim from 2.1.330 and, for the older
shape, the fields the reference lists for 2.1.197 (no prompt_id, permission_mode, model).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOOKS_JSON = REPO / "hooks" / "hooks.json"
EVENT_NAMES = {
    "session-start": "SessionStart",
    "prompt-submit": "UserPromptSubmit",
    "post-tool": "PostToolUse",
    "session-end": "SessionEnd",
    "stop": "Stop",
}


def make_managed_venv(plugin_data: Path) -> Path:
    """`<plugin_data>/venv/bin/python` that runs this test interpreter with its packages, so the
    launcher picks it (as it picks the venv that doctor creates) and the slow path can import
    psutil/aiohttp. A bare symlink to a venv's python loses the venv (Python looks for
    pyvenv.cfg beside the link), so a venv is mirrored: its pyvenv.cfg copied, lib linked."""
    venv = plugin_data / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    if not python.exists():
        python.symlink_to(sys.executable)
    if sys.prefix != sys.base_prefix:
        source = Path(sys.prefix)
        shutil.copy(source / "pyvenv.cfg", venv / "pyvenv.cfg")
        for lib in ("lib", "lib64"):
            if (source / lib).exists() and not (venv / lib).exists():
                (venv / lib).symlink_to(source / lib)
    return python


def hook_command(event: str) -> str:
    """The command hooks.json gives Claude Code for `event` (e.g. "SessionStart")."""
    spec = json.loads(HOOKS_JSON.read_text())
    (group,) = spec["hooks"][event]
    (hook,) = group["hooks"]
    assert hook["type"] == "command"
    return str(hook["command"])


def hook_env(
    base: dict[str, str],
    *,
    url: str | None,
    claude_pid: int | None,
    session_id: str | None = None,
    plugin_data: Path | None = None,
    project_dir: str | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("CLAUDE_") or k == "CLAUDE_MAILBOX_HOME"}
    env["CLAUDE_PLUGIN_ROOT"] = str(REPO)
    env.pop("PYTHONPATH", None)  # Claude Code does not set it; the launcher runs -I anyway
    if url:
        env["CLAUDE_MAILBOX_URL"] = url
    if claude_pid is not None:
        env["CLAUDE_PID"] = str(claude_pid)
    if session_id:
        env["CLAUDE_CODE_SESSION_ID"] = session_id
    if plugin_data is not None:
        env["CLAUDE_PLUGIN_DATA"] = str(plugin_data)
    if project_dir:
        env["CLAUDE_PROJECT_DIR"] = project_dir
    return env


@dataclass
class HookRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def context(self) -> str:
        """additionalContext of a JSON hook reply."""
        return str(json.loads(self.stdout)["hookSpecificOutput"]["additionalContext"])


def run_hook(
    event: str,
    stdin: bytes | str | dict[str, Any] | None,
    env: dict[str, str],
    timeout: float = 30.0,
    *,
    command: str | None = None,
) -> HookRun:
    """Run a hook as Claude Code does (`sh -c COMMAND`, the event's JSON on stdin): the one hook
    runner of the suite. `event` is the hooks.json event ("SessionStart") or the relay's name
    ("session-start"); `command` defaults to the plugin's hooks.json entry (install-hook's
    settings.json entries pass theirs)."""
    event = EVENT_NAMES.get(event, event)
    if isinstance(stdin, dict):
        stdin = json.dumps(stdin)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    started = time.monotonic()
    proc = subprocess.run(
        ["/bin/sh", "-c", command or hook_command(event)],
        input=data if data is not None else b"",
        env=env,
        capture_output=True,
        timeout=timeout,
    )
    return HookRun(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
        time.monotonic() - started,
    )


def start_input(session_id: str, cwd: str, source: str = "startup", *, new: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "session_id": session_id,
        "transcript_path": f"/tmp/home/.claude/projects/p/{session_id}.jsonl",
        "cwd": cwd,
        "hook_event_name": "SessionStart",
        "source": source,
    }
    if new:
        data["model"] = "claude-opus-5-5"  # interactive 2.1.330
    return data


def prompt_input(session_id: str, prompt: str = "hello", *, new: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "session_id": session_id,
        "transcript_path": f"/tmp/home/.claude/projects/p/{session_id}.jsonl",
        "cwd": "/tmp",
    }
    if new:
        data["prompt_id"] = "825cb896-0e2a-4694-b385-705a5d2282be"
        data["permission_mode"] = "default"
    data["hook_event_name"] = "UserPromptSubmit"
    data["prompt"] = prompt
    return data


def post_tool_input(session_id: str, command: str = "ls", *, new: bool = True) -> dict[str, Any]:
    """PostToolUse after a Bash call (tool_name, tool_input, tool_response, tool_use_id)."""
    data: dict[str, Any] = {
        "session_id": session_id,
        "transcript_path": f"/tmp/home/.claude/projects/p/{session_id}.jsonl",
        "cwd": "/tmp",
    }
    if new:
        data["permission_mode"] = "default"
    data["hook_event_name"] = "PostToolUse"
    data["tool_name"] = "Bash"
    data["tool_input"] = {"command": command, "description": "list"}
    data["tool_response"] = {"stdout": "a\nb\n", "stderr": "", "interrupted": False, "isImage": False}
    data["tool_use_id"] = "toolu_01ABCDEF"
    return data


def end_input(session_id: str, reason: str = "other", *, new: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "session_id": session_id,
        "transcript_path": f"/tmp/home/.claude/projects/p/{session_id}.jsonl",
        "cwd": "/tmp",
    }
    if new:
        data["prompt_id"] = "825cb896-0e2a-4694-b385-705a5d2282be"
    data["hook_event_name"] = "SessionEnd"
    data["reason"] = reason
    return data


class FakeClaude:
    """A real, live process standing in for Claude Code (its pid is what CLAUDE_PID carries)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        self.pid = self.process.pid

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def alive(self) -> bool:
        return self.process.poll() is None
