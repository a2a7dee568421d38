"""`claude-mailbox doctor` for real, the way the slash command runs it: `hooks/run cli doctor
--plugin-data DIR` with a plain python3 that has nothing but the stdlib (the test venv's base
interpreter), CLAUDE_PLUGIN_ROOT at this checkout. It builds a real, self-contained managed
environment with pip, starts a real daemon, and sends real mail through it.

Every run has its own HOME, data dir and plugin data dir, and no user service manager (a bus that
does not exist), so autostart takes the detached fallback and nothing touches the real machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from claude_mailbox import __version__
from claude_mailbox.client import MailboxClient
from claude_mailbox.setup import doctor
from claude_mailbox.setup import venv as managed_env
from harness import REPO, free_port, start_daemon

RUN = REPO / "hooks" / "run"
STEPS = ["python", "daemon", "autostart", "prefix", "smoke"]


@dataclass
class Plugin:
    """One user's machine: a plugin data dir, a mailbox data dir, a port in config.toml."""

    tmp: Path
    data: Path
    home: Path
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def venv(self) -> Path:
        return self.data / "venv"

    def run(self, *args: str, stdin: str = "", timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RUN), *args], env=self.env, input=stdin, capture_output=True, text=True, timeout=timeout
        )

    def doctor(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Exactly the slash command's line (stdin is not a terminal)."""
        result = self.run("cli", "doctor", "--plugin-data", str(self.data), *args, timeout=timeout)
        assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
        return result

    def daemon_pid(self) -> int | None:
        try:
            return int((self.home / "daemon.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop_daemon(self) -> None:
        """Stop the detached daemon this test's doctor started (by its pid file, nothing else)."""
        pid = self.daemon_pid()
        if pid is None:
            return
        try:
            process = psutil.Process(pid)
            if "serve" in process.cmdline():
                process.send_signal(signal.SIGTERM)
                process.wait(15)
        except (psutil.Error, OSError):
            pass


def stdlib_only_python(bin_dir: Path) -> Path:
    """A `python3` on PATH that is the base interpreter of the test venv: no psutil, no tomli-w."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    (bin_dir / "python3").symlink_to(base)
    return bin_dir


def plugin_env(tmp: Path, home: Path, data: Path, bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE", "PYTHON", "XDG_", "DBUS_"))}
    user_home = tmp / "user-home"
    user_home.mkdir(exist_ok=True)
    env.update(
        HOME=str(user_home),
        CLAUDE_MAILBOX_HOME=str(home),
        CLAUDE_PLUGIN_ROOT=str(REPO),
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # No user systemd here, whatever the machine has: autostart falls back to a detached daemon.
        XDG_RUNTIME_DIR=str(tmp / "no-runtime-dir"),
        DBUS_SESSION_BUS_ADDRESS=f"unix:path={tmp / 'no-bus'}",
        PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"),
    )
    return env


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    home = tmp_path / "mailbox-data"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(f"port = {port}\n")
    data = tmp_path / "plugin data"  # a space, as in real paths
    data.mkdir()
    bin_dir = stdlib_only_python(tmp_path / "bin")
    setup = Plugin(tmp_path, data, home, port, plugin_env(tmp_path, home, data, bin_dir))
    try:
        yield setup
    finally:
        setup.stop_daemon()


def lines(output: str) -> dict[str, str]:
    """{check id: status} from the checklist."""
    labels = {
        "python": "python",
        "daemon": "daemon",
        "autostart": "autostart",
        "prefix": "prefix",
        "smoke": "smoke test",
    }
    found = {}
    for line in output.splitlines():
        for step, label in labels.items():
            parts = line.split()
            if len(parts) > 2 and parts[1] == label.split()[0] and parts[0] in ("ok", "fixed", "failed", "skipped"):
                found[step] = parts[0]
    return found


def session_start(plugin: Plugin, session: str) -> str:
    hook_input = json.dumps(
        {"session_id": session, "cwd": str(plugin.tmp), "hook_event_name": "SessionStart", "source": "startup"}
    )
    result = plugin.run("session-start", stdin=hook_input, timeout=60)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["hookSpecificOutput"]["additionalContext"])


@pytest.mark.slow
def test_doctor_sets_everything_up_then_changes_nothing(plugin: Plugin) -> None:
    import importlib.util

    assert importlib.util.find_spec("psutil") is not None  # (the test venv has it; python3 on PATH must not)
    probe = subprocess.run(
        ["python3", "-c", "import psutil"], env=plugin.env, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode != 0, "python3 on the test PATH should be stdlib-only"

    # 1. First run, as `/claude-mailbox:mailbox-doctor --yes`: installs, registers, starts, tests.
    first = plugin.doctor("--yes")

    assert first.returncode == 0, first.stdout + first.stderr
    assert lines(first.stdout) == {
        "python": "ok",
        "daemon": "fixed",
        "autostart": "fixed",
        "prefix": "ok",
        "smoke": "ok",
    }, first.stdout
    assert first.stdout.rstrip().endswith("All set: 2 fixed, 3 ok."), first.stdout
    assert f"claude-mailbox {__version__} installed in {plugin.venv} (from {REPO})" in first.stdout
    assert "detached daemon runs (pid" in first.stdout  # and says plainly that nothing starts it at login

    # The managed environment: self-contained, the plugin's version, importable daemon.
    config = (plugin.venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    assert managed_env.installed_version(plugin.venv) == __version__
    report = managed_env.probe(plugin.venv / "bin" / "python")
    assert managed_env.probe_problem(report, __version__) is None, report
    assert str(report["file"]).startswith(str(plugin.venv)), report

    # The daemon: healthy at the configured port, this version, run by the managed interpreter.
    health = MailboxClient(plugin.url, token=(plugin.home / "token").read_text().strip()).health(detailed=True)
    assert health["version"] == __version__
    assert Path(health["dbPath"]) == plugin.home / "mailbox.db"
    pid = plugin.daemon_pid()
    assert pid is not None
    assert psutil.Process(pid).cmdline()[:4] == [str(plugin.venv / "bin" / "python"), "-m", "claude_mailbox", "serve"]
    # The smoke test cleaned up after itself: no doctor-* mailbox is left to show up as a peer.
    token = (plugin.home / "token").read_text().strip()  # the doctor's smoke test got in with it
    boxes = MailboxClient(plugin.url, token=token).list()["mailboxes"]
    assert [b["name"] for b in boxes if b["name"].startswith("doctor-")] == []
    assert f"auth: token ({plugin.home / 'token'})" in first.stdout, first.stdout  # the doctor says which mode is on

    # 2. Second run without --yes (no terminal): nothing to change, nothing restarted or rebuilt.
    venv_stamp = (plugin.venv / "pyvenv.cfg").stat().st_mtime_ns
    second = plugin.doctor()

    assert second.returncode == 0, second.stdout + second.stderr
    assert set(lines(second.stdout).values()) == {"ok"}, second.stdout
    assert second.stdout.rstrip().endswith("All set; nothing to change."), second.stdout
    assert plugin.daemon_pid() == pid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert (plugin.venv / "pyvenv.cfg").stat().st_mtime_ns == venv_stamp

    # 3. --json for machines.
    machine = plugin.doctor("--json")
    assert machine.returncode == 0, machine.stderr
    data = json.loads(machine.stdout)
    assert data["ok"] is True and data["changed"] is False
    assert data["pluginVersion"] == __version__ and data["pluginRoot"] == str(REPO)
    assert data["venv"] == str(plugin.venv)
    assert [c["id"] for c in data["checks"]] == STEPS
    assert all(c["status"] == "ok" and c["fix"] is None and c["summary"] for c in data["checks"])

    # 4. A prefix: validated (made safe), written with tomli-w, applied by a graceful restart.
    prefixed = plugin.doctor("--prefix", "My App")  # naming it is the consent: no --yes needed
    assert prefixed.returncode == 0, prefixed.stdout
    assert lines(prefixed.stdout)["prefix"] == "fixed"
    assert "My-App: sessions are named My-App-<8 hex digits> ('My App' made safe for mailbox names)" in prefixed.stdout
    assert "daemon restarted to apply it" in prefixed.stdout
    assert tomllib.loads((plugin.home / "config.toml").read_text()) == {"port": plugin.port, "prefix": "My-App"}
    assert plugin.daemon_pid() != pid
    session = str(uuid.uuid4())
    assert f"mailbox name is My-App-{session[:8]}." in session_start(plugin, session)
    again = plugin.doctor("--prefix", "My-App")
    assert again.returncode == 0 and again.stdout.rstrip().endswith("All set; nothing to change."), again.stdout

    # 5. status, as the slash command runs it, from plain python3 (the hooks' interpreter is the
    #    managed one now; a stdlib python must work as well).
    status = plugin.run("cli", "status", "--plugin-data", str(plugin.data), "--session", session)
    assert status.returncode == 0, status.stderr
    assert f"daemon     Running  {__version__} at {plugin.url}" in status.stdout
    assert f"plugin     {__version__}" in status.stdout
    assert f"port       {plugin.port}" in status.stdout
    assert f"database   {plugin.home / 'mailbox.db'}  (" in status.stdout
    assert f"autostart  Running  detached process (pid {plugin.daemon_pid()})" in status.stdout
    assert f"session    My-App-{session[:8]}  (this session)" in status.stdout
    assert f"My-App-{session[:8]}" in status.stdout.split("mailboxes (1):")[1]
    status_json = json.loads(plugin.run("cli", "status", "--json", "--session", session).stdout)
    assert status_json["state"] == "Running" and status_json["pluginVersion"] == __version__
    assert status_json["autostart"]["state"] == "Running" and status_json["database"]["bytes"] > 0
    assert status_json["session"] == {"id": session, "mailbox": f"My-App-{session[:8]}"}
    # Alive: the hook reported its nearest non-shell ancestor, this test runner, as Claude Code.
    assert [(b["name"], b["state"], b["pending"]) for b in status_json["mailboxes"]] == [
        (f"My-App-{session[:8]}", "alive", 0)
    ]

    # 6. Another data dir's daemon on the port: named, not taken over, not counted as ours. It cannot
    #    prove it holds this data dir's token, but its socket is this user's, so the doctor reads its
    #    /health (issue 20.1: only another uid must prove) and names the database it serves.
    other_home = plugin.tmp / "someone else"
    other_home.mkdir()
    other = start_daemon(other_home)
    try:
        foreign = plugin.doctor("--yes", "--url", other.url)
        assert foreign.returncode == 1, foreign.stdout
        assert lines(foreign.stdout)["autostart"] == "failed"
        # Its /health shows its database only to its own token (issue 20.8): it refuses ours.
        assert "serves another data dir's database (it does not take this data dir's token)" in foreign.stdout
        assert "another daemon holds the port" in foreign.stdout
        assert lines(foreign.stdout)["smoke"] == "skipped"
        assert other.client().health(detailed=True)["dbPath"] == str(other_home / "mailbox.db")
        assert other.client().list()["mailboxes"] == []  # no smoke test ran against it
    finally:
        other.stop()


def test_without_yes_and_without_a_terminal_nothing_changes(plugin: Plugin) -> None:
    result = plugin.doctor()

    assert result.returncode == 1
    assert lines(result.stdout) == {
        "python": "ok",
        "daemon": "failed",
        "autostart": "skipped",
        "prefix": "skipped",
        "smoke": "skipped",
    }, result.stdout
    assert f"the managed environment {plugin.venv} does not exist" in result.stdout
    assert "fix: create" in result.stdout and "run `claude-mailbox doctor --yes`" in result.stdout
    assert not plugin.venv.exists()
    assert plugin.daemon_pid() is None

    machine = json.loads(plugin.doctor("--json").stdout)
    assert machine["ok"] is False and machine["changed"] is False
    daemon_check = machine["checks"][1]
    assert daemon_check["status"] == "failed" and "--yes" in daemon_check["fix"]


def test_a_declined_fix_is_not_made(
    plugin: Plugin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLAUDE_PLUGIN_DATA", str(plugin.data))
    monkeypatch.setenv("CLAUDE_PLUGIN_ROOT", str(REPO))
    questions: list[str] = []

    def ask(question: str) -> str:
        questions.append(question)
        return "n"

    code = doctor.Doctor(interactive=True, ask=ask).run()

    out = capsys.readouterr().out
    assert code == 1
    assert len(questions) == 1 and "does not exist" in questions[0] and question_ends(questions[0])
    assert "(declined)" in out
    assert not plugin.venv.exists()


def question_ends(question: str) -> bool:
    return question.rstrip().endswith("[Y/n]")


def _old_python() -> Path | None:
    """A real Python 3.9 or 3.10 binary (not a version-manager shim, which is a shell script)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [*sorted(pyenv.glob("3.10*/bin/python3")), *sorted(pyenv.glob("3.9*/bin/python3"))]
    candidates += [Path(found) for found in map(shutil.which, ("python3.10", "python3.9")) if found]
    for candidate in candidates:
        try:
            if candidate.resolve().read_bytes()[:4] == b"\x7fELF":
                return candidate.resolve()
        except OSError:
            continue
    return None


def test_a_too_old_python_is_named_with_what_to_install(tmp_path: Path) -> None:
    old = _old_python()
    if old is None:
        pytest.skip("no Python 3.9 or 3.10 on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(old)
    (bin_dir / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    env = {"HOME": str(tmp_path), "PATH": str(bin_dir), "CLAUDE_MAILBOX_HOME": str(tmp_path / "data")}

    result = subprocess.run(
        [str(RUN), "cli", "doctor", "--plugin-data", str(tmp_path / "plugin"), "--yes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert lines(result.stdout) == {
        "python": "failed",
        "daemon": "skipped",
        "autostart": "skipped",
        "prefix": "skipped",
        "smoke": "skipped",
    }, result.stdout + result.stderr
    assert "is older than 3.11, and no usable python3.11+ is on PATH" in result.stdout
    assert "fix: install Python 3.11 or newer" in result.stdout
    assert not (tmp_path / "plugin" / "venv").exists()


# --- another program on the daemon's port (issue 11.3) ----------------------------------------------


def test_status_and_the_doctor_name_another_program_on_the_port(mailbox_home: Path) -> None:
    """A plain socket server (not claude-mailbox) holds the port: status and the doctor name the port,
    the holder's pid and name, and how to move the mailbox; the doctor starts nothing there."""
    import socket

    from harness import base_env, run_cli

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        me = psutil.Process()

        shown = run_cli("status", "--json", env=base_env(mailbox_home, CLAUDE_MAILBOX_URL=url))
        assert shown.returncode == 2
        holder = json.loads(shown.stdout)["portHolder"]
        assert f"port {port} is held by another program (pid {me.pid}, {json.dumps(me.name())}" in holder
        assert "not claude-mailbox" in holder and "CLAUDE_MAILBOX_URL=http://127.0.0.1:N" in holder
        text = run_cli("status", env=base_env(mailbox_home, CLAUDE_MAILBOX_URL=url)).stdout
        assert f"daemon     Stopped  port {port} is held by another program (pid {me.pid}" in text

        checkup = doctor.Doctor(yes=True, as_json=True, url=url)
        checkup.own_install = Path(sys.executable)
        check = checkup.check_autostart()
        assert check.status == "failed" and check.summary == holder
        assert not (mailbox_home / "daemon.pid").exists()  # nothing was started on a held port


def test_a_free_port_or_our_own_daemon_is_not_reported_as_held(mailbox_home: Path) -> None:
    from claude_mailbox import portholder

    assert portholder.describe(f"http://127.0.0.1:{free_port()}") is None
    running = start_daemon(mailbox_home)
    try:
        assert portholder.describe(running.url) is None
        found = portholder.holder(running.port)
        assert found is not None and found[0] == running.process.pid and found[2]  # type: ignore[union-attr]
    finally:
        running.stop()
