"""Issue 20.1: no client sends the token to a listener that is not this user's daemon. A squatter,
run as another Unix user, binds the daemon's port while the daemon is stopped, answers like a
daemon (status ok, a version header, a made-up proof) and records every byte it is sent. The hooks,
the CLI, `status`, `open` and the MCP headersHelper run against it: none sends the token, and
each says another program holds the port."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import REPO, base_env, free_port, run_cli

SQUATTER_USER = "mailbox-squatter"
TOKEN = "ab" * 32

# Answers every request like a daemon would, keeps the connection for a second request (a client
# that sends its token after the first answer would be caught), and prints what it got, one JSON line
# per connection.
SQUATTER = textwrap.dedent(
    """
    import json, socket, sys
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    sock.listen(64)
    print("listening", flush=True)
    body = json.dumps({"status": "ok", "version": sys.argv[2], "auth": "token", "port": int(sys.argv[1])}).encode()
    answer = (
        "HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nX-Mailbox-Daemon-Version: %s\\r\\n"
        "X-Mailbox-Proof: %s\\r\\nContent-Length: %d\\r\\n\\r\\n" % (sys.argv[2], "0" * 64, len(body))
    ).encode() + body
    while True:
        conn, _ = sock.accept()
        conn.settimeout(0.5)
        got = b""
        try:
            while len(got) < 1 << 20:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
                if b"\\r\\n\\r\\n" in chunk:
                    conn.sendall(answer)
        except OSError:
            pass
        conn.close()
        print(json.dumps(got.decode("latin-1")), flush=True)
    """
)


def _squatter_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root: the squatter runs as another Unix user (created with useradd)")
    try:
        return pwd.getpwnam(SQUATTER_USER)
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        pytest.skip("needs useradd to create the squatter's Unix user")
    subprocess.run(["useradd", "--system", "--no-create-home", SQUATTER_USER], check=True, capture_output=True)
    return pwd.getpwnam(SQUATTER_USER)


def _others_can_run(path: str) -> bool:
    real = Path(path).resolve()
    if not real.is_file():
        return False
    return all(os.stat(part).st_mode & 0o001 for part in [real, *real.parents])


class Squatter:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process, self.port = process, port
        self.url = f"http://127.0.0.1:{port}"

    def received(self) -> list[str]:
        """What every connection so far sent it (stops it)."""
        time.sleep(0.7)  # its last connection's read times out
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        return [json.loads(line) for line in out.splitlines()[1:]]


@pytest.fixture
def squatter() -> Iterator[Squatter]:
    user = _squatter_user()
    from claude_mailbox import __version__

    # Another user cannot run an interpreter under root's 0700 home (pyenv): find one it can.
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if _others_can_run(p)), None)
    if python is None:
        pytest.skip("no Python interpreter that another Unix user can run (/usr/bin/python3)")
    port = free_port()
    process = subprocess.Popen(
        [python, "-I", "-c", SQUATTER, str(port), __version__],
        stdout=subprocess.PIPE,
        text=True,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd="/",
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "listening"
    try:
        yield Squatter(process, port)
    finally:
        process.kill()
        process.wait()


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "token").write_text(TOKEN + "\n")
    os.chmod(home / "token", 0o600)
    return home


def _hook(event: str, env: dict[str, str], stdin: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "hooks" / "run"), event],
        input=json.dumps(stdin),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_client_sends_the_token_to_a_squatter(squatter: Squatter, tmp_path: Path) -> None:
    home = _home(tmp_path)
    env = base_env(home, CLAUDE_MAILBOX_URL=squatter.url, CLAUDE_PLUGIN_ROOT=str(REPO), CLAUDE_PID=str(os.getpid()))
    stdin = {"session_id": "5e55104b-0000-4000-8000-000000000020", "cwd": str(tmp_path), "hook_event_name": "x"}
    held = f"port {squatter.port}"
    owner = f'"{SQUATTER_USER}"'

    start = _hook("session-start", env, {**stdin, "hook_event_name": "SessionStart", "source": "startup"})
    assert start.returncode == 0, start
    assert held in start.stdout and "held by another program" in start.stdout and owner in start.stdout, start
    assert "mcp__" not in start.stdout  # no tool named: the session has none

    prompt = _hook("prompt-submit", env, {**stdin, "hook_event_name": "UserPromptSubmit", "prompt": "hi"})
    assert prompt.returncode == 0 and prompt.stdout == "", prompt

    listed = run_cli("list", env=env)
    assert listed.returncode == 2 and "another program" in listed.stderr and owner in listed.stderr, listed

    status = run_cli("status", env=env)
    assert held in status.stdout and "cannot prove it holds" in status.stdout and owner in status.stdout, status

    opened = run_cli("open", "--no-browser", env=env)
    assert opened.returncode == 2 and TOKEN not in opened.stdout + opened.stderr, opened

    headers = subprocess.run(
        [str(REPO / "hooks" / "run"), "headers"], env=env, capture_output=True, text=True, timeout=60
    )
    assert headers.returncode == 0, headers
    assert "Authorization" not in headers.stdout and "X-Mailbox-Claude-Pid" in json.loads(headers.stdout)
    assert "another program" in headers.stderr, headers

    received = squatter.received()
    assert len(received) >= 6, received  # every client did reach it
    for got in received:
        assert "authorization" not in got.lower() and TOKEN not in got, got
