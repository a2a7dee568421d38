"""A real PostgreSQL server for the tests, started in a temporary directory (initdb + pg_ctl).

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the unprivileged
`postgres` user (or `nobody`), through `runuser`/`setpriv`. Otherwise it runs as the current user.
It listens on a free loopback port and keeps its unix socket in its own directory; `stop()` ends it.
Each test database is created fresh (`fresh_database`), so tests never see each other's mail.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_counter = itertools.count(1)


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def available() -> bool:
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> tuple[list[str], str]:
    """The command prefix that drops root, and the user name the server runs as."""
    if os.geteuid() != 0:
        return [], pwd.getpwuid(os.geteuid()).pw_name
    for user in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", user, "--"], user
        return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"], user
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to start PostgreSQL as")


@dataclass
class PgServer:
    root: Path
    port: int
    user: str
    prefix: list[str]

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = _bin("psql")
        assert psql is not None
        done = subprocess.run(
            [
                psql,
                "-X",
                "-q",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def fresh_database(self) -> str:
        """A new empty database; its URL."""
        name = f"mailbox_{os.getpid()}_{next(_counter)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        pg_ctl = _bin("pg_ctl")
        assert pg_ctl is not None
        subprocess.run(
            [*self.prefix, pg_ctl, "-D", str(self.datadir), *args],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.pg_ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> PgServer:
    """initdb a temporary cluster (trust auth on loopback only) and start it."""
    initdb = _bin("initdb")
    if initdb is None or _bin("pg_ctl") is None:
        raise RuntimeError("PostgreSQL's initdb/pg_ctl are not installed (the distribution's postgresql package)")
    prefix, user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="mailbox-pg-"))
    server = PgServer(root, _free_port(), user, prefix)
    server.socket_dir.mkdir()
    if prefix:
        entry = pwd.getpwnam(user)
        os.chmod(root, 0o755)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chown(server.socket_dir, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        [*prefix, initdb, "-D", str(server.datadir), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    options = (
        f"-p {server.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={server.socket_dir}"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    server.pg_ctl("start", "-w", "-o", options, "-l", str(server.root / "log"))
    return server


@contextlib.contextmanager
def running() -> Iterator[PgServer]:
    server = start()
    try:
        yield server
    finally:
        server.stop()


# --- the store on PostgreSQL, called like store.Store (the contract tests are synchronous) --------


class _Loop:
    """One event loop on a background thread for every PgStore the sync tests open."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pgkit-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


_shared_loop: _Loop | None = None


def _loop() -> _Loop:
    global _shared_loop
    if _shared_loop is None:
        _shared_loop = _Loop()
    return _shared_loop


class SyncPgStore:
    """pgstore.PgStore with store.Store's synchronous calls (each runs on the shared loop)."""

    def __init__(self, url: str) -> None:
        from claude_mailbox.pgstore import PgStore

        self.url = url
        self._loop = _loop()
        self.async_store = self._loop.run(PgStore.open(url))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.async_store, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(method(*args, **kwargs))

        return call

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a query on a separate connection (what raw_rows is for SQLite)."""

        async def fetch() -> list[tuple[Any, ...]]:
            import asyncpg

            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(row) for row in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        result: list[tuple[Any, ...]] = self._loop.run(fetch())
        return result

    def close(self) -> None:
        self._loop.run(self.async_store.close())


_shared: PgServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> PgServer:
    """The one PostgreSQL server of this process, started on first use and stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = start()
            atexit.register(_shared.stop)
        return _shared


# The harness option (tests/harness.py): MAILBOX_TEST_STORE=postgres runs every daemon the tests start
# on a fresh database of the shared server, so a whole test module runs against PostgreSQL.
STORE_OPTION = "MAILBOX_TEST_STORE"


def selected() -> bool:
    return os.environ.get(STORE_OPTION, "sqlite") == "postgres"


def fresh_database_url() -> str:
    return shared_server().fresh_database()


def daemon_database(daemon: Any) -> str | None:
    """The PostgreSQL URL a harness daemon runs on (MAILBOX_TEST_STORE=postgres), else None (SQLite)."""
    if getattr(daemon, "database_url", None):  # an in-process app (harness.InProcessDaemon)
        return str(daemon.database_url)
    args = list(getattr(daemon, "args", ()))
    return args[args.index("--database-url") + 1] if "--database-url" in args else None


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement on a fresh connection: what the tests read with sqlite3 on SQLite."""

    async def fetch() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())
