"""One error vocabulary, translated at three edges: CLI exit code + message, REST JSON body + status,
MCP tool error. Each error carries a stable machine `code` and a message meant for people.

Stdlib only: the CLI and hooks import it.
"""

from __future__ import annotations


class MailboxError(Exception):
    """An error meant for a person: printed without a traceback."""

    code = "error"
    http_status = 400
    exit_code = 1

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidInput(MailboxError):
    code = "invalid_input"


class UnsupportedMediaType(MailboxError):
    code = "unsupported_media_type"
    http_status = 415


class Unauthorized(MailboxError):
    """No token, or the wrong one, on a daemon with `auth = "token"` (the default)."""

    code = "unauthorized"
    http_status = 401


class Forbidden(MailboxError):
    code = "forbidden"
    http_status = 403


class MisdirectedHost(MailboxError):
    code = "bad_host"
    http_status = 421


class NotFound(MailboxError):
    code = "not_found"
    http_status = 404


class MethodNotAllowed(MailboxError):
    code = "method_not_allowed"
    http_status = 405

    def __init__(self, message: str, *, allow: str | None = None) -> None:
        super().__init__(message)
        self.allow = allow  # the methods the route answers: the Allow header (RFC 9110)


class PayloadTooLarge(MailboxError):
    code = "payload_too_large"
    http_status = 413


class RequestTimeout(MailboxError):
    """The client did not send its whole request in time (a stalled or deliberately slow client)."""

    code = "request_timeout"
    http_status = 408


class InternalError(MailboxError):
    """A bug: answered in the one error shape (the traceback goes to the daemon's log)."""

    code = "internal_error"
    http_status = 500


class IdentityRequired(MailboxError):
    code = "identity_required"


class IdentityMismatch(MailboxError):
    code = "identity_mismatch"
    http_status = 403


class RateLimited(MailboxError):
    code = "rate_limited"
    http_status = 429


class MailboxFull(MailboxError):
    code = "mailbox_full"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float | None = 30.0) -> None:
        # The inbox drains when its owner reads: no time is known, so a modest pause (issue 12.6).
        super().__init__(message, retry_after=retry_after)


class LeaseNotFound(MailboxError):
    """An acknowledgement for a lease that is unknown, already acknowledged, expired or another's."""

    code = "lease_not_found"
    http_status = 409


class Overloaded(MailboxError):
    """Over the cap of open connections or waiting long-polls: answered at once, never queued."""

    code = "overloaded"
    http_status = 503


class StoreBusy(MailboxError):
    code = "database_busy"
    http_status = 503


class StoreUnavailable(MailboxError):
    code = "database_unavailable"
    http_status = 503


class StorageFull(MailboxError):
    code = "storage_full"
    http_status = 507


class ConfigError(MailboxError):
    code = "config_error"


class ShuttingDown(MailboxError):
    """The daemon is stopping: a waiting Stop hook reconnects to the next daemon."""

    code = "shutting_down"
    http_status = 503
    exit_code = 2


class DaemonUnreachable(MailboxError):
    """The daemon did not answer: exit code 2 everywhere (the seed's contract)."""

    code = "daemon_unreachable"
    http_status = 503
    exit_code = 2


class DaemonError(MailboxError):
    """The daemon answered with an error; `code` and `http_status` are the daemon's."""

    def __init__(self, message: str, *, code: str, http_status: int, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.code = code
        self.http_status = http_status


def error_body(error: MailboxError) -> dict[str, dict[str, str]]:
    """The one error shape of every edge: REST bodies, the raw answers aiohttp's protocol layer and
    the connection cap write, and MCP tool errors' structured content."""
    return {"error": {"code": error.code, "message": error.message}}


def error_bytes(error: MailboxError) -> bytes:
    import json  # here, not at the top: the hook fast path imports this module, and json costs it re and enum

    return json.dumps(error_body(error)).encode()
