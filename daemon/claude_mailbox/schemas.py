"""The JSON shapes of requests and answers, shared by REST, MCP and the OpenAPI document."""

from __future__ import annotations

from typing import Any


def mailbox_json(view: Any) -> dict[str, Any]:
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
    }
