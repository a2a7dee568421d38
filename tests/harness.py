"""THE daemon harness of the tests and the benchmarks: `python -m claude_mailbox serve` as a real
subprocess on a free loopback port with its own data dir. Stdlib only at import time (bench/ puts
tests/ on sys.path and imports it; pytest is not needed), so `.venv/bin/python bench/x.py` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from claude_mailbox.client import MailboxClient

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
# The data dir of every daemon a test or bench started, by loopback port: tests/rawhttp.py sends that
# daemon's token (its <home>/token) unless a request names its own Authorization or auth=False.
HOMES: dict[int, Path] = {}


def token_of(home: Path) -> str | None:
    """The token a daemon with data dir `home` wrote (None before its first start or with auth = "none")."""
    try:
        token = (home / "token").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def auth_headers_for(port: int | None) -> dict[str, str]:
    """{"Authorization": "Bearer <token>"} for a daemon this process started on `port`, else {}."""
    home = HOMES.get(port) if port is not None else None
    token = token_of(home) if home is not None else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any Claude Code variable, the data dir `home`, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CLAUDE_", "COV_"))}
    env["CLAUDE_MAILBOX_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO / "daemon")
    env.update(extra)
    return env


def health_ok(port: int, timeout: float = 1.0) -> bool:
    """One GET /health on a fresh connection (no client library): True on a 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Reachable:
    """What a test needs to talk to a daemon, process or in-process: its token, the header that
    carries it, and a client that sends it. The class provides `home` and `url`."""

    home: Path
    url: str

    @property
    def token(self) -> str | None:
        """The daemon's token (its data dir's token file; None with auth = "none" before any start)."""
        return token_of(self.home)

    @property
    def headers(self) -> dict[str, str]:
        """What a raw HTTP or MCP client must add to reach this daemon: its Authorization header."""
        token = self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self, timeout: float = 10.0) -> MailboxClient:
        from claude_mailbox.client import MailboxClient

        return MailboxClient(self.url, timeout=timeout, token=self.token or "")

    def wait_mcp_ready(self, timeout: float = 60.0) -> None:
        """The daemon imports the MCP SDK after it starts listening, and its first /mcp request waits for
        that import: about 2 s here, past a client's 10 s timeout on a loaded machine. Tests whose MCP
        calls have a short timeout wait for it once, with this ping."""
        from claude_mailbox.httpclient import http_request

        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
        }
        ping = b'{"jsonrpc": "2.0", "id": 0, "method": "ping"}'
        reply = http_request(self.url, "POST", "/mcp", body=ping, headers=headers, timeout=timeout)
        assert reply.status == 200, reply.body


@dataclass(eq=False)  # identity hash: benchmarks key dicts by daemon
class Daemon(Reachable):
    """With `log_path`, stdout and stderr go to that file (a long run cannot fill a pipe and block
    the daemon; `.log()` reads it back for tracebacks). Without, they are pipes the test may read."""

    home: Path
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    env_extra: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[str] | None = None
    # Run in the child before exec, e.g. resource.setrlimit for an open-file limit (tests/test_hostile.py).
    preexec_fn: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.home / "mailbox.db"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def env(self) -> dict[str, str]:
        return base_env(self.home, CLAUDE_MAILBOX_URL=self.url, **self.env_extra)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def spawn(self) -> subprocess.Popen[str]:
        HOMES[self.port] = self.home
        command = [sys.executable, "-m", "claude_mailbox", "serve", "--port", str(self.port), *self.args]
        if os.environ.get("MAILBOX_TEST_STORE") == "postgres" and "--database-url" not in self.args:
            import pgkit  # MAILBOX_TEST_STORE=postgres: every daemon on a fresh PostgreSQL database (issue 13)

            self.args = (*self.args, "--database-url", pgkit.fresh_database_url())
            command += self.args[-2:]
        if self.log_path is None:
            self.process = subprocess.Popen(
                command,
                env=self.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=self.preexec_fn,
            )
        else:
            with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
                self.process = subprocess.Popen(
                    command,
                    env=self.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    preexec_fn=self.preexec_fn,
                )
        return self.process

    def wait_healthy(self, timeout: float = START_TIMEOUT, interval: float = 0.01) -> float:
        """Poll /health until a 200; returns the seconds waited."""
        assert self.process is not None
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                if self.log_path is None:
                    out, err = self.process.communicate()
                    raise RuntimeError(f"daemon exited with {self.process.returncode}: {out}{err}")
                raise RuntimeError(f"daemon exited with {self.process.returncode}: {self.log()[-2000:]}")
            if health_ok(self.port):
                return time.perf_counter() - started
            time.sleep(interval)
        raise RuntimeError("daemon did not answer /health in time")

    def start(self, timeout: float = START_TIMEOUT) -> Daemon:
        self.spawn()
        self.wait_healthy(timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe:
                pipe.close()
        return self.process.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Daemon:
        self.stop()
        return self.start()

    def rss_mib(self) -> tuple[float, float]:
        """(RSS, USS) of the daemon process in MiB."""
        import psutil

        info = psutil.Process(self.pid).memory_full_info()
        return info.rss / 2**20, info.uss / 2**20

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.stop()


def start_daemon(
    home: Path, *args: str, port: int | None = None, log_path: Path | None = None, **env_extra: str
) -> Daemon:
    return Daemon(home, port or free_port(), tuple(args), dict(env_extra), log_path).start()


# --- the in-process tier: the app factory on a loop thread, no daemon process ---------------------


@dataclass
class InProcessDaemon(Reachable):
    """`server.make_app(config)` served by aiohttp's TestServer (127.0.0.1, free port) on an event loop
    in a background thread. The same `.url`/`.client()`/`.db_path` as a Daemon, so the sync test
    helpers (rawhttp, MailboxClient, the mcp SDK client) work unchanged; it saves the ~2 s start and
    stop of a process. For contract tests only: signals, restarts and the CLI's `serve` need a Daemon."""

    home: Path
    url: str
    loop: asyncio.AbstractEventLoop
    database_url: str | None = None  # MAILBOX_TEST_STORE=postgres: this app's PostgreSQL database

    @property
    def db_path(self) -> Path:
        return self.home / "mailbox.db"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def env(self) -> dict[str, str]:
        return base_env(self.home, CLAUDE_MAILBOX_URL=self.url)


@contextlib.contextmanager
def in_process_daemon(home: Path, **settings: Any) -> Iterator[InProcessDaemon]:
    from aiohttp.test_utils import TestServer

    from claude_mailbox.config import Config
    from claude_mailbox.server import make_app

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="in-process-daemon", daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    if os.environ.get("MAILBOX_TEST_STORE") == "postgres" and "database_url" not in settings:
        import pgkit  # the harness option: this app's store on a fresh PostgreSQL database (issue 13)

        settings["database_url"] = pgkit.fresh_database_url()

    async def build() -> TestServer:
        return TestServer(make_app(Config(db_path=home / "mailbox.db", **settings), data_dir=home), host="127.0.0.1")

    test_server = run(build())
    run(test_server.start_server())
    HOMES[test_server.port] = home  # rawhttp sends this app's token
    try:
        yield InProcessDaemon(home, f"http://127.0.0.1:{test_server.port}", loop, settings.get("database_url"))
    finally:
        run(test_server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def run_cli(
    *args: str, env: dict[str, str], input: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """The CLI exactly as a user runs it: a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "claude_mailbox", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sqlite_rows(db_path: Path | str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of one statement on a read-only connection to a daemon's SQLite file, through APSW: the
    daemon's own copy of SQLite. Never the stdlib's `sqlite3` (a second copy) while an in-process
    daemon has the file open: POSIX locks are per process, so closing that copy's connection drops
    the daemon's locks, and the next open takes itself for the first and truncates the WAL index
    the daemon has mapped (SIGBUS in the daemon thread, seen in CI)."""
    import apsw

    connection = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(row) for row in connection.execute(sql, args)]
    finally:
        connection.close()


def tracebacks(log: str) -> list[str]:
    """Crash evidence in a daemon log: Python tracebacks and aiohttp's unhandled-error lines."""
    markers = ("Traceback (most recent call last)", "Error handling request", "Unhandled exception")
    return [line for line in log.splitlines() if any(marker in line for marker in markers)]
