"""Faults under real conditions: kill -9 under load from client processes, a database locked by
another process, an unwritable data dir, a corrupted database file, a full disk and a file-size
limit during sends, and clients that connect and then stall."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_mailbox.model import LeaseTerms, SendRequest
from claude_mailbox.store import Store
from faultkit import TAG_PREFIX, _audit, logged_daemon, run_kill_load, tracebacks, write_config
from harness import Daemon, base_env, run_cli
from rawhttp import Reply, check, peek, request, send

# --- kill -9 under load ------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """8 client processes send and check while the daemon is SIGKILLed 4 times at random moments and
    restarted: every send answered 201 is stored exactly once, nothing is delivered twice."""
    result = run_kill_load(tmp_path, clients=8, seconds=12.0, kills=4)
    print(
        f"\n{result.clients} clients, {result.acked} messages acknowledged in {result.seconds:.1f} s, "
        f"{result.kills} kills; cut answers: {result.unknown} sends ({result.unknown_stored} stored), "
        f"{result.cut_deliveries} deliveries; {result.down_retries} retries while down"
    )
    assert result.problems == []
    assert result.lost == [] and result.duplicated == []
    assert result.kills == 4
    assert result.acked >= 100  # real load, not a trickle (on a loaded 2-core box: 135-450 per run)
    assert result.down_retries > 0  # the clients did hit the daemon while it was down
    # Every stored message went to exactly one consumer's acknowledged read, or to a reader whose
    # acknowledgement was committed but its answer cut off by a kill (the audit checks that reader had it).
    assert result.received + result.cut_deliveries == result.acked + result.unknown_stored


def test_the_audit_catches_a_lost_and_a_duplicated_message(tmp_path: Path) -> None:
    """The kill test's audit is not vacuous: a message acknowledged but absent, one stored twice and one
    received twice are all reported."""
    store = Store(tmp_path / "mailbox.db")
    first = store.send(SendRequest("a", "b", f"{TAG_PREFIX}a/1 x")).message
    store.send(SendRequest("a", "b", f"{TAG_PREFIX}a/2 x"))
    store.send(SendRequest("a", "b", f"{TAG_PREFIX}a/2 x"))  # stored twice
    lease = store.lease("b", LeaseTerms(lease_seconds=60))
    assert lease.id is not None and store.ack("b", lease.id) == 3
    store.close()
    records = [
        {"ack": "a/1", "id": first.id, "to": "b"},
        {"ack": "a/2", "id": 2, "to": "b"},
        {"ack": "a/3", "id": 99, "to": "b"},  # acknowledged, never stored
        {"recv": first.id, "tag": "a/1", "sender": "a"},
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "b.jsonl").write_text(json.dumps({"recv": first.id, "tag": "a/1", "sender": "a"}) + "\n")
    result = _audit(tmp_path, tmp_path / "mailbox.db", ["a", "b"], drained=[])
    assert result.lost == ["a/3"]
    assert "stored twice: a/2" in result.duplicated
    assert f"received twice: #{first.id}" in result.duplicated
    assert any("received #1" in problem for problem in result.problems)  # "a" received mail sent to "b"


# --- the database locked by another process --------------------------------------------------------------

LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
connection.execute("COMMIT")
"""


def test_database_locked_by_another_process(mailbox_home: Path) -> None:
    write_config(mailbox_home, busy_timeout_ms=200)
    daemon = logged_daemon(mailbox_home)
    holder = None
    try:
        assert send(daemon.url, "alice", "bob", "before the lock").status == 201
        holder = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(daemon.db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

        began = time.monotonic()
        reply = send(daemon.url, "alice", "bob", "during the lock")
        assert reply.status == 503
        error = reply.error()
        assert error["code"] == "database_busy"
        assert "locked by another process" in error["message"]
        assert reply.headers["Retry-After"] == "1"
        assert time.monotonic() - began < 3  # bounded by busy_timeout_ms, not hanging

        began = time.monotonic()
        health = request(daemon.url, "GET", "/health")
        assert health.status == 200 and time.monotonic() - began < 1
        # Reads keep working through the lock (WAL readers are never blocked by a writer).
        assert peek(daemon.url, "bob")["pending"] == 1
        assert request(daemon.url, "GET", "/v1/list").status == 200
        # Taking mail is a write: it waits out the busy timeout, then says so.
        taken = request(daemon.url, "POST", "/v1/check-inbox?name=bob", headers={"X-Mailbox": "bob"})
        assert taken.status == 503 and taken.error()["code"] == "database_busy"

        holder.communicate("", timeout=10)  # release
        assert holder.returncode == 0
        assert send(daemon.url, "alice", "bob", "after the lock").status == 201
        assert [m["body"] for m in check(daemon.url, "bob")] == ["before the lock", "after the lock"]
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        daemon.stop()
    assert tracebacks(daemon.log()) == []


# --- the data dir not writable ----------------------------------------------------------------------------


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[Path]:
    """`directory` made unwritable by a real means, yielding the path to use. A normal user gets
    chmod 555. Root ignores permissions, so root gets a read-only bind mount of it instead; where
    that is not allowed either (no CAP_SYS_ADMIN), the test is skipped saying so."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            probe = directory / ".probe"
            with contextlib.suppress(OSError):
                probe.touch()
                probe.unlink()
                pytest.skip("chmod 555 does not stop this user from writing (CAP_DAC_OVERRIDE?)")
            yield directory
        finally:
            directory.chmod(0o755)
        return
    target = directory.with_name(directory.name + "-readonly")
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(directory), str(target)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root, which ignores chmod, and bind mounts are not allowed: {mounted.stderr}")
    try:
        readonly = subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True, text=True)
        if readonly.returncode != 0:
            pytest.skip(f"running as root, which ignores chmod, and cannot remount read-only: {readonly.stderr}")
        with pytest.raises(OSError) as refused:
            (target / ".probe").touch()
        assert refused.value.errno == errno.EROFS
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def _serve_once(home: Path) -> subprocess.CompletedProcess[str]:
    """`claude-mailbox serve` that is expected to refuse to start (a 30 s timeout fails the test)."""
    return run_cli("serve", "--port", "0", env=base_env(home))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("existing", [False, True], ids=["empty-dir", "existing-db"])
def test_unwritable_data_dir_refuses_to_start_naming_the_file(tmp_path: Path, existing: bool) -> None:
    home = tmp_path / "data"
    home.mkdir()
    # With the token on, the token file is the first write and its message names it (test_auth.py);
    # without, the database is the first and must be named.
    (home / "config.toml").write_text('auth = "none"\n')
    if existing:
        store = Store(home / "mailbox.db")
        store.send(SendRequest("alice", "bob", "kept"))
        store.close()
        before = _digest(home / "mailbox.db")
    with unwritable(home) as readonly:
        result = _serve_once(readonly)
        assert result.returncode == 1, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(readonly / "mailbox.db") in lines[0] and "writable" in lines[0], lines[0]
    if existing:
        assert _digest(home / "mailbox.db") == before


# --- a corrupted database file -------------------------------------------------------------------------------


def _scramble(data: bytearray, start: int, end: int) -> None:
    for offset in range(start, min(end, len(data))):
        data[offset] = (offset * 131 + 7) % 251


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    if how == "not-a-database":
        data = bytearray(b"this is a text file that happens to be called mailbox.db\n" * 50)
    elif how == "scrambled-schema":
        _scramble(data, 100, page)  # page 1 after the header: the schema table
    elif how == "bad-page-size":
        data[16:18] = (3000).to_bytes(2, "big")  # not a power of two
    elif how == "truncated":
        data = data[: len(data) // 2 + 100]
    elif how == "damaged-index":
        connection = sqlite3.connect(path)
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages_pending'").fetchone()[0]
        connection.close()
        _scramble(data, (root - 1) * page, root * page)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["not-a-database", "scrambled-schema", "bad-page-size", "truncated", "damaged-index"])
def test_corrupted_database_refuses_to_start_and_is_never_overwritten(mailbox_home: Path, how: str) -> None:
    db = mailbox_home / "mailbox.db"
    store = Store(db)
    for index in range(40):
        store.send(SendRequest("alice", f"bob{index % 3}", f"message {index} " + "x" * 400))
    store.close()
    _corrupt(db, how)
    before = _digest(db)
    result = _serve_once(mailbox_home)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(db) in lines[0] and "not a valid claude-mailbox database" in lines[0], lines[0]
    assert _digest(db) == before


# --- a full disk, a file-size limit ---------------------------------------------------------------------------

BIG_BODY_BYTES = 300_000  # more than any file the daemon has allocated so far: a write must grow a file


@contextlib.contextmanager
def small_filesystem(directory: Path, size: str = "2m") -> Iterator[Path]:
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC (then down to the last block)."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    with pytest.raises(OSError) as full, filler.open("ab", buffering=0) as out:
        out.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def _reads_still_work(daemon: Any, pending: int) -> None:
    assert request(daemon.url, "GET", "/health").status == 200
    assert peek(daemon.url, "bob")["pending"] == pending
    listing = request(daemon.url, "GET", "/v1/list")
    assert listing.status == 200 and "bob" in [box["name"] for box in listing.json["mailboxes"]]
    # Presence is best effort: listing as a named caller works even when that cannot be recorded.
    assert request(daemon.url, "GET", "/v1/list", headers={"X-Mailbox": "carol"}).status == 200


def _big() -> str:
    return "y" * BIG_BODY_BYTES


def _refused_for_space(reply: Reply) -> str:
    assert reply.status == 507, (reply.status, reply.body[:300])
    error = reply.error()
    assert error["code"] == "storage_full" and "nothing was saved" in error["message"], error
    return error["message"]


def test_disk_full_during_send(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small") as home:
        write_config(home, max_body_bytes=BIG_BODY_BYTES + 1000, max_request_bytes=2 * BIG_BODY_BYTES)
        daemon = logged_daemon(home, log_path=tmp_path / "daemon.log")  # the log must not need the full disk
        try:
            early = [f"early {index}" for index in range(3)]
            for body in early:
                assert send(daemon.url, "alice", "bob", body).status == 201
            filler = _fill(home)
            message = _refused_for_space(send(daemon.url, "alice", "bob", _big()))
            assert "full" in message and str(home / "mailbox.db") in message
            _refused_for_space(send(daemon.url, "alice", "bob", _big()))  # and again: the connection is sane
            _reads_still_work(daemon, pending=3)
            # Taking mail records its delivery, which needs space: it may be refused the same way, and
            # then nothing is lost.
            taken = request(daemon.url, "POST", "/v1/check-inbox?name=bob", headers={"X-Mailbox": "bob"})
            got = taken.json["messages"] if taken.status == 200 else []
            if taken.status != 200:
                _refused_for_space(taken)
            filler.unlink()
            got += check(daemon.url, "bob")
            assert [m["body"] for m in got] == early  # the earlier messages, intact, exactly once
            assert send(daemon.url, "alice", "bob", _big()).status == 201  # space again: sends work
            assert daemon.process.poll() is None
        finally:
            daemon.stop()
    assert tracebacks(daemon.log()) == []


# --- the database file deleted or replaced under a running daemon (issue 20.5) -----------------------


def _unavailable(reply: Reply, state: str) -> str:
    assert reply.status == 503, (reply.status, reply.body[:300])
    error = reply.error()
    assert error["code"] == "database_unavailable" and f"was {state} while the daemon ran" in error["message"], error
    return error["message"]


def _health_says(daemon: Any, reason: str) -> None:
    full = request(daemon.url, "GET", "/health")
    assert full.status == 200 and full.json["status"] == "database_unavailable", full.json
    assert full.json["problem"] == reason
    bare = request(daemon.url, "GET", "/health", auth=False)
    assert bare.json == {"status": "database_unavailable", "version": full.json["version"]}


def test_a_deleted_database_answers_503_and_stores_nothing_as_sent(mailbox_home: Path) -> None:
    """`rm mailbox.db*` under a running daemon: no send is answered 201 (it would land in the unlinked
    file and be gone after a restart), /health says why, and an idle daemon notices it by itself."""
    daemon = logged_daemon(mailbox_home)
    try:
        assert send(daemon.url, "alice", "bob", "before").status == 201
        for suffix in ("", "-wal", "-shm"):
            Path(f"{daemon.db_path}{suffix}").unlink()
        replies = [send(daemon.url, "alice", "bob", f"after {index}") for index in range(10)]
        assert [reply.status for reply in replies] == [503] * 10
        reason = _unavailable(replies[0], "deleted")
        assert str(daemon.db_path) in reason and "restart" in reason
        _health_says(daemon, reason)
        taken = request(daemon.url, "POST", "/v1/check-inbox?name=bob", headers={"X-Mailbox": "bob"})
        _unavailable(taken, "deleted")  # reads too: they would hand out mail from a file that is gone
        status = run_cli("status", env=daemon.env())
        assert status.returncode == 0 and f"problem    UNAVAILABLE  {reason}" in status.stdout, status
        assert daemon.process.poll() is None
    finally:
        daemon.stop()
    assert tracebacks(daemon.log()) == []
    daemon.start()  # a new database at the path: nothing that was answered 201 after the delete is missing
    try:
        assert request(daemon.url, "GET", "/health").json["status"] == "ok"
        assert peek(daemon.url, "bob")["pending"] == 0
    finally:
        daemon.stop()

    # Idle: the checkpoint timer notices it without a request.
    daemon.start()
    try:
        daemon.db_path.unlink()
        deadline = time.monotonic() + 10
        while request(daemon.url, "GET", "/health").json["status"] == "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
        _health_says(daemon, request(daemon.url, "GET", "/health").json["problem"])
    finally:
        daemon.stop()


def test_a_replaced_database_answers_503(mailbox_home: Path, tmp_path: Path) -> None:
    daemon = logged_daemon(mailbox_home)
    try:
        assert send(daemon.url, "alice", "bob", "before").status == 201
        other = tmp_path / "other.db"
        Store(other).close()
        os.replace(other, daemon.db_path)  # another file at the path (a restore, a copy from elsewhere)
        reason = _unavailable(send(daemon.url, "alice", "bob", "after"), "replaced by another file")
        _health_says(daemon, reason)
    finally:
        daemon.stop()


def test_a_start_on_a_full_disk_writes_daemon_url_or_fails_with_one_line(tmp_path: Path) -> None:
    """The data dir on a full disk (the database elsewhere): a daemon that listened but wrote no
    daemon.url would be one the hooks and the CLI cannot find (issue 20.8). It stops, saying why."""
    with small_filesystem(tmp_path / "small") as home:
        db = tmp_path / "db" / "mailbox.db"
        first = Daemon(home, args=("--db-path", str(db))).start()  # writes the token while there is room
        first.stop()
        assert not (home / "daemon.url").exists()  # a clean stop removes it
        filler = _fill(home)
        daemon = Daemon(home, args=("--db-path", str(db)))
        process = daemon.spawn()
        try:
            out, err = process.communicate(timeout=60)
        finally:
            daemon.stop()  # one that runs on without daemon.url must not outlive the test
        assert process.returncode == 1, (out, err)
        assert err.strip() == (
            f"claude-mailbox: cannot write {home / 'daemon.url'} (No space left on device), where the hooks and "
            "the CLI find this daemon's address; free some space (or make the data dir writable), then start "
            "the daemon again"
        ), err
        assert not (home / "daemon.url").exists()
        filler.unlink()
        with Daemon(home, args=("--db-path", str(db))) as again:  # room again: it starts and says where
            assert (home / "daemon.url").read_text() == again.url


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="setting another process's limits needs Linux prlimit")
def test_file_size_limit_during_send(mailbox_home: Path) -> None:
    """RLIMIT_FSIZE on the running daemon (its soft limit, so it can be raised back): a write past it
    fails with EFBIG (SIGXFSZ is ignored, so the daemon lives on)."""
    write_config(mailbox_home, max_body_bytes=BIG_BODY_BYTES + 1000, max_request_bytes=2 * BIG_BODY_BYTES)
    daemon = logged_daemon(mailbox_home)
    pid = daemon.process.pid
    try:
        early = [f"early {index}" for index in range(3)]
        for body in early:
            assert send(daemon.url, "alice", "bob", body).status == 201
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (64 * 1024, hard))
        try:
            _refused_for_space(send(daemon.url, "alice", "bob", _big()))
            _refused_for_space(send(daemon.url, "alice", "bob", _big()))
            assert daemon.process.poll() is None  # not killed by SIGXFSZ
            _reads_still_work(daemon, pending=3)
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        assert send(daemon.url, "alice", "bob", _big()).status == 201
        assert [m["body"] for m in check(daemon.url, "bob")] == [*early, _big()]
    finally:
        daemon.stop()
    assert tracebacks(daemon.log()) == []


# --- clients that stall ----------------------------------------------------------------------------------------

CLIENT_TIMEOUT = 2  # seconds (config client_timeout_seconds; the default is 10)


@pytest.fixture
def strict(mailbox_home: Path) -> Iterator[Any]:
    write_config(mailbox_home, client_timeout_seconds=CLIENT_TIMEOUT)
    with Daemon(mailbox_home, log_path=mailbox_home / "daemon.log") as running:
        yield running
    assert tracebacks(running.log()) == []


def _connect(daemon: Any) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=CLIENT_TIMEOUT + 5)
    return sock


def _closed_after(sock: socket.socket, began: float) -> tuple[float, bytes]:
    """Block until the daemon closes the connection; how long after `began`, and what it said."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return time.monotonic() - began, received


def test_stalled_clients_are_cut_off_and_never_hold_the_daemon(strict: Any) -> None:
    began = time.monotonic()
    idle = [_connect(strict) for _ in range(100)]  # connect and send nothing
    slow_headers = _connect(strict)
    slow_headers.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    slow_body = _connect(strict)
    slow_body.sendall(
        b"POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Mailbox: slow\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    header_cut: list[float] = []

    def trickle_headers() -> None:  # slowloris: one more header line every 0.25 s, never the blank line
        with contextlib.suppress(OSError):
            for index in range(80):
                slow_headers.sendall(b"X-Slow-%d: y\r\n" % index)
                time.sleep(0.25)
        header_cut.append(time.monotonic() - began)

    def trickle_body() -> None:
        with contextlib.suppress(OSError):
            for _ in range(80):
                slow_body.sendall(b" ")
                time.sleep(0.25)

    threads = [threading.Thread(target=trickle_headers), threading.Thread(target=trickle_body)]
    for thread in threads:
        thread.start()
    # Meanwhile everyone else is served at once.
    worst = 0.0
    while time.monotonic() - began < CLIENT_TIMEOUT + 0.5:
        started = time.monotonic()
        assert send(strict.url, "alice", "bob", "served meanwhile").status == 201
        assert request(strict.url, "GET", "/health").status == 200
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    assert worst < 1.0, worst

    body_after, answer = _closed_after(slow_body, began)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    reply = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert reply["error"]["code"] == "request_timeout"
    assert body_after < CLIENT_TIMEOUT + 2
    for sock in idle:
        after, said = _closed_after(sock, began)
        assert said == b"" and after < CLIENT_TIMEOUT + 3
    for thread in threads:
        thread.join(timeout=30)
    assert header_cut and header_cut[0] < CLIENT_TIMEOUT + 3, header_cut
    for sock in [*idle, slow_headers, slow_body]:
        sock.close()
    assert peek(strict.url, "bob")["pending"] > 0
    assert peek(strict.url, "slow")["pending"] == 0  # the trickled send never reached the store


def test_long_polls_outlive_the_client_timeout(strict: Any) -> None:
    """A long-poll has sent its whole request; only then does it wait, so the client timeout never cuts it."""
    began = time.monotonic()
    reply = request(strict.url, "POST", "/v1/watch?name=quiet&timeout=4", headers={"X-Mailbox": "quiet"})
    assert reply.status == 200 and reply.json["event"] == "timeout"
    assert time.monotonic() - began >= 3.9

    def later() -> None:
        time.sleep(CLIENT_TIMEOUT + 1)
        send(strict.url, "alice", "waiter", "worth the wait")

    sender = threading.Thread(target=later)
    sender.start()
    began = time.monotonic()
    reply = request(strict.url, "POST", "/v1/watch?name=waiter&timeout=20", headers={"X-Mailbox": "waiter"})
    sender.join()
    assert reply.status == 200 and reply.json["event"] == "mail", reply.body
    assert [m["body"] for m in reply.json["messages"]] == ["worth the wait"]
    assert CLIENT_TIMEOUT + 0.5 < time.monotonic() - began < 10


def test_a_waiting_stop_hook_outlives_the_client_timeout(strict: Any) -> None:
    """The collaboration-mode Stop hook holds its request open until mail arrives (here 3 s, past the
    2 s client timeout): its body was read in full first, so nothing cuts it off."""
    session = str(uuid.uuid4())
    hook = {"session_id": session, "hook_event_name": "SessionStart", "source": "startup", "cwd": "/tmp"}
    assert request(strict.url, "POST", "/v1/hooks/session-start", json_body=hook).status == 200
    mailbox = request(strict.url, "GET", f"/v1/whoami?session={session}").json["name"]
    on = {"name": mailbox, "on": True}
    collaborate = request(strict.url, "POST", "/v1/collaborate", json_body=on, headers={"X-Mailbox": mailbox})
    assert collaborate.status == 200 and collaborate.json["collaborating"] is True

    sender = threading.Timer(CLIENT_TIMEOUT + 1, lambda: send(strict.url, "alice", mailbox, "wake up"))
    sender.start()
    began = time.monotonic()
    stop = {"session_id": session, "hook_event_name": "Stop"}
    reply = request(strict.url, "POST", "/v1/hooks/stop", json_body=stop, timeout=30)
    sender.join()
    assert reply.status == 200, reply.body
    assert reply.headers["X-Hook-Exit"] == "2" and reply.headers["X-Hook-Stream"] == "stderr"
    assert '"wake up"' in reply.body.decode()
    assert CLIENT_TIMEOUT + 0.5 < time.monotonic() - began < 10
