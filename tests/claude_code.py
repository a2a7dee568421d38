"""Run the real Claude Code CLI (installed by scripts/install-tools.sh) offline in tests.

Pair it with tests/fake_anthropic.py::

    import pytest
    from claude_code import run_claude
    from fake_anthropic import FakeAnthropic

    # the `claude_bin` fixture (tests/conftest.py) is require_claude(): CI fails if missing, locally skips
    @pytest.mark.claude_code
    def test_x(claude_bin, tmp_path):
        with FakeAnthropic() as api:
            res = run_claude("hi", plugin_dir=PLUGIN, home=tmp_path / "home", fake_api_url=api.url)
        assert res.returncode == 0, res.stderr

Every run gets a private HOME (so no user settings, plugins or credentials leak in), the
Claude-Code-specific variables of the calling environment are stripped (pytest may itself run
inside a Claude Code session), and non-essential traffic is off. Nothing leaves 127.0.0.1.

Facts that shape this module (Claude Code 2.1.330, see notes/cc-findings.md):
- ``claude -p`` waits for running ``async`` hooks before it exits: up to the hook's
  ``timeout`` (then SIGTERM), or about 30 s without one (then SIGKILL).
- An ``asyncRewake`` Stop hook that exits 2 starts a new turn only while the session is
  alive: use :class:`ClaudeStream` (stream-json input kept open), not plain ``-p``.
- At an interactive exit Claude Code SIGTERMs each running async hook's process group and waits
  until the group is empty (about 1.4 s at most, then SIGKILL): :class:`ClaudeTty` drives it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".tools" / "node_modules" / ".bin" / "claude"
INSTALL_HINT = "run scripts/install-tools.sh"

# Variables that would make the child believe it runs inside another Claude Code session,
# point it at a real API, or at another config dir. Stripped from the inherited environment.
_STRIP_PREFIXES = ("CLAUDE", "ANTHROPIC", "MCP_", "OTEL_")
_STRIP_EXACT = frozenset(
    {
        "AI_AGENT",
        "ENABLE_TOOL_SEARCH",
        "DISABLE_AUTOUPDATER",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "XDG_CONFIG_HOME",
    }
)

__all__ = [
    "INSTALL_HINT",
    "TOOLS_BIN",
    "ClaudeResult",
    "ClaudeStream",
    "ClaudeTty",
    "claude_binary",
    "claude_env",
    "new_debug_file",
    "require_claude",
    "run_claude",
]


def claude_binary() -> Path | None:
    """Path of the pinned Claude Code CLI in <repo>/.tools, or None when it is not installed.
    $MAILBOX_TEST_CLAUDE_BIN runs the tests against another build (e.g. 2.1.197, which Node 20's npm
    picks); not a CLAUDE_ name, which the test fixtures strip."""
    override = os.environ.get("MAILBOX_TEST_CLAUDE_BIN")
    binary = Path(override) if override else TOOLS_BIN
    if binary.exists() and os.access(binary, os.X_OK):
        return binary
    return None


def require_claude() -> Path:
    """The CLI path, for use in a fixture. Missing binary: pytest.fail under CI, skip locally."""
    import pytest

    binary = claude_binary()
    if binary is None:
        msg = f"Claude Code CLI not found at {TOOLS_BIN}: {INSTALL_HINT}"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return binary


def claude_env(
    *,
    home: Path | str,
    fake_api_url: str | None,
    env_extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for one offline Claude Code run (private HOME, fake API, no extra traffic)."""
    src = os.environ if base is None else base
    env = {k: v for k, v in src.items() if not k.startswith(_STRIP_PREFIXES) and k not in _STRIP_EXACT}
    env.update(
        HOME=str(home),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        ENABLE_TOOL_SEARCH="false",
        ANTHROPIC_API_KEY="dummy",
        NO_PROXY="127.0.0.1,localhost",
    )
    if fake_api_url:
        env["ANTHROPIC_BASE_URL"] = fake_api_url
    if env_extra:
        env.update(env_extra)
    return env


class ClaudeResult(subprocess.CompletedProcess):
    """CompletedProcess plus what a test usually wants to look at after the run."""

    def __init__(
        self,
        args: Any,
        returncode: int,
        stdout: str,
        stderr: str,
        *,
        home: Path,
        cwd: Path,
        debug_file: Path,
        debug_log: str,
        wall: float,
        timed_out: bool,
    ) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.home = home
        self.cwd = cwd
        self.debug_file = debug_file
        self.debug_log = debug_log  # text of the --debug-file, read before any temp HOME is removed
        self.wall = wall
        self.timed_out = timed_out

    def explain(self) -> str:
        """A failure message: exit code, stdout, stderr and the tail of the debug log."""
        tail = "\n".join(self.debug_log.splitlines()[-60:])
        return (
            f"claude exited {self.returncode} after {self.wall:.1f}s (timed_out={self.timed_out})\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}\n"
            f"--- debug log tail ({self.debug_file}) ---\n{tail}"
        )


def _build_args(
    binary: Path,
    *,
    plugin_dirs: Sequence[Path | str],
    allowed_tools: Iterable[str],
    debug_file: Path,
    model: str | None,
    extra_args: Sequence[str],
) -> list[str]:
    args = [str(binary)]
    for d in plugin_dirs:
        args += ["--plugin-dir", str(d)]
    tools = [t for t in allowed_tools if t]
    if tools:
        # The option is variadic: one comma-joined value, and the prompt after "--" below.
        args += ["--allowedTools", ",".join(tools)]
    if model:
        args += ["--model", model]
    args += ["--debug-file", str(debug_file), *extra_args]
    return args


def _session_plan(
    home: Path | str,
    cwd: Path | str | None,
    binary: Path | None,
    plugin_dir: Path | str | Sequence[Path | str] | None,
    *,
    allowed_tools: Iterable[str] = (),
    model: str | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[Path, Path, Path, list[str]]:
    """A long-lived session's home and project dir (created), its fresh debug file and its argv."""
    binary = binary or claude_binary()
    if binary is None:
        raise FileNotFoundError(f"Claude Code CLI not found at {TOOLS_BIN}: {INSTALL_HINT}")
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    project = Path(cwd) if cwd is not None else home / "project"
    project.mkdir(parents=True, exist_ok=True)
    debug_file = new_debug_file(home)
    args = _build_args(
        binary,
        plugin_dirs=_plugin_dirs(plugin_dir),
        allowed_tools=allowed_tools,
        debug_file=debug_file,
        model=model,
        extra_args=extra_args,
    )
    return home, project, debug_file, args


def new_debug_file(directory: Path) -> Path:
    """A fresh, empty --debug-file for one run: Claude Code appends to the file it is given, so a
    shared one would mix the logs of every run in a HOME (and a test would read an older run's)."""
    handle, name = tempfile.mkstemp(prefix="claude-debug-", suffix=".log", dir=directory)
    os.close(handle)
    return Path(name)


def _plugin_dirs(plugin_dir: Path | str | Sequence[Path | str] | None) -> list[Path | str]:
    if plugin_dir is None:
        return []
    if isinstance(plugin_dir, (str, Path)):
        return [plugin_dir]
    return list(plugin_dir)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_claude(
    prompt: str,
    *,
    fake_api_url: str | None,
    plugin_dir: Path | str | Sequence[Path | str] | None = None,
    home: Path | str | None = None,
    cwd: Path | str | None = None,
    env_extra: Mapping[str, str] | None = None,
    allowed_tools: Iterable[str] = (),
    timeout: float = 90.0,
    extra_args: Sequence[str] = (),
    model: str | None = None,
    debug_file: Path | str | None = None,
    input: str | None = None,
    binary: Path | None = None,
) -> ClaudeResult:
    """Run ``claude -p PROMPT`` once and return its result (never raises on a non-zero exit).

    ``home``: the HOME for the run (created if missing); None uses a temporary one that is
    removed afterwards. ``cwd``: the project directory (default ``<home>/project``).
    ``plugin_dir``: one path or several (each becomes ``--plugin-dir``). On ``timeout`` the
    whole process group (claude and its hooks) is killed and ``timed_out`` is set.
    """
    binary = binary or claude_binary()
    if binary is None:
        raise FileNotFoundError(f"Claude Code CLI not found at {TOOLS_BIN}: {INSTALL_HINT}")
    tmp_home = None
    if home is None:
        tmp_home = tempfile.mkdtemp(prefix="cc-home-")
        home = tmp_home
    home = Path(home)
    try:
        home.mkdir(parents=True, exist_ok=True)
        work = Path(cwd) if cwd is not None else home / "project"
        work.mkdir(parents=True, exist_ok=True)
        dbg = Path(debug_file) if debug_file is not None else new_debug_file(home)
        args = _build_args(
            binary,
            plugin_dirs=_plugin_dirs(plugin_dir),
            allowed_tools=allowed_tools,
            debug_file=dbg,
            model=model,
            extra_args=extra_args,
        )
        args += ["-p", "--", prompt]
        env = claude_env(home=home, fake_api_url=fake_api_url, env_extra=env_extra)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            args,
            cwd=work,
            env=env,
            text=True,
            start_new_session=True,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        timed_out = False
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
        wall = time.monotonic() - t0
        log = dbg.read_text(errors="replace") if dbg.exists() else ""
        return ClaudeResult(
            args,
            proc.returncode,
            out,
            err,
            home=home,
            cwd=work,
            debug_file=dbg,
            debug_log=log,
            wall=wall,
            timed_out=timed_out,
        )
    finally:
        if tmp_home is not None:
            shutil.rmtree(tmp_home, ignore_errors=True)


class ClaudeStream:
    """A live ``claude -p --input-format stream-json --output-format stream-json`` session.

    Stdin stays open, so the session outlives its turns: asyncRewake Stop hooks can start new
    turns, and more user messages can be sent. Use as a context manager; ``close()`` ends
    stdin, waits, and kills the process group if it does not exit in time.
    """

    def __init__(
        self,
        *,
        fake_api_url: str | None,
        home: Path | str,
        plugin_dir: Path | str | Sequence[Path | str] | None = None,
        cwd: Path | str | None = None,
        env_extra: Mapping[str, str] | None = None,
        allowed_tools: Iterable[str] = (),
        extra_args: Sequence[str] = (),
        model: str | None = None,
        binary: Path | None = None,
    ) -> None:
        self.home, self.cwd, self.debug_file, args = _session_plan(
            home, cwd, binary, plugin_dir, allowed_tools=allowed_tools, model=model, extra_args=extra_args
        )
        args += ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
        self.args = args
        self._env = claude_env(home=self.home, fake_api_url=fake_api_url, env_extra=env_extra)
        self._cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self.returncode: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._threads: list[threading.Thread] = []
        self._pid: int | None = None

    def start(self) -> ClaudeStream:
        self._proc = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self._env,
            text=True,
            start_new_session=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._pid = self._proc.pid
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def __enter__(self) -> ClaudeStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        """Claude Code's pid (what hooks see as CLAUDE_PID); valid after start()."""
        assert self._pid is not None, "not started"
        return self._pid

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"type": "_unparsed", "line": line}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        chunks = []
        for line in self._proc.stderr:
            chunks.append(line)
        self.stderr = "".join(chunks)

    def send(self, text: str) -> None:
        """Send one user message (starts a turn)."""
        assert self._proc is not None and self._proc.stdin is not None
        msg = {"type": "user", "message": {"role": "user", "content": text}}
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()

    def results(self) -> list[dict[str, Any]]:
        """The ``{"type": "result"}`` events so far: one per finished turn."""
        with self._cond:
            return [e for e in self.events if e.get("type") == "result"]

    def wait_for_results(self, n: int, timeout: float = 60.0) -> bool:
        """Block until ``n`` turns have finished (or the process exited, or timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(e.get("type") == "result" for e in self.events) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._proc is not None and self._proc.poll() is not None):
                    return sum(e.get("type") == "result" for e in self.events) >= n
                self._cond.wait(min(remaining, 0.25))
            return True

    def close(self, timeout: float = 30.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return self.returncode
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            self.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            self.returncode = proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return self.returncode

    def debug_log(self) -> str:
        return self.debug_file.read_text(errors="replace") if self.debug_file.exists() else ""


# Run as the parent of Claude Code: a child subreaper that never reaps what is orphaned below it, as
# PID 1 of a container without an init does (and as a slow init does for a while). An orphaned hook
# process then stays in its process group until this parent exits.
_UNREAPED_ORPHANS = """
import ctypes, os, sys
if ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
pid = os.spawnv(os.P_NOWAIT, sys.argv[1], sys.argv[1:])
os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF)
"""
_ANSI = re.compile(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[78=>]")


class ClaudeTty:
    """An interactive Claude Code session in a pseudo-terminal, as a user runs it (no ``-p``).

    The first-run dialogs are answered in its ``~/.claude.json`` (onboarding, theme, the custom API
    key, trust of the project directory). ``unreaped_orphans``: Claude Code's parent is a subreaper
    that never reaps orphans (Linux only; see _UNREAPED_ORPHANS).
    """

    def __init__(
        self,
        *,
        fake_api_url: str | None,
        home: Path | str,
        plugin_dir: Path | str | Sequence[Path | str] | None = None,
        cwd: Path | str | None = None,
        env_extra: Mapping[str, str] | None = None,
        binary: Path | None = None,
        unreaped_orphans: bool = False,
    ) -> None:
        self.home, self.cwd, self.debug_file, args = _session_plan(home, cwd, binary, plugin_dir)
        self.args = [sys.executable, "-I", "-c", _UNREAPED_ORPHANS, *args] if unreaped_orphans else args
        self._env = claude_env(
            home=self.home, fake_api_url=fake_api_url, env_extra={"TERM": "xterm-256color", **(env_extra or {})}
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._out = bytearray()
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def _configure(self) -> None:
        config = self.home / ".claude.json"
        data = json.loads(config.read_text()) if config.exists() else {}
        key = self._env.get("ANTHROPIC_API_KEY", "")
        data.update(
            hasCompletedOnboarding=True,
            theme="dark",
            customApiKeyResponses={"approved": [key[-20:]], "rejected": []},
        )
        project = data.setdefault("projects", {}).setdefault(str(self.cwd), {})
        project.update(hasTrustDialogAccepted=True, hasCompletedProjectOnboarding=True)
        config.write_text(json.dumps(data))

    def start(self) -> ClaudeTty:
        self._configure()
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 150, 0, 0))
        try:
            self._proc = subprocess.Popen(
                self.args, cwd=self.cwd, env=self._env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
            )
        finally:
            os.close(slave)
        self._master = master
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __enter__(self) -> ClaudeTty:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._master], [], [], 0.5)
                chunk = os.read(self._master, 65536) if ready else b""
            except OSError:  # EIO: the terminal's last user is gone
                break
            if ready and not chunk:
                break
            if b"\x1b[6n" in chunk:  # a cursor position query: answer it, as a terminal does
                with contextlib.suppress(OSError):
                    os.write(self._master, b"\x1b[1;1R")
            with self._cond:
                self._out += chunk
                self._cond.notify_all()

    def screen(self) -> str:
        """Everything shown so far, without terminal escapes."""
        with self._cond:
            return _ANSI.sub("", self._out.decode("utf-8", "replace"))

    def wait_for(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while text not in _ANSI.sub("", self._out.decode("utf-8", "replace")):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.25))
            return True

    def type(self, text: str) -> None:
        """Type `text` and press Enter (a pause between, as Claude Code's input treats a fast burst
        ending in a newline as a paste)."""
        os.write(self._master, text.encode())
        time.sleep(0.5)
        os.write(self._master, b"\r")

    def exit(self, command: str = "/exit", timeout: float = 60.0) -> float:
        """Leave the session as a user does; the seconds from the Enter key to the process's end."""
        assert self._proc is not None, "not started"
        os.write(self._master, command.encode())
        self.wait_for("Exit the CLI", timeout=10)  # the command list is shown: Enter runs it
        time.sleep(0.3)
        started = time.monotonic()
        os.write(self._master, b"\r")
        self._proc.wait(timeout=timeout)
        return time.monotonic() - started

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                _kill_group(proc)
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    def debug_log(self) -> str:
        return self.debug_file.read_text(errors="replace") if self.debug_file.exists() else ""
