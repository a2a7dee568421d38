"""The plugin's slash commands inside the real Claude Code (offline, fake Anthropic API): their
`!` lines pass Claude Code's permission check, get ${CLAUDE_PLUGIN_ROOT}, ${CLAUDE_PLUGIN_DATA}
and ${CLAUDE_SESSION_ID} substituted, run the CLI through hooks/run with the stdlib-only python3,
and their output reaches the model inside the command's prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_code import require_claude, run_claude
from claude_mailbox import __version__
from conftest import REPO, Daemon
from fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.claude_code


def run_command(command: str, tmp_path: Path, env: dict[str, str]) -> str:
    """Run `/claude-mailbox:<command>` and return the prompt text Claude Code sent to the model."""
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
    prompts = [text for text in texts if "Show the user" in text]
    assert prompts, f"the command's prompt never reached the model: {texts!r}"
    return prompts[0]


def test_mailbox_status_shows_the_table(daemon: Daemon, tmp_path: Path) -> None:
    daemon.client().send("peer-b", "peer-a", "waiting")

    prompt = run_command("mailbox-status", tmp_path, {"CLAUDE_MAILBOX_HOME": str(daemon.home)})

    assert f"daemon     Running  {__version__} at {daemon.url}" in prompt
    assert f"plugin     {__version__}  {REPO}" in prompt
    assert "autostart  " in prompt
    assert "session    claude-" in prompt  # ${CLAUDE_SESSION_ID} reached --session
    assert "peer-a" in prompt and "${CLAUDE" not in prompt


def test_mailbox_doctor_reports_and_changes_nothing_without_consent(tmp_path: Path) -> None:
    prompt = run_command("mailbox-doctor", tmp_path, {"CLAUDE_MAILBOX_HOME": str(tmp_path / "mailbox-data")})

    data_dir = tmp_path / "home" / ".claude" / "plugins" / "data"
    # ${CLAUDE_PLUGIN_DATA} arrived as --plugin-data: the managed environment goes there.
    assert f"the managed environment {data_dir}" in prompt, prompt
    assert "run `claude-mailbox doctor --yes`" in prompt
    assert "  ok      python " in prompt
    assert not any(data_dir.glob("*/venv"))
