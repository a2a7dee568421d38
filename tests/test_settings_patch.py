"""install-hook / uninstall-hook: patching Claude Code settings files for use without the plugin."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from claude_mailbox.errors import InvalidInput
from claude_mailbox.setup import settings_patch
from harness import Daemon, base_env, run_cli
from plugin_env import HookRun, run_hook

PREFIX = ["/opt/mailbox venv/bin/claude-mailbox"]  # a space: commands must quote it

OTHER_SETTINGS: dict[str, Any] = {
    "model": "opus",
    "permissions": {"allow": ["Bash(ls:*)"], "deny": []},
    "env": {"FOO": "bar"},
    "hooks": {
        "SessionStart": [{"matcher": "startup", "hooks": [{"type": "command", "command": "echo hi"}]}],
        "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "lint.sh", "timeout": 3}]}],
        "UserPromptSubmit": [
            {"hooks": [{"type": "command", "command": "date"}, {"type": "command", "command": "whoami"}]}
        ],
    },
    "statusLine": {"type": "command", "command": "status.sh"},
}


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")


def ours(settings: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [
        hook
        for group in settings.get("hooks", {}).get(event, [])
        for hook in group.get("hooks", [])
        if settings_patch.is_ours(hook)
    ]


def test_install_into_missing_file_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".claude" / "settings.json"
    result = settings_patch.install(path, "alice", prefix=PREFIX)
    assert result.changed
    data = json.loads(path.read_text())
    assert set(data) == {"hooks"}
    start, prompt = ours(data, "SessionStart"), ours(data, "UserPromptSubmit")
    assert len(start) == len(prompt) == 1
    assert start[0]["type"] == prompt[0]["type"] == "command"
    assert shlex.split(start[0]["command"], comments=True) == [*PREFIX, "session-announce", "--name", "alice"]
    assert shlex.split(prompt[0]["command"], comments=True) == [*PREFIX, "check", "--name", "alice", "--hook"]
    assert start[0]["command"].endswith(settings_patch.MARKER)
    assert path.read_text().endswith("}\n")


def test_install_preserves_everything_else(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    write(path, OTHER_SETTINGS)
    settings_patch.install(path, "alice", prefix=PREFIX)
    data = json.loads(path.read_text())
    assert list(data) == list(OTHER_SETTINGS)  # key order kept
    for key in ("model", "permissions", "env", "statusLine"):
        assert data[key] == OTHER_SETTINGS[key]
    assert data["hooks"]["PreToolUse"] == OTHER_SETTINGS["hooks"]["PreToolUse"]
    # Existing groups stay first and unchanged; ours is appended.
    assert data["hooks"]["SessionStart"][0] == OTHER_SETTINGS["hooks"]["SessionStart"][0]
    assert data["hooks"]["UserPromptSubmit"][0] == OTHER_SETTINGS["hooks"]["UserPromptSubmit"][0]
    assert len(ours(data, "SessionStart")) == len(ours(data, "UserPromptSubmit")) == 1


def test_install_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    write(path, OTHER_SETTINGS)
    assert settings_patch.install(path, "alice", prefix=PREFIX).changed
    first = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    assert not settings_patch.install(path, "alice", prefix=PREFIX).changed
    assert path.read_bytes() == first
    assert path.stat().st_mtime_ns == mtime  # not even rewritten


def test_reinstall_with_another_name_replaces_ours(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    write(path, OTHER_SETTINGS)
    settings_patch.install(path, "alice", prefix=PREFIX)
    settings_patch.install(path, "bob", prefix=PREFIX, url="http://127.0.0.1:4000")
    data = json.loads(path.read_text())
    (start,) = ours(data, "SessionStart")
    (prompt,) = ours(data, "UserPromptSubmit")
    assert "--name bob" in start["command"] and "alice" not in json.dumps(data)
    assert "--url http://127.0.0.1:4000" in prompt["command"]


def test_uninstall_removes_only_ours_and_restores_the_original(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    write(path, OTHER_SETTINGS)
    settings_patch.install(path, "alice", prefix=PREFIX)
    result = settings_patch.uninstall(path)
    assert result.changed and result.count == 2
    assert json.loads(path.read_text()) == OTHER_SETTINGS
    again = settings_patch.uninstall(path)
    assert not again.changed and again.count == 0


def test_uninstall_keeps_other_hooks_in_a_shared_group(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    marker_cmd = f"claude-mailbox check --name x --hook  {settings_patch.MARKER}"
    data = {
        "hooks": {
            "UserPromptSubmit": [
                {"hooks": [{"type": "command", "command": "date"}, {"type": "command", "command": marker_cmd}]}
            ],
            "Stop": [],
        }
    }
    write(path, data)
    assert settings_patch.uninstall(path).count == 1
    after = json.loads(path.read_text())
    assert after == {"hooks": {"UserPromptSubmit": [{"hooks": [{"type": "command", "command": "date"}]}], "Stop": []}}


def test_uninstall_of_only_ours_drops_the_empty_hooks_table(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    write(path, {"model": "opus"})
    settings_patch.install(path, "alice", prefix=PREFIX)
    settings_patch.uninstall(path)
    assert json.loads(path.read_text()) == {"model": "opus"}


def test_a_similar_command_without_the_marker_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    mine = {"type": "command", "command": "claude-mailbox check --name alice --hook"}
    write(path, {"hooks": {"UserPromptSubmit": [{"hooks": [mine]}]}})
    assert not settings_patch.uninstall(path).changed
    settings_patch.install(path, "alice", prefix=PREFIX)
    data = json.loads(path.read_text())
    assert data["hooks"]["UserPromptSubmit"][0]["hooks"] == [mine]


@pytest.mark.parametrize(
    "text",
    ['{"model": "opus",', "not json at all", "[1, 2, 3]", '"a string"', '{"hooks": []}', '{"hooks": {"Stop": {}}}'],
)
def test_invalid_settings_are_left_untouched(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cfg" / "settings.json"
    path.parent.mkdir()
    path.write_text(text)
    for action in (
        lambda: settings_patch.install(path, "alice", prefix=PREFIX),
        lambda: settings_patch.uninstall(path),
    ):
        with pytest.raises(settings_patch.SettingsError) as caught:
            action()
        assert str(path) in caught.value.message
        assert "untouched" in caught.value.message
        assert path.read_text() == text
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temp file left behind


def test_empty_file_counts_as_empty_settings(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text("  \n")
    assert settings_patch.install(path, "alice", prefix=PREFIX).changed
    assert len(ours(json.loads(path.read_text()), "SessionStart")) == 1


def test_invalid_name_is_refused_before_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    with pytest.raises(InvalidInput):
        settings_patch.install(path, "bad name; rm -rf /", prefix=PREFIX)
    assert not path.exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions and symlinks")
def test_mode_and_symlink_are_kept(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "settings.json"
    write(real, {"model": "opus"})
    real.chmod(0o600)
    link = tmp_path / ".claude" / "settings.json"
    link.parent.mkdir()
    link.symlink_to(real)
    settings_patch.install(link, "alice", prefix=PREFIX)
    assert link.is_symlink()  # the dotfile manager's link survives
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert len(ours(json.loads(real.read_text()), "UserPromptSubmit")) == 1
    assert sorted(p.name for p in real.parent.iterdir()) == ["settings.json"]


def test_unicode_content_is_preserved(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    write(path, {"env": {"GREETING": "grüß dich 🙂"}})
    settings_patch.install(path, "alice", prefix=PREFIX)
    settings_patch.uninstall(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"env": {"GREETING": "grüß dich 🙂"}}


def test_cli_prefix_runs_this_installation(tmp_path: Path) -> None:
    prefix = settings_patch.cli_prefix()
    assert Path(prefix[0]).is_absolute()
    out = subprocess.run([*prefix, "--version"], capture_output=True, text=True, timeout=30, env=base_env(tmp_path))
    assert out.returncode == 0 and out.stdout.startswith("claude-mailbox ")


# --- through the CLI, and the installed hooks actually working ------------------------------------


def cli_env(daemon_or_home: Daemon | Path, home: Path) -> dict[str, str]:
    env = daemon_or_home.env() if isinstance(daemon_or_home, Daemon) else base_env(daemon_or_home)
    env["HOME"] = str(home)
    return env


def test_cli_install_user_and_project(tmp_path: Path, mailbox_home: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    env = cli_env(mailbox_home, home)
    result = run_cli("install-hook", "--name", "alice", env=env)
    assert result.returncode == 0, result.stderr
    user_file = home / ".claude" / "settings.json"
    assert str(user_file) in result.stdout and "installed" in result.stdout
    assert len(ours(json.loads(user_file.read_text()), "SessionStart")) == 1
    again = run_cli("install-hook", "--name", "alice", "--json", env=env)
    assert json.loads(again.stdout) == {"path": str(user_file), "changed": False, "name": "alice"}

    proc = subprocess.run(
        [sys.executable, "-m", "claude_mailbox", "install-hook", "--project", "--name", "bob"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(ours(json.loads((project / ".claude" / "settings.json").read_text()), "UserPromptSubmit")) == 1

    removed = run_cli("uninstall-hook", "--user", env=env)
    assert removed.returncode == 0 and "removed 2" in removed.stdout
    assert json.loads(user_file.read_text()) == {}
    nothing = run_cli("uninstall-hook", env=env)
    assert nothing.returncode == 0 and "no claude-mailbox hooks" in nothing.stdout


def test_cli_invalid_json_is_one_line_exit_1(tmp_path: Path, mailbox_home: Path) -> None:
    home = tmp_path / "home"
    bad = home / ".claude" / "settings.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{oops")
    env = cli_env(mailbox_home, home)
    for args in (("install-hook", "--name", "alice"), ("uninstall-hook",)):
        result = run_cli(*args, env=env)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and str(bad) in result.stderr and "Traceback" not in result.stderr
        assert bad.read_text() == "{oops"
    both = run_cli("install-hook", "--name", "a", "--user", "--project", env=env)
    assert both.returncode == 1 and "not allowed with" in both.stderr


def installed_command(settings: Path, event: str) -> str:
    (hook,) = ours(json.loads(settings.read_text()), event)
    return str(hook["command"])


def test_installed_commands_work_as_hooks(tmp_path: Path, daemon: Daemon) -> None:
    """Run the commands install-hook wrote exactly as Claude Code would (`sh -c`, stdin JSON)."""
    home = tmp_path / "home"
    env = cli_env(daemon, home)
    assert run_cli("install-hook", "--name", "alice", env=env).returncode == 0
    settings = home / ".claude" / "settings.json"
    sid = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
    hook_env = {**env, "CLAUDE_PID": str(os.getpid()), "CLAUDE_CODE_SESSION_ID": sid}

    def installed_hook(event: str, payload: dict[str, Any]) -> HookRun:
        data = {"session_id": sid, "hook_event_name": event, **payload}
        return run_hook(event, data, hook_env, command=installed_command(settings, event))

    daemon.client().send("bob", "alice", "waiting before start")
    start = installed_hook("SessionStart", {"source": "startup", "cwd": str(tmp_path)})
    assert start.returncode == 0, start.stderr
    context = json.loads(start.stdout)["hookSpecificOutput"]["additionalContext"]
    assert "mailbox name is alice." in context
    assert "1 unread message for this session is waiting" in context
    assert "claude-mailbox send --from alice" in context  # no plugin: no plugin tool name
    assert "mcp__plugin_" not in context and "/claude-mailbox:" not in context

    prompt = installed_hook("UserPromptSubmit", {"prompt": "hi"})
    assert prompt.returncode == 0, prompt.stderr
    out = json.loads(prompt.stdout)["hookSpecificOutput"]
    assert out["hookEventName"] == "UserPromptSubmit"
    assert "from bob at" in out["additionalContext"] and '"waiting before start"' in out["additionalContext"]
    assert daemon.client().peek("alice")["pending"] == 0
    empty = installed_hook("UserPromptSubmit", {"prompt": "again"})
    assert empty.returncode == 0 and empty.stdout == ""

    whoami = run_cli("whoami", env=hook_env)
    assert whoami.stdout.strip() == "alice"
    boxes = {box["name"]: box for box in daemon.client().list()["mailboxes"]}
    assert boxes["alice"]["state"] == "alive"
