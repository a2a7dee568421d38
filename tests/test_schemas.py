"""Schemas from one source (issue 9.3) and the client-side verbs that ask the daemon (issue 9.2):
/openapi.json covers every route the app registers, the MCP tools' inputSchema comes from the same
shapes as REST's checks, and `prune` and the doctor's forget go through POST /v1/prune and
POST /v1/forget. In-process app (no daemon process) except where the CLI runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from claude_mailbox import hookapi, routes, schemas, server, tools
from claude_mailbox.config import Config
from claude_mailbox.setup import doctor
from harness import InProcessDaemon, base_env, free_port, run_cli, sqlite_rows
from rawhttp import request


@pytest.fixture
def app(app_server: InProcessDaemon) -> InProcessDaemon:
    return app_server


def registered_routes(home: Path) -> set[tuple[str, str]]:
    app = server.make_app(Config(db_path=home / "routes.db", auth="none"))
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD":
            routes.add((str(path), route.method.lower()))
    return routes


def test_every_registered_route_is_in_the_openapi_document(app: InProcessDaemon) -> None:
    reply = request(app.url, "GET", "/openapi.json")
    assert reply.status == 200, reply.body
    documented = {(path, method) for path, operations in reply.json["paths"].items() for method in operations}
    registered = registered_routes(app.home)
    assert registered - documented == set()
    assert documented - registered == set()
    assert {
        ("/v1/prune", "post"),
        ("/v1/forget", "post"),
        ("/mcp", "post"),
        ("/v1/hooks/{event}", "post"),
    } <= registered


def test_the_document_references_only_components_it_has(app: InProcessDaemon) -> None:
    document = request(app.url, "GET", "/openapi.json").json
    text = json.dumps(document)
    names = set(document["components"]["schemas"])
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs, "the document references no component"
    for ref in refs:
        assert ref in names, ref
    hook = document["paths"]["/v1/hooks/{event}"]["post"]
    assert hook["parameters"][-1]["schema"]["enum"] == list(hookapi.EVENTS)
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "401" in document["paths"]["/v1/send"]["post"]["responses"]


def test_request_bodies_are_closed_and_agree_with_the_handlers_checks(app: InProcessDaemon) -> None:
    document = request(app.url, "GET", "/openapi.json").json
    send_body = document["components"]["schemas"]["SendRequest"]
    assert send_body["additionalProperties"] is False
    assert set(send_body["properties"]) == schemas.fields(schemas.SendRequest) == {"to", "body", "from", "urgent"}
    assert send_body["properties"]["urgent"]["type"] == "boolean"
    reply = request(
        app.url, "POST", "/v1/send", json_body={"to": "b", "body": "x", "cc": "c"}, headers={"X-Mailbox": "a"}
    )
    assert reply.status == 400 and reply.json["error"]["message"] == "unknown field(s): cc"
    reply = request(app.url, "POST", "/v1/send", json_body={"to": "b"}, headers={"X-Mailbox": "a"})
    assert reply.json["error"]["message"] == "fields 'to' and 'body' are required"
    reply = request(
        app.url, "POST", "/v1/send", json_body={"to": "b", "body": "x", "urgent": "yes"}, headers={"X-Mailbox": "a"}
    )
    assert reply.status == 400 and reply.json["error"]["message"] == "urgent must be true or false"
    reply = request(  # null is not a boolean either (schemathesis found it accepted)
        app.url, "POST", "/v1/send", json_body={"to": "b", "body": "x", "urgent": None}, headers={"X-Mailbox": "a"}
    )
    assert reply.status == 400 and reply.json["error"]["message"] == "urgent must be true or false"
    reply = request(app.url, "GET", "/v1/peek?name=a&colour=red")
    assert reply.status == 400 and reply.json["error"]["message"] == "unknown query parameter(s): colour"
    reply = request(app.url, "POST", "/v1/check-inbox?name=a&maxChars=0", headers={"X-Mailbox": "a"})
    low, high = schemas.bounds(schemas.CheckInboxQuery, "maxChars")
    assert reply.json["error"]["message"] == f"maxChars must be between {low:g} and {high:g}"


@pytest.mark.parametrize("route", ["check-inbox", "watch"])
def test_routes_that_read_no_body_refuse_one_and_consume_nothing(app: InProcessDaemon, route: str) -> None:
    """check-inbox and watch read no body: a field, or anything but an empty object, is refused in the
    one error shape before mail is taken (issue 20.6), as the document says."""
    owner = {"X-Mailbox": "nb-bob"}
    path = f"/v1/{route}?name=nb-bob" + ("&timeout=0" if route == "watch" else "")
    send(app.url, "nb-alice", "nb-bob", "kept")
    for body, words in [
        (b'{"zzz": 1}', "unknown field(s): zzz"),
        (b'{"name": "nb-bob"}', "unknown field(s): name"),
        (b"[]", "request body must be a JSON object"),
        (b'"x"', "request body must be a JSON object"),
        (b"{", "request body is not valid JSON"),
    ]:
        reply = request(app.url, "POST", path, body=body, headers={**owner, "Content-Type": "application/json"})
        assert reply.status == 400 and reply.error() == {"code": "invalid_input", "message": words}, (body, reply.body)
    assert request(app.url, "GET", "/v1/peek?name=nb-bob").json["pending"] == 1
    for empty in (None, b"{}"):  # no body, or an empty object: read as before
        headers = owner if empty is None else {**owner, "Content-Type": "application/json"}
        reply = request(app.url, "POST", path, body=empty, headers=headers)
        assert reply.status == 200, reply.body
    document = request(app.url, "GET", "/openapi.json").json
    body_doc = document["paths"][f"/v1/{route}"]["post"]["requestBody"]
    assert body_doc["required"] is False
    assert document["components"]["schemas"]["NoBody"]["additionalProperties"] is False


def test_a_malformed_x_mailbox_is_refused_even_with_from(app: InProcessDaemon) -> None:
    reply = request(
        app.url, "POST", "/v1/send", json_body={"from": "a", "to": "b", "body": "x"}, headers={"X-Mailbox": ""}
    )
    assert reply.status == 400 and "X-Mailbox header" in reply.json["error"]["message"]


def test_mcp_input_schemas_come_from_the_shapes() -> None:
    for tool in tools.TOOLS:
        schema = tool.input_schema
        assert schema["additionalProperties"] is False and schema["type"] == "object"
        assert set(schema["properties"]) == schemas.fields(tool.arguments)
        assert "title" not in json.dumps(schema)  # pydantic's generated titles are dropped
    send = tools.TOOLS_BY_NAME["send"]
    assert send.input_schema["required"] == ["to", "body"]
    assert send.input_schema["properties"]["to"]["pattern"] == schemas.NAME_RE
    with pytest.raises(Exception, match=r"^unknown field\(s\): bcc, cc$"):
        tools.check_arguments(send, {"to": "b", "body": "x", "cc": 1, "bcc": 2})


def test_the_document_is_built_on_demand_not_when_the_module_is_imported() -> None:
    import subprocess
    import sys

    code = "import sys, claude_mailbox.routes, claude_mailbox.schemas; print('pydantic' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr  # the daemon listens before pydantic loads
    assert routes.document("x") is routes.document("x")  # built once


# --- POST /v1/prune and POST /v1/forget --------------------------------------------------------------


def send(url: str, sender: str, to: str, body: str) -> None:
    reply = request(url, "POST", "/v1/send", json_body={"to": to, "body": body}, headers={"X-Mailbox": sender})
    assert reply.status == 201, reply.body


def read_all(url: str, name: str) -> None:
    """Read and acknowledge before going on (ack=auto settles just after the answer is written)."""
    owner = {"X-Mailbox": name}
    lease = request(url, "POST", f"/v1/check-inbox?name={name}&ack=manual", headers=owner).json["leaseId"]
    assert request(url, "POST", f"/v1/ack?name={name}", json_body={"leaseId": lease}, headers=owner).json["acked"]


def test_prune_over_rest_deletes_only_delivered_mail(app: InProcessDaemon) -> None:
    send(app.url, "p-alice", "p-bob", "read")
    read_all(app.url, "p-bob")
    send(app.url, "p-alice", "p-bob", "unread")
    time.sleep(0.01)
    dry = request(app.url, "POST", "/v1/prune", json_body={"olderThanDays": 0, "dryRun": True})
    assert (dry.status, dry.json) == (200, {"deleted": 1, "dryRun": True})
    real = request(app.url, "POST", "/v1/prune", json_body={"olderThanDays": 0})
    assert real.json == {"deleted": 1, "dryRun": False}
    assert request(app.url, "GET", "/v1/peek?name=p-bob").json["pending"] == 1
    for bad, words in [
        ({}, "field 'olderThanDays' is required"),
        ({"olderThanDays": -1}, "olderThanDays must be a number of days from 0 to 36500"),
        ({"olderThanDays": True}, "olderThanDays must be a number"),
        ({"olderThanDays": 1, "dryRun": "yes"}, "'dryRun' must be true or false"),
        ({"olderThanDays": 1, "all": True}, "unknown field(s): all"),
    ]:
        reply = request(app.url, "POST", "/v1/prune", json_body=bad)
        assert reply.status == 400 and words in reply.json["error"]["message"], (bad, reply.json)


def test_forget_needs_the_owner_and_keeps_mailboxes_with_history(app: InProcessDaemon) -> None:
    send(app.url, "f-self", "f-self", "smoke")
    read_all(app.url, "f-self")
    anonymous = request(app.url, "POST", "/v1/forget", json_body={"name": "f-self"})
    assert anonymous.status == 400 and anonymous.json["error"]["code"] == "identity_required"
    stranger = request(app.url, "POST", "/v1/forget", json_body={"name": "f-self"}, headers={"X-Mailbox": "f-other"})
    assert stranger.status == 403
    owner = request(app.url, "POST", "/v1/forget", json_body={"name": "f-self"}, headers={"X-Mailbox": "f-self"})
    assert owner.json == {"name": "f-self", "forgotten": True}
    names = [m["name"] for m in request(app.url, "GET", "/v1/list").json["mailboxes"]]
    assert "f-self" not in names
    send(app.url, "f-a", "f-b", "real mail")  # exchanged mail with someone: kept
    kept = request(app.url, "POST", "/v1/forget", json_body={"name": "f-a"}, headers={"X-Mailbox": "f-a"})
    assert kept.json == {"name": "f-a", "forgotten": False}


def test_doctor_forget_asks_the_daemon(app: InProcessDaemon) -> None:
    client = app.client()
    client.send("d-smoke", "d-smoke", "hi")
    client.ack("d-smoke", client.check("d-smoke", manual=True)["leaseId"])
    assert doctor._forget_mailbox(client, "d-smoke") is True
    assert doctor._forget_mailbox(client, "d-smoke") is False  # gone already
    down = type(client)(f"http://127.0.0.1:{free_port()}", timeout=1.0, token="")
    assert doctor._forget_mailbox(down, "d-smoke") is False  # best effort: never raises


def test_cli_prune_goes_through_the_daemon(app: InProcessDaemon) -> None:
    send(app.url, "c-alice", "c-bob", "read")
    read_all(app.url, "c-bob")
    time.sleep(0.01)
    result = run_cli("prune", "--delivered-older-than", "0d", "--json", env=app.env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"deleted": 1, "dryRun": False}
    assert sqlite_rows(app.db_path, "SELECT count(*) FROM messages") == [(0,)]


def test_cli_prune_with_the_daemon_down_says_so_and_exits_2(mailbox_home: Path) -> None:
    env = base_env(mailbox_home, CLAUDE_MAILBOX_URL=f"http://127.0.0.1:{free_port()}")
    result = run_cli("prune", "--delivered-older-than", "30d", env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("claude-mailbox: "), result.stderr
    assert not (mailbox_home / "mailbox.db").exists()  # the CLI never opened a database
