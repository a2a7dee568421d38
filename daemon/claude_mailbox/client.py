"""A stdlib-only client for the daemon's REST API, used by the CLI and the hooks' slow paths.

Nothing here imports the daemon's modules (aiohttp, mcp, apsw): the CLI must start fast.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from claude_mailbox import auth
from claude_mailbox.errors import DaemonError, DaemonUnreachable, MailboxError
from claude_mailbox.httpclient import Response, http_request
from claude_mailbox.paths import DEFAULT_URL

# /health's `status`: the daemon runs ("database_unavailable": its database file went away under it).
HEALTH_STATES = ("ok", "database_unavailable")


class MailboxClient:
    """Typed calls over the REST surface; errors arrive as MailboxError subclasses."""

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 2.0, token: str | None = None) -> None:
        """`token`: the daemon's token; by default $CLAUDE_MAILBOX_TOKEN, else the data dir's token file,
        read at the first call that needs it (a daemon with auth = "none" needs none)."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        *,
        payload: dict[str, Any] | None = None,
        mailbox: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        all_headers = {"Accept": "application/json", **self._auth(path), **(headers or {})}
        if mailbox:
            all_headers["X-Mailbox"] = mailbox
        body = None
        if method == "POST":
            all_headers["Content-Type"] = "application/json"
            body = json.dumps(payload or {}).encode("utf-8")
        # /health carries no token, but a client holding one asks the listener to prove it holds it too.
        prove = self._token() if path == "/health" else None
        response = http_request(
            self.url, method, path, body=body, headers=all_headers, timeout=timeout or self.timeout, prove=prove
        )
        try:
            data = json.loads(response.body) if response.body else None
        except ValueError:
            data = None
        if response.status >= 400:
            raise _error_from(response, data)
        return data

    def _auth(self, path: str) -> dict[str, str]:
        if path == "/health":  # open: probes need no token
            return {}
        return self._token_header()

    def _token(self) -> str | None:
        if self.token is None:  # not cached while missing: a daemon starting now writes it
            self.token = auth.read_token()
        return self.token

    def _token_header(self) -> dict[str, str]:
        token = self._token()
        return {"Authorization": f"{auth.SCHEME} {token}"} if token else {}

    def health(self, *, detailed: bool = False) -> dict[str, Any]:
        """Without the token /health says only `status` and `version`; `detailed` sends it (after the
        listener proved it holds it), for the database, port, auth mode and limits (status, the
        doctor, import-sqlite)."""
        data = self.call("GET", "/health", headers=self._token_header() if detailed else None)
        if not isinstance(data, dict) or data.get("status") not in HEALTH_STATES:
            raise DaemonUnreachable(f"{self.url} answered, but not as a claude-mailbox daemon")
        return data

    def send(
        self, sender: str, to: str, body: str, *, idempotency_key: str | None = None, urgent: bool = False
    ) -> dict[str, Any]:
        """Send once: under an Idempotency-Key (generated unless given), so the one retry after a
        connection error cannot store the message twice."""
        headers = {"Idempotency-Key": idempotency_key or os.urandom(16).hex()}
        payload: dict[str, Any] = {"to": to, "body": body}
        if urgent:
            payload["urgent"] = True
        try:
            return self.call("POST", "/v1/send", payload=payload, mailbox=sender, headers=headers)
        except DaemonUnreachable as first:
            try:
                return self.call("POST", "/v1/send", payload=payload, mailbox=sender, headers=headers)
            except DaemonUnreachable:
                raise first from None  # the first failure says whether the message may have been stored

    def peek(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/peek?name={quote(name)}")

    def check(self, name: str, max_chars: int | None = None, *, manual: bool = False) -> dict[str, Any]:
        """One page of mail. `manual`: the answer names its lease (leaseId) and nothing is delivered
        until `ack`; otherwise the daemon acknowledges once it has written the answer."""
        query = f"?name={quote(name)}" + (f"&maxChars={max_chars}" if max_chars else "") + _ack_query(manual)
        return self.call("POST", f"/v1/check-inbox{query}", mailbox=name)

    def ack(self, name: str, lease_id: str) -> int:
        """Acknowledge a lease from a manual check or watch: its mail is delivered."""
        answer = self.call("POST", f"/v1/ack?name={quote(name)}", payload={"leaseId": lease_id}, mailbox=name)
        return int(answer["acked"])

    def list(self, caller: str | None = None) -> dict[str, Any]:
        return self.call("GET", "/v1/list", mailbox=caller)

    def watch(self, name: str, wait: float, *, manual: bool = False) -> dict[str, Any]:
        """Long-poll: returns when mail arrives, the mailbox is renamed, or `wait` runs out."""
        query = f"?name={quote(name)}&timeout={wait:g}"
        return self.call("POST", f"/v1/watch{query}{_ack_query(manual)}", mailbox=name, timeout=wait + 5.0)

    def whoami(self, session_id: str) -> str:
        return str(self.call("GET", f"/v1/whoami?session={quote(session_id)}")["name"])

    def prune(self, older_than_days: float, *, dry_run: bool = False) -> int:
        """Delete (or with `dry_run` count) delivered mail older than this; pending mail stays."""
        payload = {"olderThanDays": older_than_days, "dryRun": dry_run}
        return int(self.call("POST", "/v1/prune", payload=payload)["deleted"])

    def forget(self, name: str) -> bool:
        """Remove a mailbox that only ever wrote to itself (False: the daemon kept it)."""
        return bool(self.call("POST", "/v1/forget", payload={"name": name}, mailbox=name)["forgotten"])


def probe_health(url: str, timeout: float = 0.5, *, detailed: bool = False) -> dict[str, Any] | None:
    """The one health probe: the daemon's /health answer, or None when no claude-mailbox daemon
    answers at `url` (down, another program, a malformed URL). `detailed`: see MailboxClient.health."""
    try:
        return MailboxClient(url, timeout=timeout).health(detailed=detailed)
    except MailboxError:
        return None


def _ack_query(manual: bool) -> str:
    return "&ack=manual" if manual else ""


def _error_from(response: Response, data: Any) -> MailboxError:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code, message = str(error.get("code", "error")), str(error.get("message", ""))
    else:
        code, message = "http_error", f"the daemon answered HTTP {response.status}"
    retry_after = response.headers.get("retry-after")
    return DaemonError(
        message,
        code=code,
        http_status=response.status,
        retry_after=float(retry_after) if retry_after else None,
    )
