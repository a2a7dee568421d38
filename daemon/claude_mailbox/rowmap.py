"""Rows to domain values, written once for both stores (store.py on SQLite, pgstore.py on
PostgreSQL): each SELECT names these columns in this order. An APSW row is a tuple, an asyncpg row a
Record; both unpack by position. Standard library only, like model.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from claude_mailbox.model import Mailbox, Message, Session

MESSAGE_COLUMNS = "id, sender, recipient, body, created_at, delivered_at, urgent"
SESSION_COLUMNS = (
    "session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source, started_at, ended_at, collaborate"
)


def message(row: Sequence[Any]) -> Message:
    """A row of MESSAGE_COLUMNS."""
    message_id, sender, recipient, body, created_at, delivered_at, urgent = row
    return Message(int(message_id), sender, recipient, body, created_at, delivered_at, urgent=bool(urgent))


def leased(row: Sequence[Any], mailbox: str) -> Message:
    """A message just leased to `mailbox`: a row of (id, sender, body, created_at, attempts, urgent)."""
    message_id, sender, body, created_at, attempts, urgent = row
    return Message(int(message_id), sender, mailbox, body, created_at, None, int(attempts), bool(urgent))


def session(row: Sequence[Any]) -> Session:
    """A row of SESSION_COLUMNS."""
    session_id, mailbox, claude_pid, pid_started, cwd, project_dir, source, started_at, ended_at, collaborate = row
    return Session(
        session_id,
        mailbox,
        claude_pid,
        pid_started,
        cwd,
        project_dir,
        source,
        started_at=started_at,
        ended_at=ended_at,
        collaborate=bool(collaborate),
    )


def mailbox(row: Sequence[Any]) -> Mailbox:
    """A row of (name, created_at, last_seen, alias_of, pending, then the newest session's session_id,
    claude_pid, pid_started, project_dir, ended_at, collaborate), and on PostgreSQL its host and that
    host's last heartbeat."""
    name, created_at, last_seen, alias_of, pending, session_id, claude_pid, pid_started, project_dir = row[:9]
    ended_at, collaborate, *where = row[9:]
    host, host_seen = where if where else (None, None)
    return Mailbox(
        name=name,
        created_at=created_at,
        last_seen=last_seen,
        pending=int(pending),
        alias_of=alias_of,
        session_id=session_id,
        claude_pid=claude_pid,
        pid_started=pid_started,
        project_dir=project_dir,
        ended_at=ended_at,
        collaborate=bool(collaborate),
        host=host,
        host_seen=host_seen,
    )
