"""The plugin as Claude Code sees it: the real validator, then the rules it does not check.

The validator is the pinned Claude Code CLI (scripts/install-tools.sh puts 2.1.330 in .tools/).
Its only accepted finding is the reserved-prefix error on the plugin name `claude-mailbox` (the
name is the user's choice; the CLI still installs and loads the plugin). Any other error, warning
or plugin-directory finding fails. Missing binary: fails under CI, skipped locally.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from claude_code import require_claude
from harness import REPO

PLUGIN_NAME = "claude-mailbox"
COMMANDS = ("collaborate", "mailbox-doctor", "mailbox-status", "mailbox-update")
RUN = '"${CLAUDE_PLUGIN_ROOT}/hooks/run"'


def _validate(claude: Path, target: str, home: Path) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CLAUDE", "ANTHROPIC"))}
    env.update(HOME=str(home), CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
    result = subprocess.run(
        [str(claude), "plugin", "validate", target, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"validate {target} did not print JSON (exit {result.returncode}): {result.stdout}{result.stderr}")


def _findings(report: dict[str, Any]) -> list[str]:
    """Every error and warning in the report, as "file path: message" lines."""
    found = []
    for manifest in [report["manifest"], *report.get("contents", [])]:
        for kind in ("errors", "warnings"):
            found += [f"{kind} {manifest['file']} {item['path']}: {item['message']}" for item in manifest[kind]]
    directory = report.get("directory") or {}
    found += [
        f"directory {f['severity']} {f['code']} {f['file']}: {f['message']}" for f in directory.get("findings", [])
    ]
    found += [f"directory undecided: {item}" for item in directory.get("undecided", [])]
    return found


def _reserved_name(line: str) -> bool:
    return line.startswith("errors ") and f'Plugin name "{PLUGIN_NAME}" is reserved' in line


@pytest.mark.parametrize("target", [".", "./.claude-plugin/plugin.json"])
def test_the_real_validator_reports_only_the_reserved_name(target: str, tmp_path: Path) -> None:
    claude = require_claude()

    report = _validate(claude, target, tmp_path)

    findings = _findings(report)
    assert [line for line in findings if not _reserved_name(line)] == []
    # The one accepted finding is really there: the validator ran on our manifest and read the name.
    assert any(_reserved_name(line) for line in findings), findings
    if target == ".":
        files = {Path(m["file"]).name for m in [report["manifest"], *report["contents"]]}
        assert {"marketplace.json", "plugin.json"} <= files


def test_the_validator_is_the_pinned_version() -> None:
    claude = require_claude()
    out = subprocess.run([str(claude), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert out.split()[0] == "2.1.330", out


# --- what the validator does not check -------------------------------------------------------------


def _json(path: str) -> Any:
    return json.loads((REPO / path).read_text(encoding="utf-8"))


def test_plugin_json_has_the_fields_claude_code_reads() -> None:
    plugin = _json(".claude-plugin/plugin.json")
    package_version = re.search(
        r'^__version__ = "([^"]+)"', (REPO / "daemon/claude_mailbox/__init__.py").read_text(), re.M
    )

    assert plugin["name"] == PLUGIN_NAME
    assert package_version and plugin["version"] == package_version.group(1)
    assert re.fullmatch(r"\d+\.\d+\.\d+", plugin["version"])
    assert isinstance(plugin["description"], str) and len(plugin["description"]) > 20
    assert isinstance(plugin["author"], dict) and plugin["author"]["name"]  # a string author is a load error
    assert plugin["repository"].startswith("https://") and plugin["homepage"].startswith("https://")
    assert plugin["license"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert isinstance(plugin["keywords"], list) and all(isinstance(k, str) for k in plugin["keywords"])
    assert (REPO / ".claude-plugin" / "icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_repo_is_its_own_marketplace() -> None:
    marketplace = _json(".claude-plugin/marketplace.json")
    plugin = _json(".claude-plugin/plugin.json")

    assert marketplace["name"] == PLUGIN_NAME
    assert marketplace["owner"]["name"]
    [entry] = marketplace["plugins"]
    assert entry["name"] == plugin["name"]
    assert entry["source"] == "./"
    # A version in the entry must equal plugin.json's (`claude plugin tag` fails on a mismatch).
    assert entry.get("version", plugin["version"]) == plugin["version"]


def test_mcp_json_declares_the_http_server_with_the_headers_helper() -> None:
    server = _json(".mcp.json")["mcpServers"]["mailbox"]

    assert server["type"] == "http"  # a url without a type is silently dropped
    # Its tools are in the turn-1 prompt: startup waits for the connect (at most 5 s), where `claude -p`
    # otherwise waits 2 s at most (a daemon that the session starts may need longer), and tool search
    # never defers them (the SessionStart context names the send tool).
    assert server["alwaysLoad"] is True
    assert server["url"] == "${CLAUDE_MAILBOX_URL:-http://127.0.0.1:37849}/mcp"
    # Claude Code substitutes both variables in the command but puts no CLAUDE_PLUGIN_DATA in its environment.
    helper = ["${CLAUDE_PLUGIN_ROOT}/hooks/run", "headers", "--plugin-data", "${CLAUDE_PLUGIN_DATA}"]
    assert shlex.split(server["headersHelper"]) == helper
    assert "headers" not in server  # identity comes from the helper, not from static headers


def test_hooks_json_commands_point_at_executable_files() -> None:
    hooks = _json("hooks/hooks.json")
    assert set(hooks) >= {"hooks"}
    assert set(hooks["hooks"]) == {"SessionStart", "UserPromptSubmit", "PostToolUse", "SessionEnd", "Stop"}
    (post_tool,) = hooks["hooks"]["PostToolUse"]
    assert not post_tool.get("matcher")  # every tool: mail reaches a busy session after any of them
    commands = [
        hook["command"]
        for groups in hooks["hooks"].values()
        for group in groups
        for hook in group["hooks"]
        if hook["type"] == "command"
    ]
    assert len(commands) == 5
    for command in commands:
        words = shlex.split(command)
        program = words[1] if words[0] == "exec" else words[0]  # exec: the relay is Claude Code's own child
        assert program.startswith("${CLAUDE_PLUGIN_ROOT}/"), command
        path = REPO / program.removeprefix("${CLAUDE_PLUGIN_ROOT}/")
        assert path.is_file() and os.access(path, os.X_OK), f"{command}: {path} is not an executable file"
    assert os.access(REPO / "hooks" / "run", os.X_OK)
    assert (REPO / "hooks" / "hook.py").is_file()


def _frontmatter(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path} has no frontmatter"
    block = text[4 : text.index("\n---\n", 4)]
    fields = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        assert sep and key and not key.startswith(" "), f"{path}: not a simple `key: value` line: {line!r}"
        fields[key.strip()] = value.strip()
    return fields


def test_every_command_and_skill_has_frontmatter() -> None:
    commands = sorted((REPO / "commands").glob("*.md"))
    skills = sorted((REPO / "skills").glob("*/SKILL.md"))
    assert {path.stem for path in commands} >= set(COMMANDS)
    assert skills

    for path in commands:
        fields = _frontmatter(path)
        assert fields.get("description"), f"{path}: no description"
        assert "allowed-tools" in fields, f"{path}: no allowed-tools"
    for path in skills:
        fields = _frontmatter(path)
        assert fields.get("name") == path.parent.name
        assert fields.get("description") and len(fields["description"]) <= 1536


@pytest.mark.parametrize("name", ["mailbox-doctor", "mailbox-status", "mailbox-update"])
def test_plugin_commands_run_the_cli_through_the_launcher_and_are_allowed_to(name: str) -> None:
    """`!` lines are permission-checked: each must match an allowed-tools pattern exactly (a command
    starting with VAR=... never matches, so the data dir goes in --plugin-data), and must not abort
    the command when the CLI exits non-zero."""
    path = REPO / "commands" / f"{name}.md"
    allowed = _frontmatter(path)["allowed-tools"]
    verb = name.removeprefix("mailbox-")
    bang = re.findall(r"^!`(.+)`$", path.read_text(encoding="utf-8"), re.M)

    assert allowed == f"Bash({RUN} cli {verb}:*)"
    assert bang, f"{path} runs nothing"
    for line in bang:
        assert line.startswith(f"{RUN} cli {verb} "), line
        assert '--plugin-data "${CLAUDE_PLUGIN_DATA}"' in line, line
        assert line.endswith("2>&1 || true"), line
