"""`claude-mailbox serve` as a real subprocess: port conflicts, signals, restarts, graceful
shutdown under load, and the flags and files that decide where it listens and what it opens."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from claude_mailbox import __version__
from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import MailboxError
from harness import Daemon, base_env, free_port, start_daemon
from rawhttp import check, peek, request, send

QUICK_EXIT = 5.0


def serve_process(home: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "claude_mailbox", "serve", *args],
        env=base_env(home, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def serve_once(home: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """A serve that is expected to exit by itself (a refused start)."""
    return subprocess.run(
        [sys.executable, "-m", "claude_mailbox", "serve", *args],
        env=base_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_healthy(url: str, process: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"serve exited with {process.returncode}: {out}{err}")
        try:
            return MailboxClient(url, timeout=1.0).health(detailed=True)
        except MailboxError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answered on {url}")


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, float, str]:
    """Signal the process; return its exit code, how long it took, and its stderr."""
    started = time.monotonic()
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"serve ignored signal {sig}: {err}") from None
    return process.returncode, time.monotonic() - started, err


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts by hand; any still running at the end are killed."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


# --- port conflicts ---------------------------------------------------------------------------------


def test_port_held_by_another_claude_mailbox_daemon(daemon: Daemon, tmp_path: Path) -> None:
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    result = serve_once(other_home, "--port", str(daemon.port))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"a claude-mailbox daemon (version {__version__}) is already running" in result.stderr
    assert daemon.url in result.stderr
    assert "Traceback" not in result.stderr
    assert not (other_home / "daemon.url").exists()
    assert daemon.client().health()["status"] == "ok"  # the first daemon is unharmed
    assert (daemon.home / "daemon.url").read_text() == daemon.url


def test_port_held_by_a_plain_socket(mailbox_home: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = serve_once(mailbox_home, "--port", str(port))
        elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"port {port} on 127.0.0.1 is already in use by another program" in result.stderr
    assert "claude-mailbox daemon" not in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 15


def test_port_held_by_another_http_server(mailbox_home: Path) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "something else"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        result = serve_once(mailbox_home, "--port", str(other.server_address[1]))
    finally:
        other.shutdown()
        other.server_close()
    assert result.returncode == 1
    assert "already in use by another program" in result.stderr


# --- signals, restarts, graceful shutdown ---------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_quickly_and_restart_keeps_data(daemon: Daemon, sig: int) -> None:
    url_file = daemon.home / "daemon.url"
    assert url_file.read_text() == daemon.url
    assert send(daemon.url, "alice", "bob", "survives a restart").status == 201
    assert send(daemon.url, "alice", "bob", "and so do I").status == 201
    check_me = send(daemon.url, "alice", "carol", "delivered before").json
    assert [m["id"] for m in check(daemon.url, "carol")] == [check_me["id"]]

    assert daemon.process is not None
    code, elapsed, err = stop(daemon.process, sig)
    assert code == 0, err
    assert elapsed < QUICK_EXIT, elapsed
    assert "Traceback" not in err
    assert not url_file.exists()  # hooks stop looking for it

    daemon.start()
    assert peek(daemon.url, "bob")["pending"] == 2
    assert [m["body"] for m in check(daemon.url, "bob")] == ["survives a restart", "and so do I"]
    assert check(daemon.url, "carol") == []  # delivered stays delivered
    assert send(daemon.url, "alice", "bob", "after").json["id"] > check_me["id"]  # ids keep counting


def test_sigterm_during_a_long_poll_exits_quickly(daemon: Daemon) -> None:
    answers: list[object] = []

    def watch() -> None:
        try:
            answers.append(request(daemon.url, "POST", "/v1/watch?name=bob&timeout=60", headers={"X-Mailbox": "bob"}))
        except OSError as exc:
            answers.append(exc)

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    assert daemon.process is not None
    code, elapsed, err = stop(daemon.process)
    thread.join(10)
    assert code == 0, err
    assert elapsed < QUICK_EXIT, elapsed
    assert answers, "the long-poll never returned"
    answer = answers[0]
    print(f"long-poll at shutdown: {answer if isinstance(answer, OSError) else answer.json}")  # type: ignore[attr-defined]
    if not isinstance(answer, OSError):  # the daemon answered it before closing
        assert answer.status == 200, answer.body  # type: ignore[attr-defined]
        assert answer.json["event"] in ("shutdown", "timeout")  # type: ignore[attr-defined]


def test_sigkill_keeps_acknowledged_mail(daemon: Daemon) -> None:
    """synchronous=NORMAL in WAL mode: a killed process loses no committed message."""
    ids = [send(daemon.url, "alice", "bob", f"m{i}").json["id"] for i in range(20)]
    daemon.kill()
    daemon.start()
    assert [m["id"] for m in check(daemon.url, "bob")] == ids


def test_serve_announces_where_it_listens(daemon: Daemon) -> None:
    assert daemon.process is not None and daemon.process.stdout is not None
    line = daemon.process.stdout.readline()
    assert f"claude-mailbox {__version__} listening on {daemon.url}" in line
    assert str(daemon.db_path) in line


@pytest.mark.slow
def test_graceful_shutdown_loses_no_acknowledged_message(daemon: Daemon) -> None:
    """Senders hammer the daemon while it gets SIGTERM: every send that got a 201 is in the database,
    and the database is intact."""
    acknowledged: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def sender(index: int) -> None:
        n = 0
        while not stop_sending.is_set():
            try:
                reply = send(daemon.url, f"sender{index}-{n // 500}", "inbox", f"{index}:{n}", timeout=5.0)
            except OSError:
                return  # the daemon is gone: this send was never acknowledged
            n += 1
            if reply.status == 201:
                with lock:
                    acknowledged.append(reply.json["id"])
            elif reply.status != 503:
                failures.append(f"{reply.status} {reply.body!r}")

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    assert daemon.process is not None
    code, elapsed, err = stop(daemon.process)
    stop_sending.set()
    for thread in threads:
        thread.join(10)
    assert code == 0, err
    assert elapsed < QUICK_EXIT
    assert not failures, failures[:5]
    assert len(acknowledged) > 50, "the load never got going"
    print(f"{len(acknowledged)} sends acknowledged before SIGTERM; exit took {elapsed:.2f} s")

    db = apsw.Connection(str(daemon.db_path))
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {row[0] for row in db.execute("SELECT id FROM messages WHERE recipient = 'inbox'")}
    finally:
        db.close()
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged messages were lost: {sorted(missing)[:10]}"
    daemon.start()
    assert peek(daemon.url, "inbox")["pending"] == len(stored)


# --- where it listens and what it opens ---------------------------------------------------------------


def test_claude_mailbox_home_moves_the_data_dir(tmp_path: Path, spawned: list[subprocess.Popen[str]]) -> None:
    home = tmp_path / "somewhere" / "else"
    port = free_port()
    process = serve_process(home, "--port", str(port))
    spawned.append(process)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    health = MailboxClient(url, token=(home / "token").read_text().strip()).health(detailed=True)
    assert Path(str(health["dbPath"])) == Path(str(health["database"])) == home / "mailbox.db"
    assert (home / "mailbox.db").is_file()
    assert (home / "daemon.url").read_text() == url
    assert stop(process)[0] == 0


def test_db_path_flag(mailbox_home: Path, tmp_path: Path) -> None:
    db = tmp_path / "custom" / "dir" / "my.db"
    running = start_daemon(mailbox_home, "--db-path", str(db))
    try:
        assert Path(running.client().health(detailed=True)["dbPath"]) == db
        assert send(running.url, "a", "b", "into my.db").status == 201
    finally:
        running.stop()
    assert db.is_file()
    assert not (mailbox_home / "mailbox.db").exists()
    conn = apsw.Connection(str(db))
    try:
        assert conn.execute("SELECT body FROM messages").fetchall() == [("into my.db",)]
    finally:
        conn.close()


def test_config_flag(mailbox_home: Path, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    db = tmp_path / "from-config.db"
    config.write_text(f'max_body_bytes = 10\ndb_path = "{db}"\n', encoding="utf-8")
    (mailbox_home / "config.toml").write_text("max_body_bytes = 20\n", encoding="utf-8")  # not read
    running = start_daemon(mailbox_home, "--config", str(config))
    try:
        assert Path(running.client().health(detailed=True)["dbPath"]) == db
        assert send(running.url, "a", "b", "x" * 10).status == 201
        assert send(running.url, "a", "b", "x" * 11).status == 413
    finally:
        running.stop()


def test_config_flag_naming_a_missing_file(mailbox_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = serve_once(mailbox_home, "--config", str(missing), "--port", str(free_port()))
    assert result.returncode == 1
    assert str(missing) in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_from_config_and_flag_beats_config(
    mailbox_home: Path, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    config_port, flag_port = free_port(), free_port()
    (mailbox_home / "config.toml").write_text(f"port = {config_port}\n", encoding="utf-8")
    process = serve_process(mailbox_home)
    spawned.append(process)
    wait_healthy(f"http://127.0.0.1:{config_port}", process)
    assert stop(process)[0] == 0

    db = tmp_path / "flag.db"
    (mailbox_home / "config.toml").write_text(
        f'port = {config_port}\ndb_path = "{tmp_path / "config.db"}"\n', encoding="utf-8"
    )
    process = serve_process(mailbox_home, "--port", str(flag_port), "--db-path", str(db))
    spawned.append(process)
    health = wait_healthy(f"http://127.0.0.1:{flag_port}", process)
    assert Path(str(health["dbPath"])) == db
    with pytest.raises(MailboxError):
        MailboxClient(f"http://127.0.0.1:{config_port}", timeout=0.5).health()
    assert stop(process)[0] == 0


def test_legacy_mailbox_json_is_read(mailbox_home: Path, tmp_path: Path, spawned: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    db = tmp_path / "legacy.db"
    (mailbox_home / "mailbox.json").write_text(json.dumps({"port": port, "dbPath": str(db)}), encoding="utf-8")
    process = serve_process(mailbox_home)
    spawned.append(process)
    health = wait_healthy(f"http://127.0.0.1:{port}", process)
    assert Path(str(health["dbPath"])) == db
    assert stop(process)[0] == 0


@pytest.mark.parametrize(
    ("file_name", "text", "line"),
    [
        ("config.toml", 'port = 1234\nbind = "127.0.0.1\n', 2),
        ("config.toml", "# settings\n\nport = = 5\n", 3),
        ("mailbox.json", '{\n  "port": 1234,\n  "dbPath": \n}\n', 4),
    ],
)
def test_malformed_config_is_a_clear_error(mailbox_home: Path, file_name: str, text: str, line: int) -> None:
    path = mailbox_home / file_name
    path.write_text(text, encoding="utf-8")
    result = serve_once(mailbox_home)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert str(path) in result.stderr
    assert f"line {line}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (mailbox_home / "mailbox.db").exists()


def test_unknown_config_key_is_a_clear_error(mailbox_home: Path) -> None:
    path = mailbox_home / "config.toml"
    path.write_text("port = 1234\ncolour = 'blue'\n", encoding="utf-8")
    result = serve_once(mailbox_home)
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "unknown setting 'colour'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('port = "37849"\n', ["port", "whole number"]),
        ("port = 70000\n", ["port", "65535"]),
        ('durability = "sometimes"\n', ["durability", "normal, full"]),
        ("max_body_bytes = 0\n", ["max_body_bytes", "positive"]),
    ],
)
def test_invalid_config_values_are_clear_errors(mailbox_home: Path, text: str, words: list[str]) -> None:
    (mailbox_home / "config.toml").write_text(text, encoding="utf-8")
    result = serve_once(mailbox_home)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_bad_port_flag_is_a_clear_error(mailbox_home: Path) -> None:
    result = serve_once(mailbox_home, "--port", "99999")
    assert result.returncode == 1
    assert "port must be between 0 and 65535" in result.stderr
    assert "Traceback" not in result.stderr


# --- listen first (issue 11.1) --------------------------------------------------------------------


def test_a_connection_made_while_the_daemon_loads_waits_and_is_answered(mailbox_home: Path) -> None:
    """The port accepts connections before aiohttp is even imported; a request sent on such an early
    connection is answered once the app is ready, and no connection attempt is refused after that."""
    port = free_port()
    process = serve_process(mailbox_home, "--port", str(port))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "serve never listened"
            try:
                early = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except ConnectionRefusedError:
                time.sleep(0.002)
        maps = Path(f"/proc/{process.pid}/maps")
        if maps.exists():  # Linux: aiohttp's C parser is not loaded yet when the port already listens
            assert "aiohttp" not in maps.read_text(), "the port listened only after aiohttp was imported"
        with early:
            early.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := early.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer
        assert json.loads(body)["status"] == "ok"
        assert MailboxClient(f"http://127.0.0.1:{port}").health(detailed=True)["port"] == port
    finally:
        stop(process)


def test_port_zero_reports_the_bound_port(mailbox_home: Path) -> None:
    process = serve_process(mailbox_home, "--port", "0")
    try:
        line = process.stdout.readline() if process.stdout else ""
        url = line.split(" listening on ", 1)[1].split()[0]
        port = int(url.rsplit(":", 1)[1])
        assert port != 0
        health = MailboxClient(url, timeout=5).health(detailed=True)
        assert health["port"] == port, health
        assert (mailbox_home / "daemon.url").read_text() == url
    finally:
        stop(process)
