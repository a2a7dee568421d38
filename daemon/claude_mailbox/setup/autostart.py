"""Keep the daemon running: register it with the user's service manager, start it on demand, stop it.

Mechanisms: a systemd --user unit (Linux), a launchd LaunchAgent (macOS), a Task Scheduler logon
task or, when schtasks is refused, an HKCU Run value (Windows). Where none is usable (a container
with no user bus), the daemon runs as a detached process tracked by a pid file.

Imported by the hooks' slow path, so only stdlib modules that start fast are imported at the top;
psutil, plistlib, winreg and the XML builder are imported where they are used.
"""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, BinaryIO, Protocol

from claude_mailbox import paths
from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import MailboxError
from claude_mailbox.httpclient import Endpoint

if TYPE_CHECKING:
    import psutil

UNIT_NAME = "claude-mailbox.service"
LAUNCHD_LABEL = "dev.claude-mailbox.daemon"
TASK_NAME = "claude-mailbox"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "claude-mailbox"
SERVE = ("-m", "claude_mailbox", "serve")
POLL_INTERVAL = 0.05
STOP_TIMEOUT = 5.0
STARTUP_GRACE = 10.0  # a pid-file daemon younger than this is still starting: don't start another
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


# --- pure generators: explicit inputs, no I/O; PurePath so tests can pass Windows paths anywhere ----


def systemd_unit_text(python: PurePath, env: Mapping[str, str], log: PurePath) -> str:
    exec_start = " ".join(_systemd_quote(word, exec_word=True) for word in (str(python), *SERVE))
    lines = [
        "[Unit]",
        "Description=claude-mailbox daemon (messages between parallel Claude Code sessions)",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        *(f"Environment={_systemd_quote(f'{key}={value}', exec_word=False)}" for key, value in env.items()),
        # append: needs systemd >= 240; older versions ignore it and log to the journal.
        f"StandardOutput=append:{_systemd_escape_specifiers(str(log))}",
        f"StandardError=append:{_systemd_escape_specifiers(str(log))}",
        "Restart=on-failure",
        "RestartSec=2",
        "TimeoutStopSec=10",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def launchd_plist_bytes(python: PurePath, env: Mapping[str, str], log: PurePath) -> bytes:
    import plistlib

    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [str(python), *SERVE],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a crash, not after a clean stop
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
        "EnvironmentVariables": dict(env),
        "ProcessType": "Background",
    }
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=True)


def windows_command(python: PurePath, env: Mapping[str, str], log: PurePath) -> list[str]:
    """Task Scheduler and Run values carry neither environment nor output redirection, so the
    daemon is started through `launch` below, which applies both before running `serve`."""
    args = [str(python), "-m", "claude_mailbox.setup.autostart", "--log", str(log)]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return [*args, "serve"]


def schtasks_xml(python: PurePath, env: Mapping[str, str], log: PurePath, user: str | None = None) -> str:
    import xml.etree.ElementTree as ET

    ns = "http://schemas.microsoft.com/windows/2004/02/mit/task"
    task = ET.Element("Task", {"version": "1.2", "xmlns": ns})

    def add(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
        child = ET.SubElement(parent, tag)
        child.text = text
        return child

    add(add(task, "RegistrationInfo"), "Description", "Starts the claude-mailbox daemon at logon.")
    trigger = add(add(task, "Triggers"), "LogonTrigger")
    add(trigger, "Enabled", "true")
    principal = add(task, "Principals")
    principal = add(principal, "Principal")
    principal.set("id", "Author")
    if user:
        add(trigger, "UserId", user)
        add(principal, "UserId", user)
    add(principal, "LogonType", "InteractiveToken")
    add(principal, "RunLevel", "LeastPrivilege")  # no admin rights, no UAC prompt
    settings = add(task, "Settings")
    for tag, text in (
        ("MultipleInstancesPolicy", "IgnoreNew"),
        ("DisallowStartIfOnBatteries", "false"),
        ("StopIfGoingOnBatteries", "false"),
        ("ExecutionTimeLimit", "PT0S"),  # the default (72 h) would kill a long-lived daemon
        ("Enabled", "true"),
    ):
        add(settings, tag, text)
    restart = add(settings, "RestartOnFailure")
    add(restart, "Interval", "PT1M")
    add(restart, "Count", "3")
    actions = add(task, "Actions")
    actions.set("Context", "Author")
    exe = add(actions, "Exec")
    command = windows_command(python, env, log)
    add(exe, "Command", command[0])
    add(exe, "Arguments", subprocess.list2cmdline(command[1:]))
    # `-m` also searches the working directory: lets a source checkout run without an install.
    add(exe, "WorkingDirectory", env.get("PYTHONPATH") or str(log.parent))
    ET.indent(task)
    return '<?xml version="1.0" encoding="UTF-16"?>\n' + ET.tostring(task, encoding="unicode") + "\n"


def _systemd_escape_specifiers(text: str) -> str:
    return text.replace("%", "%%")


def _systemd_quote(word: str, *, exec_word: bool) -> str:
    """One ExecStart word or Environment assignment; `$` is only special in ExecStart."""
    text = _systemd_escape_specifiers(word)
    if exec_word:
        text = text.replace("$", "$$")
    if text and not any(c in text for c in " \t\n\"'\\;"):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


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
        changed = _write_if_changed(self.path(), text.encode("utf-8"))
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
        changed = _write_if_changed(self.path(), data)
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
        changed = _write_if_changed(self.path(), xml.encode("utf-16"))  # the encoding it declares
        if changed or not self.installed():
            result = _schtasks("/Create", "/TN", TASK_NAME, "/XML", str(self.path()), "/F")
            if result.returncode != 0:
                self.path().unlink(missing_ok=True)
                raise _SchedulerRefused((result.stderr or result.stdout).strip())
            self.stop()  # a running daemon keeps the old interpreter until restarted
            _stop_pid_file_daemon()
            changed = True
        if not _pid_file_daemon() and not self.start():
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
            _stop_pid_file_daemon()  # it may run an older interpreter
        if not _pid_file_daemon():
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
    return _pid_file_daemon()


# --- public operations -----------------------------------------------------------------------------


def install(python: Path) -> InstallResult:
    """Register the daemon to start at login and start it now. Safe to run again."""
    manager = _installed_manager() or _platform_managers()[0]
    reason = ""
    if isinstance(manager, _Systemd) and not user_systemd_available():
        return _install_detached(python, "systemctl --user cannot reach a user service manager here")
    if not manager.installed():
        _stop_pid_file_daemon()  # a daemon started on demand would hold the port the managed one needs
    try:
        changed = manager.install(python)
    except _SchedulerRefused as refused:
        reason = f" (schtasks refused the logon task: {refused.message or 'no reason given'})"
        manager = _RunKey()
        changed = manager.install(python)
    verb = "installed" if changed else "already installed"
    message = f"claude-mailbox daemon {verb} as a {manager.mechanism.value}: {manager.location()}{reason}"
    return InstallResult(manager.mechanism, manager.location(), changed, message)


def _install_detached(python: Path, why: str) -> InstallResult:
    pid = _pid_file_daemon()
    changed = pid is None
    if pid is None:
        pid = start_detached(python)
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


def state(url: str = paths.DEFAULT_URL) -> State:
    if _healthy(url):
        return State.RUNNING
    if _installed_manager() or _pid_file_daemon():
        return State.STOPPED
    return State.NOT_INSTALLED


def default_python() -> Path:
    """The managed venv's interpreter when doctor has created it, else the one running now."""
    managed = paths.venv_python(paths.managed_venv_dir())
    return managed if managed.exists() else Path(sys.executable)


def service_environment(python: Path) -> dict[str, str]:
    """What a unit must set so its daemon sees what this process sees."""
    env = {}
    home = os.environ.get("CLAUDE_MAILBOX_HOME")
    if home:
        env["CLAUDE_MAILBOX_HOME"] = str(Path(home).resolve())
    source = _source_root()
    # The same interpreter from a source checkout (the hook launcher adds daemon/ to sys.path)
    # cannot import the package by itself; another interpreter runs its own installed copy, and so
    # does the managed venv's (the hooks run it too): its copy is the plugin's version, and a
    # PYTHONPATH into a plugin root would pin the daemon to a cache dir that an update replaces.
    # (Compared as paths: every venv's python is a symlink to the same base interpreter.)
    managed = os.path.abspath(paths.venv_python(paths.managed_venv_dir()))
    if source and _same_file(python, Path(sys.executable)) and os.path.abspath(python) != managed:
        env["PYTHONPATH"] = str(source)
    return env


def start_detached(python: Path, extra_args: Sequence[str] = ()) -> int:
    """Spawn `python -m claude_mailbox serve` outside this session; returns its pid."""
    log = paths.log_file()
    log.parent.mkdir(parents=True, exist_ok=True)
    extra = service_environment(python)
    env = {**os.environ, **extra}
    if "PYTHONPATH" in extra and os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = extra["PYTHONPATH"] + os.pathsep + os.environ["PYTHONPATH"]
    args = [str(python), *SERVE, *extra_args]
    with open(log, "ab") as out:
        if sys.platform == "win32":
            flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
            try:  # CREATE_BREAKAWAY_FROM_JOB: outlive the hook's job object, unless the job forbids it
                proc = _popen(args, out, env, creationflags=flags | subprocess.CREATE_BREAKAWAY_FROM_JOB)
            except OSError:
                proc = _popen(args, out, env, creationflags=flags)
        else:  # a new session: no controlling terminal, no SIGHUP when the session ends
            proc = _popen(args, out, env, start_new_session=True)
    _CHILDREN.append(proc)
    _write_pid_file(proc.pid)
    return proc.pid


# Kept so Popen.__del__ never warns "subprocess is still running": outliving us is the point.
_CHILDREN: list[subprocess.Popen[bytes]] = []


def _popen(
    args: list[str], out: BinaryIO, env: dict[str, str], *, creationflags: int = 0, start_new_session: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(paths.data_dir()),
        close_fds=True,  # the child must not inherit the start lock
        creationflags=creationflags,
        start_new_session=start_new_session,
    )


def ensure_running(url: str = paths.DEFAULT_URL, python: Path | None = None, wait: float = 2.0) -> bool:
    """True once /health answers. Only the holder of the start lock starts a daemon."""
    if _healthy(url):
        return True
    deadline = time.monotonic() + wait
    with _start_lock() as held:
        # Re-check under the lock: whoever held it before us may have just started one.
        if held and not _healthy(url) and not _starting_up():
            try:
                _start(url, python or default_python())
            except (OSError, MailboxError) as exc:  # callers are hooks: a bool, never a traceback
                _append_to_log(f"claude-mailbox: could not start the daemon: {exc}")
                return False
        # The holder polls while still holding the lock, so no one starts a second daemon meanwhile.
        return _wait_healthy(url, deadline)


def _start(url: str, python: Path) -> None:
    manager = _installed_manager()
    if manager is not None and manager.start():
        return
    start_detached(python, ("--port", str(Endpoint.parse(url).port)))


def stop() -> bool:
    """Stop the daemon through its service manager, then any daemon the pid file names.

    False when neither exists: a daemon started by hand (`claude-mailbox serve`) is not ours to stop.
    """
    manager = _installed_manager()
    if manager is not None:
        manager.stop()
    stopped = _stop_pid_file_daemon()
    return stopped or manager is not None


def restart(python: Path | None = None, url: str = paths.DEFAULT_URL, wait: float = 5.0) -> bool:
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
    try:
        MailboxClient(url, timeout=timeout).health()
    except MailboxError:
        return False
    return True


def _wait_healthy(url: str, deadline: float) -> bool:
    while True:
        if _healthy(url):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


@contextmanager
def _start_lock() -> Iterator[bool]:
    """An exclusive, non-blocking lock on start.lock; yields whether this process holds it."""
    try:
        paths.start_lock_file().parent.mkdir(parents=True, exist_ok=True)
        handle = open(paths.start_lock_file(), "a+b")  # noqa: SIM115 - closed below
    except OSError:  # an unwritable data dir: starting would fail anyway
        yield False
        return
    with handle:
        try:
            if sys.platform == "win32":
                import msvcrt

                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            if sys.platform == "win32":
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
            # POSIX: closing the file releases the flock.


def _pid_file_daemon() -> int | None:
    """The pid in the pid file if it is a live claude-mailbox serve process; a stale file is removed."""
    try:
        words = paths.pid_file().read_text().split()
    except OSError:
        return None
    pid = int(words[0]) if words and words[0].isdigit() else None
    if pid is not None and _is_daemon(pid):
        return pid
    paths.pid_file().unlink(missing_ok=True)  # written atomically, so never a half-written file
    return None


def _is_daemon(pid: int) -> bool:
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.Error, ValueError, OverflowError):  # gone, zombie, or not ours to inspect
        return False
    names = [Path(arg).name for arg in cmdline]
    # `python -m claude_mailbox serve`, `-m claude_mailbox.setup.autostart ... serve`, or `claude-mailbox serve`
    ours = any(a.startswith("claude_mailbox") for a in cmdline) or any(n.startswith("claude-mailbox") for n in names)
    return ours and "serve" in cmdline


def _starting_up() -> bool:
    import psutil

    pid = _pid_file_daemon()
    if pid is None:
        return False
    try:
        return bool(time.time() - psutil.Process(pid).create_time() < STARTUP_GRACE)
    except psutil.Error:
        return False


def _stop_pid_file_daemon() -> bool:
    import psutil

    pid = _pid_file_daemon()
    if pid is None:
        return False
    with suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        process.terminate()  # SIGTERM on POSIX: the daemon shuts down cleanly
        if not _wait_exited(process, STOP_TIMEOUT):
            process.kill()
            _wait_exited(process, STOP_TIMEOUT)
    for child in [c for c in _CHILDREN if c.pid == pid]:
        child.poll()  # reap our own child so it is not left a zombie
        _CHILDREN.remove(child)
    paths.pid_file().unlink(missing_ok=True)
    return True


def _wait_exited(process: psutil.Process, timeout: float) -> bool:
    """Poll rather than psutil's wait(): that waits for the reaping too, and an init that reaps
    orphans late (some containers) would make every stop take seconds."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(POLL_INTERVAL)
    return False


def _append_to_log(line: str) -> None:
    with suppress(OSError), open(paths.log_file(), "a", encoding="utf-8") as log:
        log.write(line + "\n")


def _write_pid_file(pid: int) -> None:
    target = paths.pid_file()
    temp = target.with_name(target.name + ".tmp")
    temp.write_text(f"{pid}\n")
    os.replace(temp, target)


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(data)
    os.replace(temp, path)
    return True


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


def _source_root() -> Path | None:
    """daemon/ when this package runs from a checkout rather than from site-packages."""
    root = Path(__file__).resolve().parent.parent.parent
    return None if root.name in ("site-packages", "dist-packages") else root


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


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
    log = open(args.log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log  # pythonw starts with None here
    _write_pid_file(os.getpid())
    sys.argv = ["claude_mailbox", *args.command]
    runpy.run_module("claude_mailbox", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    launch(sys.argv[1:])
