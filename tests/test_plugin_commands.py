"""The plugin's slash commands inside the real Claude Code (offline, fake Anthropic API): their
`!` lines pass Claude Code's permission check, get ${CLAUDE_PLUGIN_ROOT}, ${CLAUDE_PLUGIN_DATA}
and ${CLAUDE_SESSION_ID} substituted, run the CLI through hooks/run with the stdlib-only python3,
and their output reaches the model inside the command's prompt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from claude_code import require_claude, run_claude
from claude_mailbox import __version__
from fake_anthropic import FakeAnthropic
from harness import REPO, Daemon, free_port

pytestmark = pytest.mark.claude_code


def daemon_env(daemon: Daemon) -> dict[str, str]:
    return {"CLAUDE_MAILBOX_HOME": str(daemon.home), "CLAUDE_MAILBOX_URL": daemon.url}


def no_daemon_env(tmp_path: Path) -> dict[str, str]:
    """No daemon: a data dir of its own and a closed port (never the default one, where the user's
    own daemon may run: the session's hooks would register there)."""
    return {
        "CLAUDE_MAILBOX_HOME": str(tmp_path / "mailbox-data"),
        "CLAUDE_MAILBOX_URL": f"http://127.0.0.1:{free_port()}",
    }


def run_command(command: str, tmp_path: Path, env: dict[str, str], marker: str = "Show the user") -> str:
    """Run `/claude-mailbox:<command>` and return the prompt text Claude Code sent to the model
    (the text that holds `marker`, a phrase of the command's own body)."""
    require_claude()
    home = tmp_path / "home"
    with FakeAnthropic() as api:
        api.enqueue("noted")
        result = run_claude(
            f"/claude-mailbox:{command}", fake_api_url=api.url, plugin_dir=REPO, home=home, env_extra=env, timeout=90
        )
        texts = [text for request in api.messages_requests() for text in request.texts()]
    assert result.returncode == 0, result.explain()
    assert "permission check failed" not in result.stdout + result.stderr, result.stdout + result.stderr
    prompts = [text for text in texts if marker in text]
    assert prompts, f"the command's prompt never reached the model: {texts!r}"
    return prompts[0]


def test_mailbox_status_shows_the_table(daemon: Daemon, tmp_path: Path) -> None:
    daemon.client().send("peer-b", "peer-a", "waiting")

    prompt = run_command("mailbox-status", tmp_path, daemon_env(daemon))

    assert f"daemon     Running  {__version__} at {daemon.url}" in prompt
    assert f"plugin     {__version__}  {REPO}" in prompt
    # The daemon was started by hand, the doctor never ran: nothing would start it again (issue 11.4).
    assert "autostart  NotInstalled  not registered" in prompt, prompt
    assert "session    claude-" in prompt  # ${CLAUDE_SESSION_ID} reached --session
    assert "peer-a" in prompt and "${CLAUDE" not in prompt


def test_mailbox_doctor_reports_and_changes_nothing_without_consent(tmp_path: Path) -> None:
    prompt = run_command("mailbox-doctor", tmp_path, no_daemon_env(tmp_path))

    data_dir = tmp_path / "home" / ".claude" / "plugins" / "data"
    # ${CLAUDE_PLUGIN_DATA} arrived as --plugin-data: the managed environment goes there.
    assert f"the managed environment {data_dir}" in prompt, prompt
    assert "run `claude-mailbox doctor --yes`" in prompt
    assert "  ok      python " in prompt
    assert not any(data_dir.glob("*/venv"))


def test_collaborate_without_an_argument_turns_it_on_and_renders_cleanly(daemon: Daemon, tmp_path: Path) -> None:
    prompt = run_command("collaborate", tmp_path, daemon_env(daemon), marker="Tell the user")

    assert "Result of the /claude-mailbox:collaborate slash command for this session:" in prompt
    assert "collaboration mode is on for claude-" in prompt, prompt
    assert "collaborate `" not in prompt and "$ARGUMENTS" not in prompt  # no empty argument left behind


def test_mailbox_update_before_set_up_gets_its_guidance(tmp_path: Path) -> None:
    """No managed environment yet: the command's output and the guidance for it reach the model."""
    prompt = run_command("mailbox-update", tmp_path, no_daemon_env(tmp_path))

    assert "claude-mailbox is not set up here yet: run /claude-mailbox:mailbox-doctor" in prompt, prompt
    assert '- "claude-mailbox is not set up here yet": there is nothing to update' in prompt


def test_the_command_and_the_skill_cannot_be_confused() -> None:
    """The model lists both: different names, and each description says which one it is."""
    command = (REPO / "commands" / "collaborate.md").read_text()
    (skill,) = (REPO / "skills").glob("*/SKILL.md")
    skill_text = skill.read_text()
    skill_name = re.search(r"^name: (.+)$", skill_text, re.M)
    assert skill_name and "collaborate" not in skill_name.group(1)
    assert re.search(r"^description: Slash command\b", command, re.M)
    assert re.search(r"^description: Guide for Claude \(not a slash command\)", skill_text, re.M)
    assert "/claude-mailbox:collaborate" in skill_text  # and the skill points at the user's own switch
