"""Remote daemons (issue 13.2): beyond loopback only with the token and TLS (or insecure_remote);
HTTPS with the configured certificate; Host and Origin accept the public name and nothing else;
the stdlib client (CLI, hooks) speaks https:// with a CA file. Real daemons, a self-signed
certificate made by the `openssl` binary for each module."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_mailbox import config, httpclient, identity, server
from claude_mailbox.errors import ConfigError
from harness import Daemon, base_env, free_port, run_cli
from plugin_env import hook_env, prompt_input, run_hook, start_input

PUBLIC = "mailbox.test"  # the certificate's and the config's public name (resolved by nobody: Host only)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")


def write_config(home: Path, **settings: object) -> None:
    home.mkdir(parents=True, exist_ok=True)
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def serve_once(home: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`serve` that must refuse to start: its exit and its one line."""
    return run_cli("serve", "--port", str(free_port()), env=base_env(home), timeout=timeout)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert_file, key_file = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key_file), "-out", str(cert_file), "-days", "2", "-subj", "/CN=localhost"),
            *("-addext", f"subjectAltName=DNS:localhost,DNS:{PUBLIC},IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory, cert: tuple[Path, Path]) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("remote-home")
    write_config(home, tls_cert=str(cert[0]), tls_key=str(cert[1]), public_name=PUBLIC)
    daemon = Daemon(home, log_path=home / "daemon.log")
    daemon.spawn()
    deadline = time.monotonic() + 30
    while not tls_answers(daemon.port, cert[0]):
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
        assert time.monotonic() < deadline, "the TLS daemon did not answer /health"
        time.sleep(0.05)
    yield daemon
    daemon.stop()


def tls_answers(port: int, ca: Path) -> bool:
    try:
        return raw_tls(port, ca, "GET", "/health")[0] == 200
    except OSError:
        return False


def raw_tls(
    port: int, ca: Path, method: str, path: str, *, host: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTPS exchange with any Host header (httpclient always sends the URL's)."""
    context = ssl.create_default_context(cafile=str(ca))
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'localhost:{port}'}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    with plain, context.wrap_socket(plain, server_hostname="localhost") as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def remote_env(daemon: Daemon, home: Path, **extra: str) -> dict[str, str]:
    """A machine that is not the daemon's: its own empty data dir, the https URL and the token."""
    home.mkdir(parents=True, exist_ok=True)
    return base_env(
        home,
        CLAUDE_MAILBOX_URL=f"https://localhost:{daemon.port}",
        CLAUDE_MAILBOX_TOKEN=daemon.token or "",
        **extra,
    )


# --- refusals at start -------------------------------------------------------------------------


def test_non_loopback_bind_without_tls_is_refused_naming_the_keys(tmp_path: Path) -> None:
    write_config(tmp_path, bind="0.0.0.0")
    done = serve_once(tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to bind 0.0.0.0 beyond loopback without TLS" in lines[0]
    assert "tls_cert and tls_key" in lines[0] and "insecure_remote = true" in lines[0]


def test_non_loopback_bind_without_the_token_is_refused(tmp_path: Path) -> None:
    write_config(tmp_path, bind="0.0.0.0", auth="none", insecure_remote=True)
    done = serve_once(tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f'claude-mailbox: refusing to bind 0.0.0.0: beyond loopback the token is required: set auth = "token" in '
        f"{tmp_path / 'config.toml'}"
    ]


def test_a_half_tls_config_and_bad_files_are_one_line(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    write_config(tmp_path, tls_cert=str(cert[0]))
    done = serve_once(tmp_path)
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "tls_cert and tls_key go together: tls_key is missing" in done.stderr
    write_config(tmp_path, tls_cert=str(cert[0]), tls_key=str(tmp_path / "nope.pem"))
    done = serve_once(tmp_path)
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot use tls_cert" in done.stderr and "nope.pem" in done.stderr
    write_config(tmp_path, tls_cert=str(cert[1]), tls_key=str(cert[0]))  # swapped: not a certificate
    done = serve_once(tmp_path)
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot use tls_cert" in done.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"insecure_remote": "yes"}, "insecure_remote must be true or false, not 'yes'"),
        ({"tls_cert": 3}, "tls_cert must be a file path"),
        ({"public_name": "a b"}, "public_name must be host names separated by commas, not 'a b'"),
        ({"tls_key": "/k.pem"}, "tls_cert and tls_key go together: tls_cert is missing"),
    ],
)
def test_remote_settings_are_validated_in_one_line(tmp_path: Path, settings: dict[str, object], message: str) -> None:
    write_config(tmp_path, **settings)
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path / "config.toml")
    assert message in caught.value.message and "\n" not in caught.value.message


def test_insecure_remote_listens_beyond_loopback_with_the_token_on(tmp_path: Path) -> None:
    write_config(tmp_path, bind="0.0.0.0", insecure_remote=True, public_name=PUBLIC)
    daemon = Daemon(tmp_path, log_path=tmp_path / "daemon.log").start()
    try:
        url = f"http://127.0.0.1:{daemon.port}"
        assert httpclient.http_request(url, "GET", "/v1/list").status == 401  # no token: refused
        assert httpclient.http_request(url, "GET", "/v1/list", headers=daemon.headers).status == 200
        assert (tmp_path / "daemon.url").read_text(encoding="utf-8") == f"http://{PUBLIC}:{daemon.port}"
    finally:
        daemon.stop()


# --- the HTTPS daemon ---------------------------------------------------------------------------


def test_the_daemon_serves_https_only(tls_daemon: Daemon, cert: tuple[Path, Path]) -> None:
    assert raw_tls(tls_daemon.port, cert[0], "GET", "/health")[0] == 200
    with socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=5) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{tls_daemon.port}\r\n\r\n".encode())
        answer = sock.recv(64)
    assert not answer.startswith(b"HTTP/1.1 200")  # plain HTTP gets no mail service on the TLS port
    url_file = (tls_daemon.home / "daemon.url").read_text(encoding="utf-8")
    assert url_file == f"https://127.0.0.1:{tls_daemon.port}"


def test_host_and_origin_accept_the_public_name_only(tls_daemon: Daemon, cert: tuple[Path, Path]) -> None:
    port, ca, headers = tls_daemon.port, cert[0], tls_daemon.headers
    for host in (f"{PUBLIC}:{port}", PUBLIC.upper(), f"localhost:{port}", f"127.0.0.1:{port}"):
        assert raw_tls(port, ca, "GET", "/v1/list", host=host, headers=headers)[0] == 200, host
    for host in (f"evil.example:{port}", f"{PUBLIC}.evil:{port}", f"{PUBLIC}:1@evil", f"x{PUBLIC}"):
        status, body = raw_tls(port, ca, "GET", "/v1/list", host=host, headers=headers)
        assert status == 421 and PUBLIC.encode() in body, (host, body)
    good = {**headers, "Origin": f"https://{PUBLIC}:{port}"}
    assert raw_tls(port, ca, "GET", "/v1/list", headers=good)[0] == 200
    bad = {**headers, "Origin": "https://evil.example"}
    assert raw_tls(port, ca, "GET", "/v1/list", headers=bad)[0] == 403


def test_no_token_is_401_over_https(tls_daemon: Daemon, cert: tuple[Path, Path]) -> None:
    status, body = raw_tls(tls_daemon.port, cert[0], "GET", "/v1/list")
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"


def test_the_cli_sends_and_checks_over_https(tls_daemon: Daemon, cert: tuple[Path, Path], tmp_path: Path) -> None:
    env = remote_env(tls_daemon, tmp_path / "laptop", CLAUDE_MAILBOX_CA=str(cert[0]))
    sent = run_cli("send", "--from", "laptop", "--to", "devbox", "--body", "over tls", env=env)
    assert sent.returncode == 0, sent.stderr
    checked = run_cli("check", "--name", "devbox", "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "over tls" in checked.stdout
    # The CA from config.toml's tls_ca instead of the environment.
    other = tmp_path / "other"
    write_config(other, tls_ca=str(cert[0]))
    listed = run_cli("list", env=remote_env(tls_daemon, other))
    assert listed.returncode == 0, listed.stderr
    # On the daemon's own machine: no CA named, its tls_cert is trusted, the URL comes from daemon.url.
    local = run_cli("peek", "--name", "devbox", env=base_env(tls_daemon.home))
    assert local.returncode == 0 and "devbox: 0 pending" in local.stdout, local


def test_an_unverified_certificate_is_refused_in_one_line(tls_daemon: Daemon, tmp_path: Path) -> None:
    done = run_cli("list", env=remote_env(tls_daemon, tmp_path / "laptop"))
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "TLS: certificate verify failed: self-signed certificate" in done.stderr
    assert "CLAUDE_MAILBOX_CA" in done.stderr
    status = run_cli("status", "--json", env=remote_env(tls_daemon, tmp_path / "laptop"))
    assert status.returncode == 2, status.stderr
    shown = json.loads(status.stdout)
    assert shown["state"] == "Untrusted" and "certificate verify failed" in shown["error"], shown


def test_a_hook_delivers_over_https(tls_daemon: Daemon, cert: tuple[Path, Path], tmp_path: Path) -> None:
    session = str(uuid.uuid4())
    mailbox = identity.session_mailbox(session)
    url = f"https://localhost:{tls_daemon.port}"
    env = hook_env(base_env(tmp_path / "laptop"), url=url, claude_pid=os.getpid())
    env.update(CLAUDE_MAILBOX_TOKEN=tls_daemon.token or "", CLAUDE_MAILBOX_CA=str(cert[0]))
    (tmp_path / "laptop").mkdir(exist_ok=True)
    sent = run_cli("send", "--from", "devbox", "--to", mailbox, "--body", "via https hook", env=env)
    assert sent.returncode == 0, sent.stderr
    run = run_hook("prompt-submit", prompt_input(session), env)
    assert run.returncode == 0, run.stderr
    assert "via https hook" in run.context


def test_an_untrusted_daemon_is_named_at_session_start_and_never_started_again(
    tls_daemon: Daemon, tmp_path: Path
) -> None:
    """A daemon answers at the https URL, but its certificate does not verify here: the session is told
    why and what to set, and no local daemon is started in its place (it would find the port taken)."""
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    session = str(uuid.uuid4())
    env = hook_env(base_env(laptop), url=f"https://localhost:{tls_daemon.port}", claude_pid=os.getpid())
    env["CLAUDE_MAILBOX_TOKEN"] = tls_daemon.token or ""
    started = run_hook("session-start", start_input(session, str(tmp_path)), env)
    assert started.returncode == 0, started.stderr
    line = started.stdout
    assert line.count("\n") == 1 and line.startswith("claude-mailbox: mail is offline in this session"), line
    assert "TLS: certificate verify failed: self-signed certificate" in line
    assert "CLAUDE_MAILBOX_CA" in line and "not running" not in line
    assert sorted(p.name for p in laptop.iterdir()) == []  # no start.lock, daemon.pid, log or venv
    prompt = run_hook("prompt-submit", prompt_input(session), env)
    assert prompt.returncode == 0 and prompt.stdout == "", prompt


def own_name_on_loopback() -> str:
    """This machine's host name when it resolves to 127.0.0.1: it stands in for another machine's name
    (the address does not look local, and the daemon stays on loopback)."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = "unresolved"
    if address != "127.0.0.1" or name.lower() == "localhost":
        pytest.skip(f"this machine's name {name!r} resolves to {address}, not 127.0.0.1")
    return name


def test_the_doctor_checks_a_daemon_on_another_machine_and_installs_nothing(tmp_path: Path) -> None:
    name = own_name_on_loopback()
    devbox = tmp_path / "devbox"
    write_config(devbox, public_name=name)
    daemon = Daemon(devbox, log_path=devbox / "daemon.log").start()
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    env = base_env(laptop, CLAUDE_MAILBOX_URL=f"http://{name}:{daemon.port}", HOME=str(tmp_path))

    def doctor(*args: str) -> tuple[int, dict[str, dict[str, str]]]:
        done = run_cli("doctor", "--json", *args, env=env, timeout=120)
        return done.returncode, {check["id"]: check for check in json.loads(done.stdout)["checks"]}

    try:
        code, checks = doctor()
        assert code == 1 and list(checks) == ["python", "remote", "smoke"], checks
        assert checks["remote"]["status"] == "failed" and "refuses this machine's token" in checks["remote"]["summary"]
        assert str(laptop / "token") in checks["remote"]["fix"] and checks["smoke"]["status"] == "skipped"

        (laptop / "token").write_text(daemon.token or "")
        (laptop / "token").chmod(0o600)
        code, checks = doctor()
        assert code == 0, checks
        assert [check["status"] for check in checks.values()] == ["ok", "ok", "ok"], checks
        assert f"on another machine at http://{name}:{daemon.port}" in checks["remote"]["summary"]
        assert "nothing to install or start here" in checks["remote"]["summary"]

        code, checks = doctor("--prefix", "backend")
        assert code == 1 and checks["prefix"]["status"] == "failed"
        assert "on the daemon's machine" in str(checks["prefix"]["fix"])
    finally:
        daemon.stop()
    code, checks = doctor()
    assert code == 1 and checks["remote"]["status"] == "failed" and "not answering" in checks["remote"]["summary"]
    assert "start it on its own machine" in str(checks["remote"]["fix"])
    assert sorted(path.name for path in laptop.iterdir()) == ["token"]  # no venv, log, pid file or lock


# --- the pure checks ----------------------------------------------------------------------------


def test_public_names_come_from_public_name_and_a_named_bind() -> None:
    assert config.Config(public_name="a.example, B.example").public_names == {"a.example", "b.example"}
    assert config.Config(bind="devbox.example", insecure_remote=True).public_names == {"devbox.example"}
    assert config.Config(bind="0.0.0.0").public_names == frozenset()
    assert config.Config(bind="0.0.0.0", public_name="d.example", port=9).url == "http://d.example:9"
    public = frozenset({"d.example"})
    assert server.host_allowed("d.example:443", public) and server.host_allowed("D.EXAMPLE", public)
    assert not server.host_allowed("d.example", frozenset()) and not server.host_allowed("d.example.evil", public)
    assert server.origin_allowed("https://d.example:8443", public)
    assert not server.origin_allowed("https://e.example", public)


def test_autostart_never_starts_a_local_daemon_for_a_remote_url(tmp_path: Path) -> None:
    """A session whose CLAUDE_MAILBOX_URL names another machine's daemon that is down must not start
    one here (it would bind the remote host's name): the remote daemon is started on its machine."""
    home = tmp_path / "home"
    script = (
        "from claude_mailbox.setup import autostart; print(autostart.ensure_running('http://192.0.2.1:4999', wait=0.5))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=base_env(home), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert not (home / "daemon.pid").exists() and not (home / "daemon.log").exists()
