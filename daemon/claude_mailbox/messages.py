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

    def to_json(self) -> dict[str, Any]:
        """The wire shape (the seed's camelCase)."""
        return {"id": self.id, "from": self.sender, "body": self.body, "createdAt": self.created_at}

    @classmethod
    def from_json(cls, data: dict[str, Any], recipient: str) -> Message:
        return cls(int(data["id"]), str(data["from"]), recipient, str(data["body"]), str(data["createdAt"]))
