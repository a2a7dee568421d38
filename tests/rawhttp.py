"""Raw HTTP for contract tests: every header on the wire is the one the test wrote (no Host,
Content-Type, Accept-Encoding or Content-Length is added behind its back unless asked for), except
the daemon's token: a request to a daemon the harness started carries its `Authorization: Bearer`
unless the test names its own Authorization header or passes `auth=False`."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from harness import auth_headers_for

DEFAULT = object()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip()

    def error(self) -> dict[str, str]:
        """The one REST error shape, checked exactly; returns the inner {code, message}."""
        assert self.content_type == "application/json", (self.status, self.headers.items(), self.body)
        data = self.json
        assert set(data) == {"error"}, data
        assert set(data["error"]) == {"code", "message"}, data
        assert isinstance(data["error"]["code"], str) and data["error"]["code"], data
        assert isinstance(data["error"]["message"], str) and data["error"]["message"], data
        return data["error"]


def request(
    url: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    json_body: Any = DEFAULT,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    host: str | object | None = DEFAULT,
    content_length: bool = True,
    timeout: float = 10.0,
    auth: bool = True,
) -> Reply:
    """One request on its own connection.

    `json_body` serialises JSON and sets Content-Type: application/json (unless `headers` names
    one). `host=None` sends no Host header; a string sends that one; by default host:port of `url`.
    `content_length=False` omits Content-Length even when there is a body (never needed by aiohttp,
    but lets a test send a bodiless POST exactly as old clients did).
    """
    parts = urlsplit(url)
    header_list = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {name.lower() for name, _ in header_list}
    if auth and "authorization" not in names:
        header_list.extend(auth_headers_for(parts.port).items())
    if json_body is not DEFAULT:
        body = json.dumps(json_body).encode("utf-8")
        if "content-type" not in names:
            header_list.append(("Content-Type", "application/json"))
    if host is DEFAULT:
        header_list.insert(0, ("Host", parts.netloc))
    elif host is not None:
        header_list.insert(0, ("Host", str(host)))
    if body is not None and content_length and "content-length" not in names:
        header_list.append(("Content-Length", str(len(body))))
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in header_list:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def send(url: str, sender: str, to: str, body: str, **extra: Any) -> Reply:
    return request(url, "POST", "/v1/send", json_body={"to": to, "body": body}, headers={"X-Mailbox": sender}, **extra)


def peek(url: str, name: str) -> dict[str, Any]:
    reply = request(url, "GET", f"/v1/peek?name={name}")
    assert reply.status == 200, reply.body
    return dict(reply.json)


def check(url: str, name: str) -> list[dict[str, Any]]:
    reply = request(url, "POST", f"/v1/check-inbox?name={name}", headers={"X-Mailbox": name})
    assert reply.status == 200, reply.body
    return list(reply.json["messages"])
