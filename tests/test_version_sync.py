"""Version sync across a plugin update, for real: two plugin trees stamped 1.2.0 and 1.3.0 by
release.py, laid out like Claude Code's plugin cache, one managed environment, one detached
daemon. A SessionStart hook of the new plugin reinstalls the environment and restarts the daemon
while a client keeps sending; nothing that was acknowledged is lost, the old plugin's hooks keep
working against the new daemon, and nothing downgrades it. Then the same through
`/claude-mailbox:mailbox-update` with the real `claude plugin` commands. And the REST requests of
the first release, byte for byte, against today's daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from claude_code import require_claude
from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import MailboxError
from claude_mailbox.setup import lifecycle
from claude_mailbox.setup import venv as managed_env
from harness import REPO, Daemon, free_port, token_of
from plugin_env import HookRun, run_hook
from rawhttp import request
from test_doctor import plugin_env, stdlib_only_python

OLD, NEW = "1.2.0", "1.3.0"
PLUGIN_FILES = (".claude-plugin", ".mcp.json", "commands", "skills", "hooks", "daemon", "pyproject.toml", "README.md")


def plugin_tree(dest: Path, version: str) -> Path:
    """A copy of this plugin (what `claude plugin install` unpacks) stamped with `version`."""
    dest.mkdir(parents=True)
    for name in PLUGIN_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, dest / name)
    stamp(dest, version)
    return dest


def stamp(root: Path, version: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "release.py"), f"v{version}", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert lifecycle.source_version(root) == version


@dataclass
class Machine:
    tmp: Path
    home: Path  # CLAUDE_MAILBOX_HOME
    data: Path  # CLAUDE_PLUGIN_DATA
    port: int
    env: dict[str, str]
    started: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> MailboxClient:
        return MailboxClient(self.url, timeout=10.0, token=token_of(self.home) or "")  # this machine's token

    def run(self, root: Path, *args: str, stdin: str = "", timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "CLAUDE_PLUGIN_ROOT": str(root), "CLAUDE_PLUGIN_DATA": str(self.data)}
        result = subprocess.run(
            [str(root / "hooks" / "run"), *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout
        )
        assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
        self.remember_daemon()
        return result

    def hook(self, root: Path, event: str, session: str, **extra: str) -> HookRun:
        """The hook as Claude Code runs it from the plugin at `root` (the suite's one hook runner)."""
        payload = {"session_id": session, "cwd": str(self.tmp), "hook_event_name": event, **extra}
        env = {**self.env, "CLAUDE_PLUGIN_ROOT": str(root), "CLAUDE_PLUGIN_DATA": str(self.data)}
        result = run_hook(event, payload, env, timeout=90)
        assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
        self.remember_daemon()
        return result

    def daemon_pid(self) -> int | None:
        try:
            return int((self.home / "daemon.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remember_daemon(self) -> None:
        pid = self.daemon_pid()
        if pid and pid not in self.started:
            self.started.append(pid)

    def stop_daemons(self) -> None:
        """Stop the daemons this test's commands started (by the pids their pid file named)."""
        for pid in self.started:
            try:
                process = psutil.Process(pid)
                if "serve" in process.cmdline():
                    process.send_signal(signal.SIGTERM)
                    process.wait(15)
            except (psutil.Error, OSError):
                pass


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    home = tmp_path / "mailbox-data"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(f"port = {port}\n")
    data = tmp_path / "plugin-data"
    data.mkdir()
    env = plugin_env(tmp_path, home, data, stdlib_only_python(tmp_path / "bin"))
    box = Machine(tmp_path, home, data, port, env)
    try:
        yield box
    finally:
        box.stop_daemons()


def gone(pid: int) -> bool:
    """Exited (a zombie counts: in a container nobody may reap a detached daemon's parent-less exit)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def context(result: HookRun) -> str:
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["hookSpecificOutput"]["additionalContext"])


@pytest.fixture(scope="module")
def old_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A managed environment with OLD installed, built once (real venv, real pip) and copied into
    each test's plugin data dir: the environment does not refer to the tree it was installed from."""
    tmp = tmp_path_factory.mktemp("old-venv")
    venv = tmp / "venv"
    managed_env.create_venv(Path(getattr(sys, "_base_executable", sys.executable)), venv)
    managed_env.pip_install(venv / "bin" / "python", plugin_tree(tmp / "plugin", OLD), first=True)
    return venv


def install_old(machine: Machine, root: Path, venv: Path) -> int:
    """The user ran the doctor of the old plugin: managed environment and daemon at OLD."""
    shutil.copytree(venv, machine.data / "venv", symlinks=True)
    doctor = machine.run(root, "cli", "doctor", "--yes", "--plugin-data", str(machine.data))
    assert "  ok      daemon " in doctor.stdout, doctor.stdout  # the copied environment is accepted
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert machine.client().health()["version"] == OLD
    assert managed_env.installed_version(machine.data / "venv") == OLD
    pid = machine.daemon_pid()
    assert pid is not None
    return pid


class Sender(threading.Thread):
    """Keeps sending while the daemon is replaced; retries what was refused, records what was
    acknowledged (201): each of those must be delivered exactly as sent."""

    def __init__(self, url: str, recipient: str, token: str | None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.token = token
        self.recipient = recipient
        self.acknowledged: dict[int, str] = {}
        self.refused = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        client = MailboxClient(self.url, timeout=5.0, token=self.token or "")
        number = 0
        while not self.stop_event.is_set():
            body = f"live {number}"
            try:
                sent = client.send("peer-b", self.recipient, body)
            except MailboxError:
                self.refused += 1
                time.sleep(0.02)
                continue  # the same body again: it was not acknowledged
            self.acknowledged[int(sent["id"])] = body
            number += 1
            time.sleep(0.005)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(30)


@pytest.mark.slow
def test_a_newer_plugins_session_start_updates_the_daemon_and_loses_no_mail(machine: Machine, old_venv: Path) -> None:
    cache = machine.tmp / "cache" / "claude-mailbox" / "claude-mailbox"
    old_root = plugin_tree(cache / OLD, OLD)
    new_root = plugin_tree(cache / NEW, NEW)
    old_pid = install_old(machine, old_root, old_venv)
    client = machine.client()
    waiting = [client.send("peer-b", "peer-a", f"before {i}") for i in range(20)]

    sender = Sender(machine.url, "peer-a", client.token)
    sender.start()
    time.sleep(0.3)
    session = str(uuid.uuid4())
    started = time.monotonic()
    result = machine.hook(new_root, "session-start", session, source="startup")
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    sender.finish()

    # One line says what happened; the announcement of the session is still there after it.
    text = context(result)
    assert text.splitlines()[0] == f"mailbox daemon updated {OLD} -> {NEW}", text
    assert f"mailbox name is claude-{session[:8]}." in text
    assert elapsed < 50, elapsed  # inside the SessionStart hook's 60 s budget
    # The environment and the daemon are the new version; the daemon was restarted by autostart.
    assert client.health()["version"] == NEW
    assert managed_env.installed_version(machine.data / "venv") == NEW
    new_pid = machine.daemon_pid()
    assert new_pid is not None and new_pid != old_pid and gone(old_pid)
    assert psutil.Process(new_pid).cmdline()[0] == str(machine.data / "venv" / "bin" / "python")
    # No mail lost: everything sent before, and everything acknowledged during the restart.
    assert sender.acknowledged and sender.refused > 0  # it did run across the restart
    delivered = client.check("peer-a")["messages"]
    by_id = {m["id"]: m["body"] for m in delivered}
    assert len(by_id) == len(delivered)
    expected = {m["id"]: f"before {n}" for n, m in enumerate(waiting)} | sender.acknowledged
    assert {i: by_id.get(i) for i in expected} == expected
    assert client.peek("peer-a")["pending"] == 0

    # The old plugin, still loaded in an older session, works against the new daemon...
    old_session = str(uuid.uuid4())
    assert f"mailbox name is claude-{old_session[:8]}." in context(
        machine.hook(old_root, "session-start", old_session, source="startup")
    )
    client.send("peer-b", f"claude-{old_session[:8]}", "to the old plugin's session")
    assert '"to the old plugin\'s session"' in context(
        machine.hook(old_root, "prompt-submit", old_session, prompt="hi")
    )
    # ...and never downgrades it (a second SessionStart of the old plugin, e.g. after /clear).
    again = context(machine.hook(old_root, "session-start", str(uuid.uuid4()), source="clear"))
    assert "mailbox daemon updated" not in again
    assert client.health()["version"] == NEW
    assert managed_env.installed_version(machine.data / "venv") == NEW
    assert machine.daemon_pid() == new_pid

    # A second SessionStart of the new plugin has nothing left to do.
    assert "mailbox daemon updated" not in context(machine.hook(new_root, "session-start", str(uuid.uuid4())))
    update = machine.run(new_root, "cli", "update", "--plugin-data", str(machine.data))
    assert update.returncode == 0, update.stderr
    assert update.stdout.strip() == f"mailbox daemon {NEW} already runs the plugin's version ({new_root})"


def answer_no_challenge(venv: Path) -> None:
    """Make the installed daemon answer /health as 0.2.1 did: no X-Mailbox-Proof (0.2.1 predates the
    challenge of issue 20.1). Edited in the environment's copy of rest.py; the plugin tree is untouched."""
    (rest,) = venv.glob("lib/python*/site-packages/claude_mailbox/rest.py")
    text = rest.read_text(encoding="utf-8")
    proving = "if nonce is not None and token:"
    assert text.count(proving) == 1, "rest.health changed: update this stand-in for 0.2.1"
    rest.write_text(text.replace(proving, "if False:  # 0.2.1"), encoding="utf-8")


@pytest.mark.slow
def test_a_daemon_that_answers_no_challenge_like_0_2_1_is_updated_not_called_foreign(
    machine: Machine, old_venv: Path
) -> None:
    """Upgrading from 0.2.1: its daemon cannot prove it holds the token, but its socket is this
    user's, so the new plugin's SessionStart relays to it and updates it (issue 20.1)."""
    cache = machine.tmp / "cache" / "claude-mailbox" / "claude-mailbox"
    old_root = plugin_tree(cache / OLD, OLD)
    new_root = plugin_tree(cache / NEW, NEW)
    venv = machine.data / "venv"
    shutil.copytree(old_venv, venv, symlinks=True)
    answer_no_challenge(venv)
    doctor = machine.run(old_root, "cli", "doctor", "--yes", "--plugin-data", str(machine.data))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    old_pid = machine.daemon_pid()
    assert old_pid is not None
    challenge = {"X-Mailbox-Challenge": "0" * 32}
    unproven = request(machine.url, "GET", "/health", headers=challenge, auth=False)
    assert unproven.json["version"] == OLD and unproven.headers.get("X-Mailbox-Proof") is None
    machine.client().send("peer-b", "peer-a", "sent to 0.2.1")

    session = str(uuid.uuid4())
    text = context(machine.hook(new_root, "session-start", session, source="startup"))

    assert text.splitlines()[0] == f"mailbox daemon updated {OLD} -> {NEW}", text
    assert f"mailbox name is claude-{session[:8]}." in text
    assert "another program" not in text and "cannot prove" not in text, text
    new_pid = machine.daemon_pid()
    assert new_pid is not None and new_pid != old_pid and gone(old_pid)
    proven = request(machine.url, "GET", "/health", headers=challenge, auth=False)
    assert proven.json["version"] == NEW and proven.headers.get("X-Mailbox-Proof")  # the new daemon proves
    assert [m["body"] for m in machine.client().check("peer-a")["messages"]] == ["sent to 0.2.1"]


@pytest.mark.slow
def test_with_the_daemon_down_session_start_updates_the_environment_before_starting_it(
    machine: Machine, old_venv: Path
) -> None:
    cache = machine.tmp / "cache" / "claude-mailbox" / "claude-mailbox"
    old_root = plugin_tree(cache / OLD, OLD)
    new_root = plugin_tree(cache / NEW, NEW)
    old_pid = install_old(machine, old_root, old_venv)
    machine.client().send("peer-b", "peer-a", "sent before the reboot")
    process = psutil.Process(old_pid)
    process.send_signal(signal.SIGTERM)  # the machine rebooted; the plugin was updated meanwhile
    process.wait(15)

    session = str(uuid.uuid4())
    text = context(machine.hook(new_root, "session-start", session, source="startup"))

    assert text.splitlines()[0] == f"mailbox daemon updated {OLD} -> {NEW}", text
    assert f"mailbox name is claude-{session[:8]}." in text
    assert machine.client().health()["version"] == NEW
    assert managed_env.installed_version(machine.data / "venv") == NEW
    assert [m["body"] for m in machine.client().check("peer-a")["messages"]] == ["sent before the reboot"]


@pytest.mark.slow
def test_a_failed_reinstall_keeps_the_old_daemon_running(machine: Machine, old_venv: Path) -> None:
    cache = machine.tmp / "cache" / "claude-mailbox" / "claude-mailbox"
    old_root = plugin_tree(cache / OLD, OLD)
    broken_root = plugin_tree(cache / NEW, NEW)
    (broken_root / "pyproject.toml").write_text("[project\nthis is not TOML\n")  # pip cannot build it
    old_pid = install_old(machine, old_root, old_venv)
    machine.client().send("peer-b", "peer-a", "kept")

    session = str(uuid.uuid4())
    text = context(machine.hook(broken_root, "session-start", session, source="startup"))

    first = text.splitlines()[0]
    assert first.startswith(f"mailbox daemon {OLD} kept running: updating it to {NEW} failed ("), text
    assert first.endswith("; run /claude-mailbox:mailbox-doctor")
    assert f"mailbox name is claude-{session[:8]}." in text  # the session started normally
    assert machine.client().health()["version"] == OLD
    assert machine.daemon_pid() == old_pid
    assert managed_env.installed_version(machine.data / "venv") == OLD
    assert [m["body"] for m in machine.client().check("peer-a")["messages"]] == ["kept"]


@pytest.mark.slow
@pytest.mark.claude_code
def test_mailbox_update_pulls_the_new_plugin_with_claude_and_moves_the_daemon(machine: Machine, old_venv: Path) -> None:
    """What /claude-mailbox:mailbox-update runs, with the real `claude plugin` commands against a
    local marketplace in a private HOME."""
    claude = require_claude()
    source = plugin_tree(machine.tmp / "marketplace-source", OLD)
    user_home = Path(machine.env["HOME"])
    bin_dir = machine.tmp / "bin"
    (bin_dir / "claude").symlink_to(claude)
    cc_env = {**machine.env, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    for args in (["marketplace", "add", str(source)], ["install", "claude-mailbox@claude-mailbox"]):
        done = subprocess.run([str(claude), "plugin", *args], env=cc_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    cache = user_home / ".claude" / "plugins" / "cache" / "claude-mailbox" / "claude-mailbox"
    installed = cache / OLD
    assert lifecycle.source_version(installed) == OLD
    install_old(machine, installed, old_venv)
    machine.client().send("peer-b", "peer-a", "waiting across the update")

    stamp(source, NEW)  # the maintainer released 1.3.0
    machine.env.update(CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
    result = machine.run(installed, "cli", "update", "--pull", "--plugin-data", str(machine.data))

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("claude plugin marketplace update claude-mailbox: ok"), result.stdout
    assert out[1].startswith("claude plugin update claude-mailbox@claude-mailbox: ok"), result.stdout
    assert out[-1] == f"mailbox daemon updated {OLD} -> {NEW}", result.stdout
    assert lifecycle.source_version(cache / NEW) == NEW
    assert machine.client().health()["version"] == NEW
    assert [m["body"] for m in machine.client().check("peer-a")["messages"]] == ["waiting across the update"]


# --- the first release's requests, byte for byte ---------------------------------------------------


def exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body[: int(headers.get("content-length", len(body)))]


def old_request(daemon: Daemon, method: str, path: str, headers: list[str], body: bytes | None = None) -> bytes:
    """What the 0.1.0 stdlib client (wire.py) wrote: Host, Connection: close, its headers, length; plus
    the token, which every client sends since 0.2.0 (issue 12.1: a 0.1.0 client without it gets 401)."""
    token = [f"{name}: {value}" for name, value in daemon.headers.items()]
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{daemon.port}", "Connection: close", *token, *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def test_requests_of_the_first_release_still_work(daemon: Daemon) -> None:
    pid = str(os.getpid())
    session = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
    hook_headers = ["Content-Type: application/json", f"X-Mailbox-Claude-Pid: {pid}", "X-Mailbox-Plugin-Version: 0.1.0"]
    start = json.dumps(
        {
            "session_id": session,
            "transcript_path": "/t",
            "cwd": "/p",
            "hook_event_name": "SessionStart",
            "source": "startup",
        }
    ).encode()

    status, headers, body = exchange(daemon.url, old_request(daemon, "GET", "/health", ["Accept: application/json"]))
    assert status == 200 and json.loads(body)["status"] == "ok" and "version" in json.loads(body)

    status, headers, body = exchange(
        daemon.url, old_request(daemon, "POST", "/v1/hooks/session-start", hook_headers, start)
    )
    assert status == 200
    assert headers["x-hook-stream"] == "stdout" and headers["x-hook-exit"] == "0"
    assert headers["x-mailbox-daemon-version"]  # what the old relay compares with its own version
    assert "mailbox name is claude-0f1e2d3c." in json.loads(body)["hookSpecificOutput"]["additionalContext"]

    send_headers = ["Accept: application/json", "Content-Type: application/json", "X-Mailbox: peer-old"]
    status, _, body = exchange(
        daemon.url,
        old_request(daemon, "POST", "/v1/send", send_headers, b'{"to": "claude-0f1e2d3c", "body": "hello from 0.1.0"}'),
    )
    assert status == 201
    assert set(json.loads(body)) >= {"id", "from", "to", "createdAt"}

    status, _, body = exchange(
        daemon.url, old_request(daemon, "GET", "/v1/peek?name=claude-0f1e2d3c", ["Accept: application/json"])
    )
    assert status == 200 and json.loads(body)["pending"] == 1

    prompt = json.dumps(
        {"session_id": session, "cwd": "/p", "hook_event_name": "UserPromptSubmit", "prompt": "hi"}
    ).encode()
    status, headers, body = exchange(
        daemon.url, old_request(daemon, "POST", "/v1/hooks/prompt-submit", hook_headers, prompt)
    )
    assert status == 200 and headers["x-hook-exit"] == "0"
    assert '"hello from 0.1.0"' in json.loads(body)["hookSpecificOutput"]["additionalContext"]

    status, _, body = exchange(
        daemon.url,
        old_request(
            daemon,
            "POST",
            "/v1/check-inbox?name=peer-old",
            ["Accept: application/json", "X-Mailbox: peer-old", "Content-Type: application/json"],
            b"{}",
        ),
    )
    assert status == 200 and json.loads(body) == {"messages": [], "remaining": 0}

    status, _, body = exchange(daemon.url, old_request(daemon, "GET", "/v1/list", ["Accept: application/json"]))
    boxes = {box["name"]: box for box in json.loads(body)["mailboxes"]}
    assert status == 200
    assert set(boxes["claude-0f1e2d3c"]) >= {"name", "lastSeen", "pending", "state", "alive", "projectDir", "aliasOf"}

    end = json.dumps({"session_id": session, "cwd": "/p", "hook_event_name": "SessionEnd", "reason": "other"}).encode()
    status, headers, _ = exchange(daemon.url, old_request(daemon, "POST", "/v1/hooks/session-end", hook_headers, end))
    assert status == 200 and headers["x-hook-exit"] == "0"
