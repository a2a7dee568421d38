"""The per-user token (issue 12.1): every route but /health and the page's static shell needs
`Authorization: Bearer <token>`; the CLI, the hooks, the headersHelper (so MCP), status and doctor
send it on their own; `auth = "none"` opens the loopback again. Against real daemons."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_mailbox import auth, identity
from harness import REPO, Daemon, base_env, run_cli
from plugin_env import hook_env, prompt_input, run_hook
from rawhttp import Reply, request

PUBLIC = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/"), ("HEAD", "/"), ("GET", "/static/{name}")}
PUBLIC |= {("HEAD", "/static/{name}")}
SAMPLES = {"{name}": "app.js", "{event}": "prompt-submit"}  # values for the routes' path variables
WRONG = "Bearer " + "0" * 64


def routes() -> list[tuple[str, str]]:
    """Every (method, path template) the daemon's app registers, read from the app router itself,
    so a route added later is covered without touching this test."""
    from claude_mailbox.config import Config
    from claude_mailbox.server import make_app

    home = Path(os.environ["CLAUDE_MAILBOX_HOME"])
    app = make_app(Config(db_path=home / "routes.db", auth="none"))
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "*":
            found.add((route.method, path))
    return sorted(found)


def concrete(path: str) -> str:
    for variable, value in SAMPLES.items():
        path = path.replace(variable, value)
    return path


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("auth-home")
    with Daemon(home, log_path=home / "daemon.log") as running:
        running.wait_mcp_ready()
        yield running


def unauthorized(reply: Reply, daemon: Daemon, method: str) -> str:
    """A 401 in the one error shape, naming the token file; returns the message."""
    assert reply.status == 401, (reply.status, reply.body[:300])
    assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer"), reply.headers.items()
    if method == "HEAD":
        return ""
    error = reply.error()
    assert error["code"] == "unauthorized", error
    assert str(daemon.home / "token") in error["message"], error
    assert "Authorization: Bearer" in error["message"], error
    return error["message"]


def send_without_auth(daemon: Daemon, method: str, path: str, authorization: str | None) -> Reply:
    headers = {"Authorization": authorization} if authorization is not None else {}
    body = b"{}" if method in ("POST", "PUT", "PATCH", "DELETE") else None
    if body is not None:
        headers["Content-Type"] = "application/json"
    return request(daemon.url, method, path, body=body, headers=headers, auth=False, timeout=10.0)


# --- the daemon: every route refuses, /health and the page do not ----------------------------------------


def test_the_route_list_is_the_documented_one(guarded: Daemon) -> None:
    registered = {path for _, path in routes()}
    documented = set(request(guarded.url, "GET", "/openapi.json").json["paths"])
    assert documented - registered == set(), documented - registered  # every documented route is enumerated
    assert {"/v1/send", "/v1/check-inbox", "/mcp", "/v1/feed", "/openapi.json"} <= registered


def test_every_route_refuses_a_request_without_the_token(guarded: Daemon) -> None:
    checked = 0
    for method, path in routes():
        if (method, path) in PUBLIC:
            continue
        message = unauthorized(send_without_auth(guarded, method, concrete(path), None), guarded, method)
        # HEAD answers have no body, so no message; every other answer names the token.
        assert (message == "") if method == "HEAD" else ("requires its token" in message), (method, path, message)
        checked += 1
    assert checked >= 15, checked
    # A path no route serves says nothing more without the token than any other.
    unauthorized(send_without_auth(guarded, "GET", "/v1/nothing-here", None), guarded, "GET")


@pytest.mark.parametrize("authorization", [WRONG, "Bearer", "Basic dXNlcjpwYXNz", "Bearer x y", "Bearer caf\u00e9"])
def test_every_route_refuses_a_wrong_token(guarded: Daemon, authorization: str) -> None:
    checked = 0
    for method, path in routes():
        if (method, path) in PUBLIC:
            continue
        if authorization != WRONG and method != "POST":  # the odd header forms: one method is enough
            continue
        raw = authorization.encode("utf-8").decode("latin-1")  # http.client sends latin-1
        message = unauthorized(send_without_auth(guarded, method, concrete(path), raw), guarded, method)
        assert (message == "") if method == "HEAD" else ("not this daemon's" in message), (method, path, message)
        checked += 1
    assert checked >= (15 if authorization == WRONG else 1), checked


def test_health_and_the_page_shell_answer_without_the_token(guarded: Daemon) -> None:
    health = request(guarded.url, "GET", "/health", auth=False)
    assert health.status == 200 and health.json["auth"] == "token"
    page = request(guarded.url, "GET", "/", auth=False)
    assert page.status == 200 and page.content_type == "text/html"
    for name in ("app.js", "style.css"):
        assert request(guarded.url, "GET", f"/static/{name}", auth=False).status == 200
    # The page holds no data: what it shows comes from the API, which wants the token.
    unauthorized(send_without_auth(guarded, "GET", "/v1/feed", None), guarded, "GET")
    unauthorized(send_without_auth(guarded, "POST", "/", None), guarded, "POST")
    # The page takes the token from the URL fragment and sends it as a header on its API calls.
    script = (REPO / "daemon" / "claude_mailbox" / "web" / "app.js").read_text()
    assert "location.hash" in script and 'headers.Authorization = "Bearer " + token' in script


def test_the_right_token_lets_every_route_in(guarded: Daemon) -> None:
    checked = 0
    for method, path in routes():
        if (method, path) in PUBLIC or method == "HEAD":
            continue
        target = concrete(path)
        reply = (
            request(guarded.url, method, target, json_body={})
            if method == "POST"
            else request(guarded.url, method, target)
        )
        assert reply.status != 401, (method, path, reply.body[:300])
        checked += 1
    assert checked >= 15, checked
    sent = request(guarded.url, "POST", "/v1/send", json_body={"to": "tok-b", "body": "hi"}, headers={"X-Mailbox": "a"})
    assert sent.status == 201, sent.body


def test_a_token_from_another_home_is_refused(guarded: Daemon, tmp_path: Path) -> None:
    with Daemon(tmp_path / "other-home") as other:
        assert other.token and other.token != guarded.token
        reply = request(guarded.url, "GET", "/v1/list", headers=other.headers)
        assert "not this daemon's" in unauthorized(reply, guarded, "GET")
        # Its CLI (its own data dir's token) is refused by this daemon, in one line, exit 1.
        done = run_cli("list", "--url", guarded.url, env=base_env(other.home))
        assert done.returncode == 1 and done.stdout == "", done
        assert done.stderr.count("\n") == 1 and str(guarded.home / "token") in done.stderr, done.stderr


# --- the token file ------------------------------------------------------------------------------------------


def test_the_token_file_is_private_and_survives_restarts(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)  # a data dir someone created open: the daemon closes it
    with Daemon(home) as daemon:
        first = daemon.token
        assert first is not None and re.fullmatch(r"[0-9a-f]{64}", first)
        assert stat.S_IMODE((home / "token").stat().st_mode) == 0o600
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        daemon.restart()
        assert daemon.token == first  # clients keep working across restarts and version updates
        assert request(daemon.url, "GET", "/v1/list").status == 200


def test_ensure_token_creates_one_token_under_a_race(tmp_path: Path) -> None:
    home = str(tmp_path / "race")
    barrier = threading.Barrier(8)
    got: list[str] = []

    def create() -> None:
        barrier.wait()
        got.append(auth.ensure_token(home))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(got) == 8 and len(set(got)) == 1, got
    assert auth.read_token(home) == got[0]
    assert [name for name in os.listdir(home) if name != "token"] == []  # no temporary file left


def test_a_damaged_token_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "damaged"
    home.mkdir()
    (home / "token").write_text("not a token!\n")
    done = run_cli("serve", "--port", "0", env=base_env(home), timeout=30)
    assert done.returncode == 1, done
    said = f"claude-mailbox: the token file {home / 'token'} is damaged or unreadable: delete it, then start the daemon"
    assert done.stderr == said + " again\n", done.stderr
    assert (home / "token").read_text() == "not a token!\n"  # never replaced behind the user's back


def test_an_unwritable_data_dir_refuses_to_start_naming_the_token_file(tmp_path: Path) -> None:
    from test_faults import unwritable

    home = tmp_path / "data"
    home.mkdir()
    with unwritable(home) as readonly:
        done = run_cli("serve", "--port", "0", env=base_env(readonly), timeout=30)
        assert done.returncode == 1, done
        assert done.stderr.startswith(f"claude-mailbox: the data dir {readonly} is not writable: "), done.stderr
        assert str(readonly / "token") in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_matches_is_exact() -> None:
    token = "ab" * 32
    assert auth.matches(f"Bearer {token}", token) and auth.matches(f"bearer  {token} ", token)
    for header in (None, "", token, f"Bearer {token}x", f"Bearer {token[:-1]}", f"Basic {token}", "Bearer \u00e9"):
        assert not auth.matches(header, token), header


# --- auth = "none" and the config key -------------------------------------------------------------------------


def test_auth_none_opens_the_loopback(tmp_path: Path) -> None:
    home = tmp_path / "open"
    home.mkdir()
    (home / "config.toml").write_text('auth = "none"\n')
    with Daemon(home) as daemon:
        assert request(daemon.url, "GET", "/health", auth=False).json["auth"] == "none"
        reply = request(
            daemon.url, "POST", "/v1/send", json_body={"to": "b", "body": "x"}, headers={"X-Mailbox": "a"}, auth=False
        )
        assert reply.status == 201, reply.body
        assert request(daemon.url, "GET", "/v1/list", auth=False).status == 200
        status = run_cli("status", env=daemon.env())
        assert status.returncode == 0, status.stderr
        assert re.search(r'auth\s+none \(auth = "none"', status.stdout), status.stdout


def test_a_bad_auth_setting_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "bad"
    home.mkdir()
    (home / "config.toml").write_text('auth = "maybe"\n')
    done = run_cli("serve", "--port", "0", env=base_env(home), timeout=30)
    assert done.returncode == 1, done
    said = done.stderr.strip()
    assert said == f'claude-mailbox: {home / "config.toml"}: auth must be "token" or "none", not \'maybe\'', said


# --- the clients send it on their own ---------------------------------------------------------------------------


def test_the_cli_sends_the_token(guarded: Daemon) -> None:
    env = guarded.env()
    assert run_cli("send", "--from", "cli-a", "--to", "cli-b", "--body", "hello", env=env).returncode == 0
    done = run_cli("check", "--name", "cli-b", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert [m["body"] for m in json.loads(done.stdout)["messages"]] == ["hello"]
    # $CLAUDE_MAILBOX_TOKEN wins over the file: a wrong one is refused, the right one from elsewhere works.
    wrong = run_cli("list", env={**env, auth.TOKEN_ENV: "0" * 64})
    assert wrong.returncode == 1 and "not this daemon's" in wrong.stderr, wrong
    elsewhere = base_env(guarded.home.parent / "no-such-home", CLAUDE_MAILBOX_URL=guarded.url)
    assert run_cli("list", env=elsewhere).returncode == 1
    assert run_cli("list", env={**elsewhere, auth.TOKEN_ENV: guarded.token or ""}).returncode == 0


def test_status_shows_the_mode_and_the_token_path(guarded: Daemon) -> None:
    status = run_cli("status", env=guarded.env())
    assert status.returncode == 0, status.stderr
    assert f"auth       token ({guarded.home / 'token'})" in status.stdout, status.stdout
    data = json.loads(run_cli("status", "--json", env=guarded.env()).stdout)
    assert data["auth"]["mode"] == "token" and data["auth"]["tokenPath"] == str(guarded.home / "token")
    # With a token the daemon refuses, status still answers and says so.
    refused = run_cli("status", env={**guarded.env(), auth.TOKEN_ENV: "0" * 64})
    assert refused.returncode == 0 and "refused: the token sent is not this daemon's" in refused.stdout, refused
    # Another machine with the token only in $CLAUDE_MAILBOX_TOKEN: status says MCP will not have it
    # (Claude Code keeps variables named like secrets from the headersHelper), and where to put it.
    elsewhere = guarded.home.parent / "laptop-home"
    elsewhere.mkdir(exist_ok=True)
    laptop = base_env(elsewhere, CLAUDE_MAILBOX_URL=guarded.url, **{auth.TOKEN_ENV: guarded.token or ""})
    warned = run_cli("status", env=laptop)
    assert warned.returncode == 0, warned.stderr
    hint = f"Claude Code's MCP connection does not see ${auth.TOKEN_ENV}: put the token in {elsewhere / 'token'}"
    assert hint in warned.stdout, warned.stdout
    assert "does not see" not in status.stdout  # the token file itself: nothing to say


def test_open_prints_the_login_link(guarded: Daemon) -> None:
    done = run_cli("open", "--no-browser", env=guarded.env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{guarded.url}/#token={guarded.token}"


def test_a_hook_sends_the_token(guarded: Daemon) -> None:
    session = str(uuid.uuid4())
    mailbox = identity.session_mailbox(session)
    request(guarded.url, "POST", "/v1/send", json_body={"to": mailbox, "body": "via hook"}, headers={"X-Mailbox": "h"})
    env = hook_env(base_env(guarded.home), url=guarded.url, claude_pid=os.getpid())
    # With a token the daemon refuses, the hook stays quiet (exit 0) and the mail stays pending.
    refused = run_hook("prompt-submit", prompt_input(session), {**env, auth.TOKEN_ENV: "0" * 64})
    assert refused.returncode == 0 and refused.stdout == "", refused
    assert request(guarded.url, "GET", f"/v1/peek?name={mailbox}").json["pending"] == 1
    run = run_hook("prompt-submit", prompt_input(session), env)
    assert run.returncode == 0, run.stderr
    assert "via hook" in run.context
    assert request(guarded.url, "GET", f"/v1/peek?name={mailbox}").json["pending"] == 0  # and it acknowledged


def headers_helper(daemon: Daemon, tmp_path: Path) -> dict[str, str]:
    """The .mcp.json headersHelper's output, run as Claude Code runs it."""
    command = json.loads((REPO / ".mcp.json").read_text())["mcpServers"]["mailbox"]["headersHelper"]
    data = tmp_path / "plugin-data"
    data.mkdir(exist_ok=True)
    command = command.replace("${CLAUDE_PLUGIN_ROOT}", str(REPO)).replace("${CLAUDE_PLUGIN_DATA}", str(data))
    env = hook_env(base_env(daemon.home), url=daemon.url, claude_pid=None)
    done = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, cwd=REPO, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done
    return dict(json.loads(done.stdout))


def test_mcp_through_the_headers_helper(guarded: Daemon, tmp_path: Path) -> None:
    import mcp
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = headers_helper(guarded, tmp_path)
    assert headers["Authorization"] == f"Bearer {guarded.token}"

    async def tools(sent: dict[str, str]) -> set[str]:
        async with (
            create_mcp_http_client(headers=sent) as http,
            mcp.Client(streamable_http_client(f"{guarded.url}/mcp", http_client=http), mode="legacy") as client,
        ):
            return {tool.name for tool in (await client.list_tools()).tools}

    assert "send" in asyncio.run(tools(headers))
    without = {key: value for key, value in headers.items() if key != "Authorization"}
    with pytest.raises(ExceptionGroup) as refused:  # the SDK reports the 401 as a generic MCPError in groups
        asyncio.run(tools(without))
    assert refused.group_contains(mcp.MCPError), refused.value
    # What it got, on the wire: the 401 in the one error shape.
    mcp_headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    raw = request(guarded.url, "POST", "/mcp", json_body=ping, headers={**mcp_headers, **without}, auth=False)
    unauthorized(raw, guarded, "POST")
    raw = request(guarded.url, "POST", "/mcp", json_body=ping, headers={**mcp_headers, **headers}, auth=False)
    assert raw.status == 200, raw.body
