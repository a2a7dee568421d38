"""The daemon as a detached process tracked by a pid file: how every mechanism's fallback (and the
on-demand start of a session hook) runs it, finds it again and stops it.

psutil is imported where it is used: the hooks' slow path imports this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from claude_mailbox import fsutil, locate, paths, portholder
from claude_mailbox.setup.units import SERVE

if TYPE_CHECKING:
    import psutil

POLL_INTERVAL = 0.05
STOP_TIMEOUT = 5.0
STARTUP_GRACE = 10.0  # a pid-file daemon younger than this is still starting: don't start another


def service_environment(python: Path) -> dict[str, str]:
    """What a unit must set so its daemon sees what this process sees."""
    env = {}
    home = os.environ.get(locate.HOME_ENV)
    if home:
        env[locate.HOME_ENV] = str(Path(home).resolve())
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
    with os.fdopen(fsutil.open_private(log, os.O_WRONLY | os.O_APPEND), "ab") as out:
        if sys.platform == "win32":
            flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
            try:  # CREATE_BREAKAWAY_FROM_JOB: outlive the hook's job object, unless the job forbids it
                proc = _popen(args, out, env, creationflags=flags | subprocess.CREATE_BREAKAWAY_FROM_JOB)
            except OSError:
                proc = _popen(args, out, env, creationflags=flags)
        else:  # a new session: no controlling terminal, no SIGHUP when the session ends
            proc = _popen(args, out, env, start_new_session=True)
    _CHILDREN.append(proc)
    write_pid_file(proc.pid)
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


def pid_file_daemon() -> int | None:
    """The pid in the pid file if it is a live claude-mailbox serve process; a stale file is removed."""
    try:
        words = paths.pid_file().read_text().split()
    except OSError:
        return None
    pid = int(words[0]) if words and words[0].isdigit() else None
    if pid is not None and is_daemon(pid):
        return pid
    paths.pid_file().unlink(missing_ok=True)  # written atomically, so never a half-written file
    return None


def is_daemon(pid: int) -> bool:
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.Error, ValueError, OverflowError):  # gone, zombie, or not ours to inspect
        return False
    return portholder.is_daemon_command(cmdline)


def starting_up() -> bool:
    import psutil

    pid = pid_file_daemon()
    if pid is None:
        return False
    try:
        return bool(time.time() - psutil.Process(pid).create_time() < STARTUP_GRACE)
    except psutil.Error:
        return False


def stop_pid_file_daemon() -> bool:
    import psutil

    pid = pid_file_daemon()
    if pid is None:
        return False
    with suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        process.terminate()  # SIGTERM on POSIX: the daemon shuts down cleanly
        if not _wait_exited(process, STOP_TIMEOUT):
            process.kill()
            _wait_exited(process, STOP_TIMEOUT)
    for child in [c for c in _CHILDREN if c.pid == pid]:
        # Reap our own child so it is not left a zombie. wait, not poll: a leader thread shows as a
        # zombie while the daemon's other threads still finish, and is not reapable until they have.
        with suppress(subprocess.TimeoutExpired):
            child.wait(STOP_TIMEOUT)
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


def append_to_log(line: str) -> None:
    with suppress(OSError):
        fd = fsutil.open_private(paths.log_file(), os.O_WRONLY | os.O_APPEND)
        with os.fdopen(fd, "a", encoding="utf-8") as log:
            log.write(line + "\n")


def write_pid_file(pid: int) -> None:
    fsutil.atomic_write(paths.pid_file(), f"{pid}\n")


def _source_root() -> Path | None:
    """daemon/ when this package runs from a checkout rather than from site-packages."""
    root = Path(__file__).resolve().parent.parent.parent
    return None if root.name in ("site-packages", "dist-packages") else root


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
