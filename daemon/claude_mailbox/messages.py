"""Domain values shared by the store, the daemon and the CLI (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Message:
    id: int
    sender: str
    recipient: str
    body: str
    created_at: str
    delivered_at: str | None = None
    attempts: int = 0  # handed out this many times (a lease that expired gave it back); 0: not handed out

    def to_json(self) -> dict[str, Any]:
        """The wire shape (the seed's camelCase); mail handed out before (its lease expired unacknowledged)
        also says so, with its delivery count."""
        data: dict[str, Any] = {"id": self.id, "from": self.sender, "body": self.body, "createdAt": self.created_at}
        if self.attempts > 1:
            data["redelivered"] = True
            data["attempts"] = self.attempts
        return data
