"""The hook fast path and the CLI's light verbs run on every prompt and every command: they must
never import the daemon's heavy dependencies (issue 9.7). Each run goes through `-X importtime`,
which logs every module the interpreter imports to stderr, whatever way the process exits (the
hook leaves through os._exit, so an atexit dump of sys.modules would miss it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO, Daemon, base_env, free_port

HEAVY = ("mcp", "aiohttp", "apsw", "pydantic", "psutil")
HOOK_INPUT = json.dumps(
    {"session_id": "pin-imports", "hook_event_name": "UserPromptSubmit", "prompt": "hello", "cwd": "/tmp"}
)
# Verbs that only talk HTTP to the daemon (serve, doctor, update and the autostart verbs may be heavy).
LIGHT_VERBS = (
    ("--version",),
    ("send", "--from", "pin-a", "--to", "pin-b", "--body", "hi"),
    ("peek", "--name", "pin-b"),
    ("check", "--name", "pin-b"),
    ("list",),
)


def imported(stderr: str) -> set[str]:
    """Top-level package names from `-X importtime` lines: `import time: self | cumulative | name`."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.add(name.split(".")[0])
    return names


def heavy_in(result: subprocess.CompletedProcess[str]) -> list[str]:
    names = imported(result.stderr)
    assert "claude_mailbox" in names, f"the run imported nothing of ours: {result.stderr[-2000:]}"
    return sorted(name for name in HEAVY if name in names)


def run_hook(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Exactly what hooks/run execs: isolated mode, no site-packages."""
    return subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(REPO / "hooks" / "hook.py"), "prompt-submit"],
        env=env,
        input=HOOK_INPUT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def run_verb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as installed: the venv's python WITH site-packages, so a stray import would succeed."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "claude_mailbox", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_heavy_packages_are_installed() -> None:
    """Otherwise the checks below would pass for the wrong reason."""
    assert [name for name in HEAVY if importlib.util.find_spec(name) is None] == []


def test_hook_fast_path_with_the_daemon_down(mailbox_home: Path) -> None:
    env = base_env(mailbox_home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}")
    result = run_hook(env)
    assert result.returncode == 0
    assert heavy_in(result) == []


def test_hook_and_light_verbs_with_the_daemon_up(daemon: Daemon) -> None:
    """One daemon for all runs: starting one costs more than the runs themselves."""
    daemon.client().send("pin-sender", "pin-imports-box", "wake up")
    hook = run_hook(daemon.env())
    assert hook.returncode == 0
    assert heavy_in(hook) == []
    for args in LIGHT_VERBS:
        result = run_verb(daemon.env(), *args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert heavy_in(result) == [], args


@pytest.mark.parametrize("args", LIGHT_VERBS[1:3], ids=lambda args: args[0])
def test_light_cli_verbs_with_the_daemon_down(mailbox_home: Path, args: tuple[str, ...]) -> None:
    env = base_env(mailbox_home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}")
    result = run_verb(env, *args)
    assert result.returncode == 2  # unreachable, one line, and still light
    assert heavy_in(result) == []


# The package's modules a prompt's hook imports (issue 19.7: the relay core stays this small; the Stop
# waiter, the headers helper, the CLI launcher and the slow paths are imported only when used).
HOOK_FAST_PATH = {"auth", "claudeproc", "errors", "hookrelay", "httpclient", "locate"}


def test_hook_fast_path_imports_only_the_relay_core(mailbox_home: Path) -> None:
    env = base_env(mailbox_home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}")
    result = run_hook(env)
    assert result.returncode == 0
    ours = {
        line.rsplit("|", 1)[1].strip().removeprefix("claude_mailbox.")
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "| " in line and "claude_mailbox." in line
    }
    assert ours == HOOK_FAST_PATH
