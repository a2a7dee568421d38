"""Mailbox names: validation, and the name a Claude Code session gets from its session id.

Stdlib only and cheap to import: the hook path and the daemon share it.
"""

from __future__ import annotations

import hashlib
import re

from claude_mailbox.errors import InvalidInput

# The mailbox-name rule, once: validate_name, the JSON Schemas (schemas.py) and the OpenAPI
# document (openapi.py) all read it from here.
NAME_MAX = 64
NAME_CHARACTERS = "A-Za-z0-9._-"
NAME_REGEX = f"^[{NAME_CHARACTERS}]{{1,{NAME_MAX}}}$"  # JSON Schema `pattern`
OPTIONAL_NAME_REGEX = f"^([{NAME_CHARACTERS}]{{1,{NAME_MAX}}})?$"  # a name, or empty (the same as absent)
NAME_PATTERN = re.compile(NAME_REGEX)
DEFAULT_PREFIX = "claude"
_PREFIX_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HEX_DIGITS = 8


def validate_name(name: object, field: str = "name") -> str:
    """Return `name` if it is a valid mailbox name, else raise InvalidInput saying what is wrong."""
    if not isinstance(name, str):
        raise InvalidInput(f"{field} must be a string")
    if not name:
        raise InvalidInput(f"{field} must not be empty")
    if not NAME_PATTERN.fullmatch(name):  # fullmatch: "$" alone would let a trailing newline in
        raise InvalidInput(f"{field} must be 1 to {NAME_MAX} characters from A-Z, a-z, 0-9, '.', '_' and '-'")
    return name


def session_suffix(session_id: str) -> str:
    """The 8 hex digits that identify a session: the first 8 of its UUID, lower-cased.

    Ids with fewer than 8 hex digits (not UUIDs) are hashed instead, so the result is still
    deterministic and never empty.
    """
    hex_only = "".join(ch for ch in session_id.lower() if ch in "0123456789abcdef")
    if len(hex_only) >= _HEX_DIGITS:
        return hex_only[:_HEX_DIGITS]
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HEX_DIGITS]


def clean_prefix(prefix: str | None) -> str:
    """A user's base prefix (e.g. "backend", "My App") made safe for names; empty -> "claude"."""
    cleaned = _PREFIX_UNSAFE.sub("-", (prefix or "").strip()).strip("-.")
    return cleaned[: NAME_MAX - _HEX_DIGITS - 1] or DEFAULT_PREFIX


def session_mailbox(session_id: str, prefix: str | None = None) -> str:
    """`claude-1a2b3c4d`, or `backend-1a2b3c4d` with a prefix."""
    return f"{clean_prefix(prefix)}-{session_suffix(session_id)}"
