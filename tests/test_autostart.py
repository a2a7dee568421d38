"""autostart: the service definitions (checked on any OS), install/uninstall of the files, and the
real thing where it can run here: detached daemons, the start lock, stop by pid file, and a user
systemd when this machine has one.

HOME is a temp dir in every test (conftest already does CLAUDE_MAILBOX_HOME), so nothing here
writes to the real ~/.config, ~/Library or ~/.claude-mailbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import psutil
import pytest

from claude_mailbox import paths
from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import MailboxError
from claude_mailbox.setup import autostart, detached, units
from claude_mailbox.setup.autostart import InstallResult, Mechanism, State
from harness import REPO, base_env, free_port, run_cli, start_daemon

PYTHON = Path(sys.executable)
TASK_NS = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the systemd mechanism is Linux-only")


@pytest.fixture(autouse=True)
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "user home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


@pytest.fixture
def port(mailbox_home: Path) -> Iterator[int]:
    """A free port the data dir's config also names, so `serve` without --port binds it too."""
    chosen = free_port()
    (mailbox_home / "config.toml").write_text(f"port = {chosen}\n")
    yield chosen
    autostart.stop()
    for process in _daemons_on(chosen):  # whatever a failing test left behind
        process.kill()


def _daemons_on(port: int) -> list[psutil.Process]:
    """Daemon processes started for `port`: with --port, or (no --port) from a data dir naming it."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" not in cmdline or not any(arg.startswith("claude_mailbox") for arg in cmdline):
            continue
        with contextlib.suppress(psutil.Error, OSError):
            home = process.environ().get("CLAUDE_MAILBOX_HOME", "")
            if str(port) in cmdline or f"port = {port}" in (Path(home) / "config.toml").read_text():
                found.append(process)
    return found


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _answers(port: int) -> bool:
    return autostart.state(_url(port)) is State.RUNNING


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# --- systemd unit ----------------------------------------------------------------------------------


def _directives(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def test_systemd_unit_runs_serve_with_the_given_python() -> None:
    unit = units.systemd_unit_text(PurePosixPath("/opt/venv/bin/python"), {}, PurePosixPath("/d/daemon.log"))

    assert _directives(unit, "ExecStart") == ["/opt/venv/bin/python -m claude_mailbox serve"]
    assert _directives(unit, "Restart") == ["on-failure"]
    assert _directives(unit, "WantedBy") == ["default.target"]
    assert _directives(unit, "StandardOutput") == ["append:/d/daemon.log"]
    assert _directives(unit, "Environment") == []
    assert "[Install]" in unit and unit.endswith("\n")


def test_systemd_unit_quotes_paths_with_spaces_and_sets_the_home() -> None:
    env = {"CLAUDE_MAILBOX_HOME": "/home/a b/mail box"}
    unit = units.systemd_unit_text(PurePosixPath("/home/a b/my venv/bin/python"), env, PurePosixPath("/l"))

    [exec_start] = _directives(unit, "ExecStart")
    assert exec_start == '"/home/a b/my venv/bin/python" -m claude_mailbox serve'
    assert shlex.split(exec_start) == ["/home/a b/my venv/bin/python", "-m", "claude_mailbox", "serve"]
    assert _directives(unit, "Environment") == ['"CLAUDE_MAILBOX_HOME=/home/a b/mail box"']


def test_systemd_unit_escapes_specifiers_dollars_and_quotes() -> None:
    unit = units.systemd_unit_text(
        PurePosixPath('/x/100% "odd" $dir/python'), {"CLAUDE_MAILBOX_HOME": "/h/50%$"}, PurePosixPath("/l%")
    )

    # % is a specifier everywhere; $ is expanded only in ExecStart; quotes are backslash-escaped.
    assert _directives(unit, "ExecStart") == ['"/x/100%% \\"odd\\" $$dir/python" -m claude_mailbox serve']
    assert _directives(unit, "Environment") == ["CLAUDE_MAILBOX_HOME=/h/50%%$"]
    assert _directives(unit, "StandardError") == ["append:/l%%"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """systemd's own parser: quoting errors and a missing binary fail `verify` (no bus needed)."""
    venv_bin = tmp_path / "my venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(PYTHON)
    unit_file = tmp_path / "units" / autostart.UNIT_NAME
    unit_file.parent.mkdir()
    env = {"CLAUDE_MAILBOX_HOME": str(tmp_path / "mail box")}
    unit_file.write_text(units.systemd_unit_text(venv_bin / "python", env, tmp_path / "log dir" / "daemon.log"))

    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_file)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert autostart.UNIT_NAME not in result.stderr, result.stderr


# --- launchd plist ---------------------------------------------------------------------------------


def test_launchd_plist_round_trips() -> None:
    env = {"CLAUDE_MAILBOX_HOME": "/Users/a b/mail"}
    data = units.launchd_plist_bytes(PurePosixPath("/Users/a b/venv/bin/python"), env, PurePosixPath("/m/d.log"))

    assert plistlib.loads(data) == {
        "Label": "dev.claude-mailbox.daemon",
        "ProgramArguments": ["/Users/a b/venv/bin/python", "-m", "claude_mailbox", "serve"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "SoftResourceLimits": {"NumberOfFiles": 65536},
        "StandardOutPath": "/m/d.log",
        "StandardErrorPath": "/m/d.log",
        "EnvironmentVariables": {"CLAUDE_MAILBOX_HOME": "/Users/a b/mail"},
        "ProcessType": "Background",
        "Umask": 0o077,  # the log launchd creates is private (issue 20.2)
    }
    assert data.startswith(b"<?xml") and b"<!DOCTYPE plist" in data


# --- Task Scheduler XML ----------------------------------------------------------------------------


def test_schtasks_xml_is_a_logon_task_running_the_launcher() -> None:
    python = PureWindowsPath(r"C:\Users\A B\venv\Scripts\pythonw.exe")
    log = PureWindowsPath(r"C:\Users\A B\.claude-mailbox\daemon.log")
    xml = units.schtasks_xml(python, {"CLAUDE_MAILBOX_HOME": r"C:\mail box"}, log, user=r"PC\ab")

    root = ET.fromstring(xml.encode("utf-16"))  # the bytes install() hands to schtasks /XML

    assert root.tag == f"{TASK_NS}Task"
    trigger = root.find(f"{TASK_NS}Triggers/{TASK_NS}LogonTrigger")
    assert trigger is not None
    assert trigger.findtext(f"{TASK_NS}UserId") == r"PC\ab"
    assert trigger.findtext(f"{TASK_NS}Enabled") == "true"
    principal = root.find(f"{TASK_NS}Principals/{TASK_NS}Principal")
    assert principal is not None
    assert principal.findtext(f"{TASK_NS}LogonType") == "InteractiveToken"
    assert principal.findtext(f"{TASK_NS}RunLevel") == "LeastPrivilege"
    assert root.findtext(f"{TASK_NS}Settings/{TASK_NS}ExecutionTimeLimit") == "PT0S"
    exe = root.find(f"{TASK_NS}Actions/{TASK_NS}Exec")
    assert exe is not None
    assert exe.findtext(f"{TASK_NS}Command") == r"C:\Users\A B\venv\Scripts\pythonw.exe"
    assert exe.findtext(f"{TASK_NS}Arguments") == (
        r'-m claude_mailbox.setup.autostart --log "C:\Users\A B\.claude-mailbox\daemon.log" '
        r'--env "CLAUDE_MAILBOX_HOME=C:\mail box" serve'
    )
    assert exe.findtext(f"{TASK_NS}WorkingDirectory") == r"C:\Users\A B\.claude-mailbox"


def test_the_windows_launcher_applies_env_and_log_and_writes_the_pid_file(
    tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the logon task and the Run value run, exercised here as a real process."""
    home = tmp_path / "launched home"
    home.mkdir()
    (home / "config.toml").write_text(f"port = {port}\n")
    log = tmp_path / "launcher.log"
    command = units.windows_command(PYTHON, {"CLAUDE_MAILBOX_HOME": str(home)}, log)
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    env.pop("CLAUDE_MAILBOX_HOME")
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _answers(port)), log.read_text() if log.exists() else "no log"
        token = (home / "token").read_text().strip()
        assert MailboxClient(_url(port), token=token).health(detailed=True)["dbPath"] == str(home / "mailbox.db")
        assert (home / "daemon.pid").read_text().strip() == str(process.pid)
        assert "listening" in log.read_text()
        monkeypatch.setenv("CLAUDE_MAILBOX_HOME", str(home))
        autostart.stop()  # recognises the launcher's command line as a daemon
        assert process.wait(10) is not None
        assert not (home / "daemon.pid").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- install / uninstall of the files (Linux: systemd) ---------------------------------------------


class FakeSystemctl:
    """Stands in for `systemctl --user` where this machine has no user systemd."""

    def __init__(self, available: bool = True) -> None:
        self.available = available
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, *args: str, timeout: float = 0) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if self.available:
            return subprocess.CompletedProcess(args, 0, "", "")
        return subprocess.CompletedProcess(args, 1, "", "Failed to connect to bus: No medium found")


@linux_only
def test_install_writes_the_unit_once_and_uninstall_removes_it(
    fake_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemctl = FakeSystemctl()
    monkeypatch.setattr(autostart, "_systemctl", systemctl)
    unit = fake_home / ".config" / "systemd" / "user" / "claude-mailbox.service"

    first = autostart.install(PYTHON)

    assert first == InstallResult(Mechanism.SYSTEMD, str(unit), True, first.message)
    assert "installed as a systemd user unit" in first.message and str(unit) in first.message
    expected = units.systemd_unit_text(PYTHON, detached.service_environment(PYTHON), paths.log_file())
    assert unit.read_text() == expected
    assert f"CLAUDE_MAILBOX_HOME={paths.data_dir()}" in expected
    assert ("daemon-reload",) in systemctl.calls
    assert ("enable", "claude-mailbox.service") in systemctl.calls
    assert ("restart", "claude-mailbox.service") in systemctl.calls
    assert autostart.installed_mechanism() is Mechanism.SYSTEMD
    assert autostart.installed_location() == str(unit)
    assert autostart.state(_url(free_port())) is State.STOPPED
    assert autostart.stop() and ("stop", "claude-mailbox.service") in systemctl.calls

    written = unit.stat().st_mtime_ns
    systemctl.calls.clear()
    second = autostart.install(PYTHON)

    assert not second.changed and "already installed" in second.message
    assert unit.stat().st_mtime_ns == written
    assert ("daemon-reload",) not in systemctl.calls
    assert ("start", "claude-mailbox.service") in systemctl.calls

    unit.write_text(expected.replace("RestartSec=2", "RestartSec=9"))  # edited by hand: put it back
    assert autostart.install(PYTHON).changed
    assert unit.read_text() == expected

    message = autostart.uninstall()

    assert not unit.exists()
    assert "systemd user unit" in message
    assert ("disable", "--now", "claude-mailbox.service") in systemctl.calls
    assert autostart.state(_url(free_port())) is State.NOT_INSTALLED
    assert autostart.uninstall() == "No autostart entry was installed."


@linux_only
def test_without_a_user_systemd_install_runs_a_detached_daemon_and_says_so(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if autostart.user_systemd_available():  # only fake the bus where a real one exists
        monkeypatch.setattr(autostart, "_systemctl", FakeSystemctl(available=False))

    first = autostart.install(PYTHON)

    assert first.mechanism is Mechanism.DETACHED and first.changed
    assert "No service manager is usable" in first.message and str(paths.pid_file()) in first.message
    assert _wait_for(lambda: _answers(port))
    pid = int(paths.pid_file().read_text())

    second = autostart.install(PYTHON)

    assert not second.changed and "already running" in second.message
    assert int(paths.pid_file().read_text()) == pid

    autostart.uninstall()

    assert not psutil.pid_exists(pid)  # stopped and reaped
    assert autostart.state(_url(port)) is State.NOT_INSTALLED


def _user_systemd_reason() -> str | None:
    if not sys.platform.startswith("linux") or shutil.which("systemctl") is None:
        return "not Linux with systemctl"
    probe = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, text=True, timeout=5)
    if probe.returncode != 0:
        return f"no user systemd here: `systemctl --user show-environment` said {probe.stderr.strip()!r}"
    if not os.environ.get("XDG_RUNTIME_DIR"):
        return "XDG_RUNTIME_DIR is not set"
    return None


def test_real_user_systemd(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Linux path for real. The unit goes under a unique name into the user manager's runtime
    unit dir ($XDG_RUNTIME_DIR/systemd/user), not the real ~/.config, and is removed at the end."""
    reason = _user_systemd_reason()
    if reason:
        pytest.skip(reason)
    name = f"claude-mailbox-test-{uuid.uuid4().hex[:8]}.service"
    unit = Path(os.environ["XDG_RUNTIME_DIR"]) / "systemd" / "user" / name
    monkeypatch.setattr(autostart, "UNIT_NAME", name)
    monkeypatch.setattr(autostart._Systemd, "path", lambda self: unit)
    try:
        result = autostart.install(PYTHON)

        assert result.mechanism is Mechanism.SYSTEMD and result.changed
        assert _wait_for(lambda: _answers(port)), paths.log_file().read_text()
        assert not autostart.install(PYTHON).changed

        autostart.stop()
        assert autostart.state(_url(port)) is State.STOPPED
        assert autostart.ensure_running(_url(port), PYTHON, wait=15.0)  # through systemctl start
        assert not paths.pid_file().exists()  # systemd started it, not a detached spawn
    finally:
        autostart.uninstall()
    assert not unit.exists()
    assert autostart.state(_url(port)) is State.NOT_INSTALLED


# --- detached daemons, the start lock, stop ---------------------------------------------------------


def test_start_detached_and_stop_a_real_daemon(port: int, mailbox_home: Path) -> None:
    pid = autostart.start_detached(PYTHON, ("--port", str(port)))

    assert paths.pid_file().read_text().strip() == str(pid)
    assert _wait_for(lambda: _answers(port)), paths.log_file().read_text()
    assert MailboxClient(_url(port)).health(detailed=True)["dbPath"] == str(mailbox_home / "mailbox.db")
    assert autostart.state(_url(port)) is State.RUNNING
    if hasattr(os, "getsid"):
        assert os.getsid(pid) == pid  # its own session: no terminal, no SIGHUP from ours
    if sys.platform.startswith("linux"):
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{pid}/fd/1") == str(paths.log_file())
    assert "listening" in paths.log_file().read_text()

    assert autostart.stop()

    assert not psutil.pid_exists(pid)  # stopped and reaped
    assert not paths.pid_file().exists()
    assert autostart.state(_url(port)) is State.NOT_INSTALLED


def test_the_cli_starts_and_stops_the_daemon_of_its_data_dir(port: int, mailbox_home: Path) -> None:
    env = base_env(mailbox_home, CLAUDE_MAILBOX_URL=_url(port))
    started = run_cli("start", env=env, timeout=60)
    assert started.returncode == 0 and started.stdout.strip() == f"started the daemon at {_url(port)}", started
    pid = detached.pid_file_daemon()
    assert pid is not None and _answers(port)
    again = run_cli("start", "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout) == {"url": _url(port), "started": False}

    stopped = run_cli("stop", env=env, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"stopped the daemon at {_url(port)}; the next Claude Code session")
    assert not _answers(port) and _exited(pid) and not paths.pid_file().exists()
    nothing = run_cli("stop", env=env)
    assert nothing.returncode == 0 and nothing.stdout.startswith(f"no daemon runs at {_url(port)}"), nothing


def _exited(pid: int) -> bool:
    """Gone, or a zombie: the `start` process that spawned it has exited, and who reaps it depends on
    the machine's init."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_leaves_a_daemon_started_by_hand_running(mailbox_home: Path, tmp_path: Path) -> None:
    by_hand = start_daemon(tmp_path / "elsewhere")
    try:
        refused = run_cli("stop", env=base_env(mailbox_home, CLAUDE_MAILBOX_URL=by_hand.url), timeout=60)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused
        assert "was not started by this data dir's autostart" in refused.stderr
        assert _answers(by_hand.port)
    finally:
        by_hand.stop()


def test_start_leaves_a_remote_daemon_to_its_machine(mailbox_home: Path) -> None:
    refused = run_cli("start", env=base_env(mailbox_home, CLAUDE_MAILBOX_URL="http://192.0.2.1:4999"), timeout=60)
    assert refused.returncode == 1 and "runs on another machine: start it there" in refused.stderr, refused
    assert not paths.pid_file().exists() and not paths.log_file().exists()


def test_ensure_running_starts_the_real_daemon_on_the_urls_port(port: int, mailbox_home: Path) -> None:
    (mailbox_home / "config.toml").unlink()  # so only --port from the URL can put it there
    url = _url(port)

    assert autostart.ensure_running(url, PYTHON, wait=15.0), paths.log_file().read_text()
    pid = int(paths.pid_file().read_text())
    assert "--port" in psutil.Process(pid).cmdline() and str(port) in psutil.Process(pid).cmdline()

    started = time.monotonic()
    assert autostart.ensure_running(url, PYTHON, wait=15.0)
    assert time.monotonic() - started < 1.0
    assert int(paths.pid_file().read_text()) == pid


RACER = """
import sys, time
from pathlib import Path
from claude_mailbox.setup import autostart, detached, units

original = autostart.start_detached
def counted(python, extra_args=()):
    pid = original(python, extra_args)
    print("SPAWNED", pid, flush=True)
    return pid
autostart.start_detached = counted

time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print("UP" if autostart.ensure_running(sys.argv[1], Path(sys.executable), wait=20.0) else "DOWN", flush=True)
"""


def test_two_sessions_starting_at_once_start_one_daemon(port: int) -> None:
    go = str(time.time() + 1.5)  # both processes are imported and waiting by then
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, _url(port), go], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=60)[0] for racer in racers]

    assert all(output.strip().endswith("UP") for output in outputs), outputs
    spawned = [line for output in outputs for line in output.splitlines() if line.startswith("SPAWNED")]
    assert len(spawned) == 1, outputs
    assert [p.pid for p in _daemons_on(port)] == [int(spawned[0].split()[1])]


def test_only_the_lock_holder_starts_a_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock logic alone, fast: eight callers at once, a daemon that takes 0.3 s to answer."""
    up_at: list[float] = []
    spawns: list[tuple[str, ...]] = []

    def fake_start(python: Path, extra_args: tuple[str, ...] = ()) -> int:
        time.sleep(0.05)  # widen the window for a second spawn
        spawns.append(tuple(extra_args))
        up_at.append(time.monotonic() + 0.3)
        return 1

    monkeypatch.setattr(autostart, "start_detached", fake_start)
    monkeypatch.setattr(autostart, "_healthy", lambda url, timeout=0.5: bool(up_at) and time.monotonic() >= up_at[0])
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def caller() -> None:
        barrier.wait()
        results.append(autostart.ensure_running("http://127.0.0.1:38123", PYTHON, wait=3.0))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [True] * 8
    assert spawns == [("--port", "38123", "--bind", "127.0.0.1")]


def test_ensure_running_gives_up_after_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autostart, "start_detached", lambda python, extra_args=(): 1)
    started = time.monotonic()

    assert not autostart.ensure_running(_url(free_port()), PYTHON, wait=0.3)
    assert 0.3 <= time.monotonic() - started < 2.0


def test_ensure_running_reports_a_failed_start_as_false(tmp_path: Path) -> None:
    missing = tmp_path / "no venv" / "bin" / "python"

    assert not autostart.ensure_running(_url(free_port()), missing, wait=5.0)
    assert "could not start the daemon" in paths.log_file().read_text()


def test_restart_replaces_a_detached_daemon(port: int) -> None:
    url = _url(port)
    assert autostart.ensure_running(url, PYTHON, wait=15.0)
    old = int(paths.pid_file().read_text())

    assert autostart.restart(PYTHON, url, wait=15.0), paths.log_file().read_text()

    new = int(paths.pid_file().read_text())
    assert new != old and not psutil.pid_exists(old)
    assert [p.pid for p in _daemons_on(port)] == [new]


def test_stop_never_signals_a_process_that_is_not_the_daemon() -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        paths.pid_file().write_text(f"{bystander.pid}\n")  # a recycled pid

        assert not autostart.stop()  # nothing of ours to stop

        assert bystander.poll() is None
        assert not paths.pid_file().exists()  # stale: removed
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("content", ["", "not a pid\n", "999999999\n"])
def test_a_stale_or_garbled_pid_file_is_not_installed(content: str) -> None:
    paths.pid_file().write_text(content)

    assert autostart.state(_url(free_port())) is State.NOT_INSTALLED
    assert not paths.pid_file().exists()


# --- uninstall --purge, python choice, import weight -------------------------------------------------


def test_uninstall_purge_deletes_the_data_dir(mailbox_home: Path) -> None:
    (mailbox_home / "mailbox.db").write_text("x")

    message = autostart.uninstall(purge=True)

    assert not mailbox_home.exists()
    assert f"Deleted {mailbox_home.resolve()}" in message


def test_purge_refuses_a_data_dir_that_is_the_home(fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_MAILBOX_HOME", str(fake_home))

    with pytest.raises(MailboxError, match="refusing"):
        autostart.uninstall(purge=True)
    assert fake_home.exists()


def test_default_python_prefers_the_managed_venv(mailbox_home: Path) -> None:
    assert autostart.default_python() == PYTHON
    managed = paths.venv_python(paths.managed_venv_dir())
    managed.parent.mkdir(parents=True)
    managed.write_text("")

    assert autostart.default_python() == managed


def test_importing_autostart_stays_light() -> None:
    """The hooks' slow path imports it: the heavy modules load only where they are used."""
    heavy = ("psutil", "plistlib", "xml.etree.ElementTree", "asyncio", "aiohttp", "apsw", "argparse")
    code = f"import sys, claude_mailbox.setup.autostart; print([m for m in {heavy!r} if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
