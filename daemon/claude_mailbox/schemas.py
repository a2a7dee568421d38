"""The JSON shapes of requests and answers, written once (issue 9.3). Each shape is a TypedDict;
from it come the MCP tools' `inputSchema` (tools.py), the OpenAPI document (openapi.py) and the
handlers' field checks (rest.py, mcp_http.py): unknown fields, required fields, query parameters.

Importing this module stays cheap (no pydantic): the daemon imports it before it listens, and the
field checks run on every send. pydantic turns a shape into JSON Schema only when a document is
built (`json_schema`), once per shape.

No `from __future__ import annotations` here: TypedDict reads NotRequired from real annotations.
"""

import functools
from typing import Annotated, Any, Literal, NotRequired

from typing_extensions import TypedDict

from claude_mailbox import identity
from claude_mailbox.errors import InvalidInput

NAME_RE = identity.NAME_REGEX
# The daemon refuses a body that is only whitespace (Python's str.isspace): at least one other character.
_SPACES = "".join(f"\\u{code:04x}" for code in range(0x3001) if chr(code).isspace())


class Json:
    """JSON Schema keywords for one field (`Annotated[str, Json(pattern=...)]`). pydantic merges
    them into the generated schema; nothing else reads them."""

    def __init__(self, description: str = "", **keywords: Any) -> None:
        self.keywords = {**keywords, **({"description": description} if description else {})}

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        schema.update(self.keywords)
        return schema


NAME_KEYWORDS: dict[str, Any] = {"pattern": NAME_RE, "maxLength": identity.NAME_MAX}
Name = Annotated[str, Json(**NAME_KEYWORDS)]
Body = Annotated[
    str,
    Json("The message text: at most max_body_bytes (default 64 KiB) of UTF-8.", minLength=1, pattern=f"[^{_SPACES}]"),
]
Time = Annotated[str, Json("UTC, ISO 8601 with milliseconds, e.g. 2026-01-31T12:00:00.000Z")]

# --- shared answers --------------------------------------------------------------------------------


class ErrorDetail(TypedDict):
    code: str
    message: str


class ErrorBody(TypedDict):
    """Every 4xx/5xx answer of the REST surface."""

    error: ErrorDetail


Message = TypedDict(
    "Message",
    {
        "id": int,
        "from": Name,
        "body": str,
        "createdAt": Time,
        "redelivered": NotRequired[Annotated[bool, Json("Handed out before; its lease expired unacknowledged.")]],
        "attempts": NotRequired[int],
        "urgent": NotRequired[bool],
    },
)


class Mailbox(TypedDict):
    name: Name
    lastSeen: Time
    pending: int
    state: Literal["alive", "ended", "alias", "client", "unknown"]
    alive: bool
    projectDir: NotRequired[str | None]
    aliasOf: NotRequired[str | None]
    collaborating: NotRequired[bool]
    host: NotRequired[Annotated[str | None, Json("The session's machine (PostgreSQL, several machines).")]]


def mailbox_json(view: Any) -> Mailbox:
    """One row of a mailbox listing (REST /v1/list and MCP list_mailboxes)."""
    box = view.mailbox
    return {
        "name": box.name,
        "lastSeen": box.last_seen,
        "pending": box.pending,
        "state": view.state,
        "alive": view.alive,
        "projectDir": box.project_dir,
        "aliasOf": box.alias_of,
        "collaborating": box.collaborate and view.alive,
        "host": box.host,  # the machine of the session (PostgreSQL, several machines); null on SQLite
    }


# --- requests (JSON bodies) ----------------------------------------------------------------------

SendRequest = TypedDict(
    "SendRequest",
    {
        "to": Annotated[str, Json("The recipient's mailbox name.", **NAME_KEYWORDS)],
        "body": Body,
        "from": NotRequired[
            Annotated[
                str | None,
                Json("The sender; default (also null or empty): X-Mailbox.", pattern=identity.OPTIONAL_NAME_REGEX),
            ]
        ],
        "urgent": NotRequired[Annotated[bool, Json("Deliver at once: between tool calls, or wake an idle session.")]],
    },
)


class AckRequest(TypedDict):
    leaseId: Annotated[str, Json("From check-inbox?ack=manual.", minLength=1)]


class CollaborateRequest(TypedDict):
    name: Name
    on: bool


class ForgetRequest(TypedDict):
    name: Annotated[str, Json("The mailbox to remove; X-Mailbox must name it.", **NAME_KEYWORDS)]


class PruneRequest(TypedDict):
    olderThanDays: Annotated[float, Json("Delete mail delivered longer ago than this.", minimum=0, maximum=36500)]
    dryRun: NotRequired[Annotated[bool, Json("Count only.")]]


class NoBody(TypedDict):  # issue 20.6: `{"zzz": 1}` consumed mail before
    """No body, or an empty object: any field is refused before mail is taken."""


class HookInput(TypedDict):
    session_id: Annotated[str, Json(minLength=1, maxLength=200, pattern=r"\S")]
    hook_event_name: NotRequired[str]
    cwd: NotRequired[str]
    source: NotRequired[str]
    reason: NotRequired[str]
    project_dir: NotRequired[str]


OPEN_SHAPES: frozenset[str] = frozenset({"HookInput"})  # Claude Code sends more fields than these; all kept

# --- requests (query strings) --------------------------------------------------------------------


class NameQuery(TypedDict):
    name: Name


AckMode = Annotated[
    Literal["auto", "manual"], Json("auto: delivered once answered; manual: answer names a lease, POST /v1/ack")
]


class CheckInboxQuery(TypedDict):
    name: Name
    maxChars: NotRequired[Annotated[int, Json("At most this many characters of mail.", minimum=1, maximum=10_000_000)]]
    ack: NotRequired[AckMode]


class WatchQuery(TypedDict):
    name: Name
    timeout: NotRequired[Annotated[float, Json("Seconds to wait (default 25).", minimum=0, maximum=3600)]]
    ack: NotRequired[AckMode]


class WhoamiQuery(TypedDict):
    session: Annotated[str, Json("A Claude Code session id.", minLength=1)]


class FeedQuery(TypedDict):
    after: NotRequired[Annotated[int, Json("Only messages with a larger id.", minimum=0, maximum=2**62)]]
    limit: NotRequired[Annotated[int, Json("At most this many (default 100).", minimum=0, maximum=500)]]
    name: NotRequired[Annotated[str, Json("Only mail from or to this mailbox.")]]
    peer: NotRequired[Annotated[str, Json("With name: only mail between the two.")]]
    since: NotRequired[Time]
    wait: NotRequired[Annotated[int, Json("Seconds to hold when nothing is new.", minimum=0, maximum=60)]]


class NoQuery(TypedDict):
    pass


# --- answers -------------------------------------------------------------------------------------

SendResponse = TypedDict("SendResponse", {"id": int, "from": Name, "to": Name, "createdAt": Time})


class PeekResponse(TypedDict):
    pending: int
    oldestAt: Time | None


class Leased(TypedDict):
    """With ack=manual: the lease to acknowledge with POST /v1/ack."""

    leaseId: NotRequired[Annotated[str | None, Json("With ack=manual: acknowledge it with POST /v1/ack.")]]
    leaseExpiresAt: NotRequired[Time | None]  # both null when the answer carries no mail


class CheckInboxResponse(Leased):
    messages: list[Message]
    remaining: int


class AckResponse(TypedDict):
    acked: Annotated[int, Json("Messages now delivered.")]


class ListResponse(TypedDict):
    mailboxes: list[Mailbox]
    pendingForYou: int


class WatchResponse(Leased):
    event: Literal["mail", "renamed", "timeout", "replaced", "stopped", "shutdown"]
    messages: list[Message]
    newName: str | None


class CollaborateResponse(TypedDict):
    name: Name
    collaborating: bool
    stopWaiter: bool


class WhoamiResponse(TypedDict):
    session: str
    name: Name


class ForgetResponse(TypedDict):
    name: Name
    forgotten: Annotated[bool, Json("False: a session owns it, or it holds or exchanged mail.")]


class PruneResponse(TypedDict):
    deleted: int
    dryRun: bool


FeedMessage = TypedDict(
    "FeedMessage",
    {
        "id": int,
        "from": str,
        "to": str,
        "body": str,
        "createdAt": Time,
        "deliveredAt": Time | None,
        "read": bool,
        "urgent": NotRequired[bool],
    },
)


class FeedResponse(TypedDict):
    messages: list[FeedMessage]
    last: int | None


def feed_json(message: Any) -> FeedMessage:
    """A message as people see it (GET /v1/feed): both ends, and whether its recipient has read it."""
    shown: FeedMessage = {
        "id": message.id,
        "from": message.sender,
        "to": message.recipient,
        "body": message.body,
        "createdAt": message.created_at,
        "deliveredAt": message.delivered_at,
        "read": message.delivered_at is not None,
    }
    if message.urgent:
        shown["urgent"] = True
    return shown


class Health(TypedDict):
    """Without the token only `status` and `version`; the rest needs it."""

    status: Annotated[
        Literal["ok", "database_unavailable"],
        Json("database_unavailable: the database file was deleted or replaced; restart the daemon."),
    ]
    version: str
    problem: NotRequired[Annotated[str, Json("Why the database is unavailable (with the token).")]]
    database: NotRequired[
        Annotated[str, Json("Where the mail is: the SQLite file, or the PostgreSQL URL without password.")]
    ]
    dbPath: NotRequired[Annotated[str, Json("The SQLite file (absent when the mail is in PostgreSQL).")]]
    port: NotRequired[int]
    waiters: NotRequired[Annotated[int, Json("Open long-polls.")]]
    auth: NotRequired[Annotated[Literal["token", "none"], Json("token: every other route needs Authorization: Bearer")]]
    schema: NotRequired[Annotated[int, Json("The database schema version (one numbering on SQLite and PostgreSQL).")]]


# --- MCP tool arguments --------------------------------------------------------------------------

SendArguments = TypedDict(
    "SendArguments",
    {
        "to": Annotated[str, Json("The recipient's mailbox name, e.g. claude-1a2b3c4d.", **NAME_KEYWORDS)],
        "body": Annotated[str, Json("The message text.", minLength=1)],
        "from": NotRequired[Annotated[str, Json("Your mailbox name; omit to use this session's.", **NAME_KEYWORDS)]],
        "idempotencyKey": NotRequired[
            Annotated[
                str,
                Json(
                    "Optional: a retry with the same key within 24 h returns the first message instead of "
                    "sending it twice.",
                    minLength=1,
                    maxLength=200,
                ),
            ]
        ],
        "urgent": NotRequired[Annotated[bool, Json("Only for what cannot wait: wakes an idle recipient.")]],
    },
)


class CheckInboxArguments(TypedDict):
    name: NotRequired[Annotated[str, Json("Mailbox to read; omit for this session's.", **NAME_KEYWORDS)]]


class PeekArguments(TypedDict):
    name: NotRequired[Annotated[str, Json("Mailbox to count; omit for this session's.", **NAME_KEYWORDS)]]


class ListArguments(TypedDict):
    name: NotRequired[Annotated[str, Json("Your mailbox name; omit for this session's.", **NAME_KEYWORDS)]]


# --- checks (no pydantic: these run on every request) --------------------------------------------


@functools.cache
def fields(shape: Any) -> frozenset[str]:
    return frozenset(shape.__annotations__)


@functools.cache
def required(shape: Any) -> tuple[str, ...]:
    return tuple(key for key in shape.__annotations__ if key in shape.__required_keys__)


def refuse_unknown(shape: Any, data: Any, what: str = "field(s)") -> None:
    """`additionalProperties: false`, in the words REST and MCP have always used."""
    unknown = set(data) - fields(shape)
    if unknown:
        raise InvalidInput(f"unknown {what}: {', '.join(sorted(unknown))}")


def require_fields(shape: Any, data: Any) -> None:
    missing = [key for key in required(shape) if key not in data]
    if missing:
        keys = " and ".join(repr(key) for key in required(shape))
        raise InvalidInput(f"fields {keys} are required" if len(required(shape)) > 1 else f"field {keys} is required")


@functools.cache
def bounds(shape: Any, key: str) -> tuple[float, float]:
    """A numeric field's (minimum, maximum), for the handler that parses it from a query string."""
    hint = shape.__annotations__[key]
    while not hasattr(hint, "__metadata__") and getattr(hint, "__args__", None):
        hint = hint.__args__[0]  # NotRequired[Annotated[...]]
    keywords = next(m.keywords for m in hint.__metadata__ if isinstance(m, Json))
    return keywords["minimum"], keywords["maximum"]


def query(shape: Any, query: Any) -> dict[str, str]:
    """A query string checked against its shape: no unknown or repeated parameters, required ones there."""
    refuse_unknown(shape, query, "query parameter(s)")
    for key in query:
        if len(query.getall(key)) > 1:
            raise InvalidInput(f"query parameter {key!r} given more than once")
    for key in required(shape):
        if key not in query:
            raise InvalidInput(f"query parameter {key!r} is required")
    return dict(query)


# --- JSON Schema (pydantic, on demand) -----------------------------------------------------------

REF = "#/components/schemas/{model}"


@functools.cache
def json_schema(shape: Any, ref_template: str | None = None) -> dict[str, Any]:
    """The JSON Schema of a shape; nested shapes go to `$defs` (referenced by `ref_template`)."""
    from pydantic import TypeAdapter
    from pydantic.json_schema import DEFAULT_REF_TEMPLATE

    schema: dict[str, Any] = _tidy(TypeAdapter(shape).json_schema(ref_template=ref_template or DEFAULT_REF_TEMPLATE))
    return schema


def closed(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return schema if name in OPEN_SHAPES else {**schema, "additionalProperties": False}


def input_schema(shape: Any) -> dict[str, Any]:
    """An MCP tool's inputSchema: closed, self-contained."""
    return closed(json_schema(shape), shape.__name__)


def _tidy(value: Any) -> Any:
    """Drop pydantic's generated titles (noise in a tool list the model reads)."""
    if isinstance(value, dict):
        return {
            key: (_tidy_properties(item) if key in ("properties", "$defs") else _tidy(item))
            for key, item in value.items()
            if key != "title"
        }
    if isinstance(value, list):
        return [_tidy(item) for item in value]
    return value


def _tidy_properties(properties: dict[str, Any]) -> dict[str, Any]:
    return {key: _tidy(item) for key, item in properties.items()}
