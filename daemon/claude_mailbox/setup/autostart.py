"""Keep the daemon running: register it with the user's service manager, start it on demand, stop it.

Mechanisms: a systemd --user unit (Linux), a launchd LaunchAgent (macOS), a Task Scheduler logon
task or, when schtasks is refused, an HKCU Run value (Windows). Where none is usable (a container
with no user bus), the daemon runs as a detached process tracked by a pid file.

The service definitions themselves are pure functions in `units`; the detached process and its
pid file live in `detached`. Imported by the hooks' slow path, so only stdlib modules that start
fast are imported at the top; psutil, plistlib, winreg and the XML builder are imported where used.
"""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from claude_mailbox import fsutil, locate, paths
from claude_mailbox.client import probe_health
from claude_mailbox.errors import MailboxError
from claude_mailbox.locate import Endpoint
from claude_mailbox.setup.detached import (
    POLL_INTERVAL,
    append_to_log,
    pid_file_daemon,
    service_environment,
    start_detached,
    starting_up,
    stop_pid_file_daemon,
    write_pid_file,
)
from claude_mailbox.setup.units import (
    LAUNCHD_LABEL,
    launchd_plist_bytes,
    schtasks_xml,
    systemd_unit_text,
    windows_command,
)

UNIT_NAME = "claude-mailbox.service"
TASK_NAME = "claude-mailbox"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "claude-mailbox"
COMMAND_TIMEOUT = 15.0


class Mechanism(enum.Enum):
    SYSTEMD = "systemd user unit"
    LAUNCHD = "launchd LaunchAgent"
    SCHTASKS = "Task Scheduler logon task"
    RUN_KEY = "HKCU Run registry value"
    DETACHED = "detached process with a pid file"


class State(enum.Enum):
    RUNNING = "Running"
    STOPPED = "Stopped"
    NOT_INSTALLED = "NotInstalled"


@dataclass(frozen=True)
class InstallResult:
    mechanism: Mechanism
    location: str  # the unit/plist/task XML file, the registry value, or the pid file
    changed: bool  # False when an identical definition was already in place
    message: str


# --- the mechanisms --------------------------------------------------------------------------------


class _Manager(Protocol):
    """One mechanism. `install` writes and activates the definition, returns whether it changed,
    and raises MailboxError; `start` returns whether the manager accepted the request."""

    mechanism: Mechanism

    def location(self) -> str: ...
    def installed(self) -> bool: ...
    def install(self, python: Path) -> bool: ...
    def start(self) -> bool: ...
    def stop(self) -> None: ...
    def remove(self) -> None: ...


def _systemctl(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Every systemctl call goes through here (tests replace it where no user systemd exists)."""
    return _run(["systemctl", "--user", *args], timeout)


def user_systemd_available() -> bool:
    return _systemctl("show-environment", timeout=2.0).returncode == 0


class _Systemd:
    mechanism = Mechanism.SYSTEMD

    def path(self) -> Path:
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config) / "systemd" / "user" / UNIT_NAME

    def location(self) -> str:
        return str(self.path())

    def installed(self) -> bool:
        return self.path().exists()

    def install(self, python: Path) -> bool:
        text = systemd_unit_text(python, service_environment(python), paths.log_file())
        changed = fsutil.write_if_changed(self.path(), text.encode("utf-8"))
        if changed:
            _check(_systemctl("daemon-reload"), "systemctl --user daemon-reload")
        _check(_systemctl("enable", UNIT_NAME), f"systemctl --user enable {UNIT_NAME}")
        _check(_systemctl("restart" if changed else "start", UNIT_NAME), f"systemctl --user start {UNIT_NAME}")
        return changed

    def start(self) -> bool:
        return _systemctl("start", UNIT_NAME).returncode == 0

    def stop(self) -> None:
        _systemctl("stop", UNIT_NAME)

    def remove(self) -> None:
        _systemctl("disable", "--now", UNIT_NAME)
        # Without a user bus `disable` fails; remove its symlink by hand so nothing dangles.
        (self.path().parent / "default.target.wants" / UNIT_NAME).unlink(missing_ok=True)
        self.path().unlink(missing_ok=True)
        _systemctl("daemon-reload")


def _launchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return _run(["launchctl", *args], COMMAND_TIMEOUT)


class _Launchd:
    mechanism = Mechanism.LAUNCHD

    def path(self) -> Path:
        return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"

    def location(self) -> str:
        return str(self.path())

    def installed(self) -> bool:
        return self.path().exists()

    def _service(self) -> str:
        if sys.platform == "win32":  # never true here; tells type checkers os.getuid exists below
            raise MailboxError("launchd exists only on macOS")
        return f"gui/{os.getuid()}/{LAUNCHD_LABEL}"

    def _loaded(self) -> bool:
        return _launchctl("print", self._service()).returncode == 0

    def install(self, python: Path) -> bool:
        data = launchd_plist_bytes(python, service_environment(python), paths.log_file())
        changed = fsutil.write_if_changed(self.path(), data)
        if changed and self._loaded():
            self.stop()  # launchd keeps the old definition until the agent is booted out
        if not self.start():
            raise MailboxError(f"launchctl could not load {self.path()}")
        return changed

    def start(self) -> bool:
        if self._loaded():
            return _launchctl("kickstart", self._service()).returncode == 0
        domain = self._service().rsplit("/", 1)[0]
        if _launchctl("bootstrap", domain, str(self.path())).returncode == 0:
            return True  # RunAtLoad starts it
        # bootstrap is refused outside a GUI login (ssh); the legacy verb still works there.
        return _launchctl("load", "-w", str(self.path())).returncode == 0

    def stop(self) -> None:
        _launchctl("bootout", self._service())

    def remove(self) -> None:
        self.stop()
        self.path().unlink(missing_ok=True)


def _schtasks(*args: str) -> subprocess.CompletedProcess[str]:
    return _run(["schtasks", *args], COMMAND_TIMEOUT)


class _SchedulerRefused(MailboxError):
    """schtasks could not register the task (access denied, group policy): use the Run key."""


class _ScheduledTask:
    mechanism = Mechanism.SCHTASKS

    def path(self) -> Path:
        return paths.data_dir() / "autostart-task.xml"  # kept: the definition schtasks registered

    def location(self) -> str:
        return f"task {TASK_NAME!r} (definition {self.path()})"

    def installed(self) -> bool:
        return _schtasks("/Query", "/TN", TASK_NAME).returncode == 0

    def install(self, python: Path) -> bool:
        user = "\\".join(filter(None, [os.environ.get("USERDOMAIN"), os.environ.get("USERNAME")])) or None
        xml = schtasks_xml(_windowless(python), service_environment(python), paths.log_file(), user=user)
        changed = fsutil.write_if_changed(self.path(), xml.encode("utf-16"))  # the encoding it declares
        if changed or not self.installed():
            result = _schtasks("/Create", "/TN", TASK_NAME, "/XML", str(self.path()), "/F")
            if result.returncode != 0:
                self.path().unlink(missing_ok=True)
                raise _SchedulerRefused((result.stderr or result.stdout).strip())
            self.stop()  # a running daemon keeps the old interpreter until restarted
            stop_pid_file_daemon()
            changed = True
        if not pid_file_daemon() and not self.start():
            raise MailboxError(f"schtasks could not run the task {TASK_NAME!r}")
        return changed

    def start(self) -> bool:
        return _schtasks("/Run", "/TN", TASK_NAME).returncode == 0

    def stop(self) -> None:
        _schtasks("/End", "/TN", TASK_NAME)

    def remove(self) -> None:
        _schtasks("/Delete", "/TN", TASK_NAME, "/F")
        self.path().unlink(missing_ok=True)


class _RunKey:
    """HKCU Run value. The platform checks also tell type checkers where winreg exists."""

    mechanism = Mechanism.RUN_KEY

    def location(self) -> str:
        return f"HKCU\\{RUN_KEY}\\{RUN_VALUE}"

    def _read(self) -> str | None:
        if sys.platform != "win32":
            raise MailboxError("the Run key exists only on Windows")
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
                return str(winreg.QueryValueEx(key, RUN_VALUE)[0])
        except OSError:
            return None

    def installed(self) -> bool:
        return self._read() is not None

    def install(self, python: Path) -> bool:
        if sys.platform != "win32":
            raise MailboxError("the Run key exists only on Windows")
        import winreg

        command = windows_command(_windowless(python), service_environment(python), paths.log_file())
        value = subprocess.list2cmdline(command)
        changed = self._read() != value
        if changed:
            with winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
                winreg.SetValueEx(key, RUN_VALUE, 0, winreg.REG_SZ, value)
            stop_pid_file_daemon()  # it may run an older interpreter
        if not pid_file_daemon():
            start_detached(python)  # the Run value only acts at the next logon
        return changed

    def start(self) -> bool:
        return False  # nothing to ask: the caller starts a detached daemon

    def stop(self) -> None:
        pass  # the pid file covers it: `launch` writes one

    def remove(self) -> None:
        if sys.platform != "win32":
            raise MailboxError("the Run key exists only on Windows")
        import winreg

        with suppress(OSError), winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
            winreg.DeleteValue(key, RUN_VALUE)


def _platform_managers() -> list[_Manager]:
    """Every mechanism this OS could have installed, preferred first."""
    if sys.platform == "darwin":
        return [_Launchd()]
    if sys.platform == "win32":
        return [_ScheduledTask(), _RunKey()]
    return [_Systemd()]


def installed_mechanism() -> Mechanism | None:
    manager = _installed_manager()
    return manager.mechanism if manager else None


def _installed_manager() -> _Manager | None:
    return next((m for m in _platform_managers() if m.installed()), None)


def installed_location() -> str | None:
    """Where the installed autostart entry lives (unit file, plist, task, registry value), or None."""
    manager = _installed_manager()
    return manager.location() if manager else None


def detached_pid() -> int | None:
    """The pid of a live daemon started detached (pid file), or None. Used by doctor and status."""
    return pid_file_daemon()


# --- public operations -----------------------------------------------------------------------------


def install(python: Path, url: str | None = None) -> InstallResult:
    """Register the daemon to start at login and start it now. Safe to run again. `url` (default:
    the resolved address) is where a detached daemon listens."""
    manager = _installed_manager() or _platform_managers()[0]
    reason = ""
    if isinstance(manager, _Systemd) and not user_systemd_available():
        why = "systemctl --user cannot reach a user service manager here"
        return _install_detached(python, locate.daemon_url(url), why)
    if not manager.installed():
        stop_pid_file_daemon()  # a daemon started on demand would hold the port the managed one needs
    try:
        changed = manager.install(python)
    except _SchedulerRefused as refused:
        reason = f" (schtasks refused the logon task: {refused.message or 'no reason given'})"
        manager = _RunKey()
        changed = manager.install(python)
    verb = "installed" if changed else "already installed"
    message = f"claude-mailbox daemon {verb} as a {manager.mechanism.value}: {manager.location()}{reason}"
    return InstallResult(manager.mechanism, manager.location(), changed, message)


def _install_detached(python: Path, url: str, why: str) -> InstallResult:
    pid = pid_file_daemon()
    changed = pid is None
    if pid is None:
        pid = start_detached(python, serve_args(url))
    message = (
        f"claude-mailbox daemon {'started' if changed else 'already running'} as a {Mechanism.DETACHED.value}: "
        f"{paths.pid_file()} (pid {pid}). No service manager is usable ({why}), so nothing starts it at "
        "login; Claude Code sessions start it again on demand."
    )
    return InstallResult(Mechanism.DETACHED, str(paths.pid_file()), changed, message)


def uninstall(purge: bool = False) -> str:
    """Stop the daemon and remove every autostart entry; `purge` also deletes the data dir."""
    stop()
    removed = []
    for manager in _platform_managers():
        if manager.installed():
            manager.remove()
            removed.append(f"{manager.mechanism.value} ({manager.location()})")
    paths.pid_file().unlink(missing_ok=True)
    message = "Removed " + ", ".join(removed) + "." if removed else "No autostart entry was installed."
    if purge:
        message += " " + _purge_data_dir()
    return message


def _purge_data_dir() -> str:
    import shutil

    data = paths.data_dir().resolve()
    if data == Path.home().resolve() or data == Path(data.anchor):
        raise MailboxError(f"refusing to delete {data}: CLAUDE_MAILBOX_HOME points at a home or root directory")
    if not data.exists():
        return f"{data} did not exist."
    try:
        shutil.rmtree(data)
    except OSError as exc:
        raise MailboxError(f"could not delete {data}: {exc}") from None
    return f"Deleted {data}."


def state(url: str | None = None) -> State:
    if _healthy(locate.daemon_url(url)):
        return State.RUNNING
    if _installed_manager() or pid_file_daemon():
        return State.STOPPED
    return State.NOT_INSTALLED


def default_python() -> Path:
    """The managed venv's interpreter when doctor has created it, else the one running now."""
    managed = paths.venv_python(paths.managed_venv_dir())
    return managed if managed.exists() else Path(sys.executable)


def ensure_running(url: str | None = None, python: Path | None = None, wait: float = 2.0) -> bool:
    """True once /health answers at `url` (default: the resolved address). Only the holder of the
    start lock starts a daemon."""
    url = locate.daemon_url(url)
    if _healthy(url):
        return True
    if not Endpoint.parse(url).is_loopback:  # a remote daemon (issue 13) is started on its own machine, not here
        return False
    deadline = time.monotonic() + wait
    with fsutil.file_lock(paths.start_lock_file()) as held:
        # Re-check under the lock: whoever held it before us may have just started one.
        if held and not _healthy(url) and not starting_up():
            try:
                _start(url, python or default_python())
            except (OSError, MailboxError) as exc:  # callers are hooks: a bool, never a traceback
                append_to_log(f"claude-mailbox: could not start the daemon: {exc}")
                return False
        # The holder polls while still holding the lock, so no one starts a second daemon meanwhile.
        return _wait_healthy(url, deadline)


def _start(url: str, python: Path) -> None:
    manager = _installed_manager()
    if manager is not None and manager.start():
        return
    start_detached(python, serve_args(url))


def serve_args(url: str) -> list[str]:
    """`serve` arguments that make the daemon listen where `url` points (its port and its host:
    0.0.0.0 or a public address is refused by serve itself)."""
    endpoint = Endpoint.parse(url)
    return ["--port", str(endpoint.port), "--bind", endpoint.connect_host]


def stop() -> bool:
    """Stop the daemon through its service manager, then any daemon the pid file names.

    False when neither exists: a daemon started by hand (`claude-mailbox serve`) is not ours to stop.
    """
    manager = _installed_manager()
    if manager is not None:
        manager.stop()
    stopped = stop_pid_file_daemon()
    return stopped or manager is not None


def restart(python: Path | None = None, url: str | None = None, wait: float = 5.0) -> bool:
    """Stop, refresh the service definition for `python` (version sync), start; True once healthy."""
    python = python or default_python()
    stop()
    manager = _installed_manager()
    if manager is not None:
        with suppress(MailboxError):  # no user bus right now: ensure_running starts it detached
            manager.install(python)  # rewrites only if the interpreter or environment changed
    return ensure_running(url, python, wait)


# --- helpers ---------------------------------------------------------------------------------------


def _healthy(url: str, timeout: float = 0.5) -> bool:
    return probe_health(url, timeout) is not None


def _wait_healthy(url: str, deadline: float) -> bool:
    while True:
        if _healthy(url):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """A service-manager command; a missing binary or a hang reads as a failed command."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(args, 127, "", str(exc))


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise MailboxError(f"{what} failed: {(result.stderr or result.stdout).strip() or result.returncode}")


def _windowless(python: Path) -> Path:
    """pythonw.exe beside python.exe: a logon task with python.exe would open a console window."""
    candidate = python.with_name("pythonw.exe")
    return candidate if python.name.lower() == "python.exe" and candidate.exists() else python


# --- `python -m claude_mailbox.setup.autostart --log L [--env K=V]... serve [args]` (Windows entries) ----


def launch(argv: Sequence[str]) -> None:
    """Apply the environment, send output to the log, record the pid, then run the CLI in-process."""
    import argparse
    import runpy

    parser = argparse.ArgumentParser(prog="claude_mailbox.setup.autostart")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    for assignment in args.env:
        key, _, value = assignment.partition("=")
        os.environ[key] = value
    args.log.parent.mkdir(parents=True, exist_ok=True)
    fd = fsutil.open_private(args.log, os.O_WRONLY | os.O_APPEND)
    log = open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log  # pythonw starts with None here
    write_pid_file(os.getpid())
    sys.argv = ["claude_mailbox", *args.command]
    runpy.run_module("claude_mailbox", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    launch(sys.argv[1:])
