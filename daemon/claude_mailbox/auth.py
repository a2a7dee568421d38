"""The per-user token that keeps other local processes and users out of the mailboxes.

A loopback port has no file permissions, so the daemon writes a random token to `<data dir>/token`
(mode 0600, the data dir 0700) at its first start; every route but `GET /health` requires
`Authorization: Bearer <token>`. Clients (CLI, hook relay, headersHelper, doctor, status) read the
same file. `auth = "none"` in config.toml turns the check off (the seed's open loopback).

Stdlib only and cheap: the hook process reads the token on every prompt.
"""

from __future__ import annotations

import os
import secrets

TOKEN_FILE = "token"
TOKEN_ENV = "CLAUDE_MAILBOX_TOKEN"  # for clients on another machine, or a token kept elsewhere
TOKEN_BYTES = 32


def token_path(data_dir: str) -> str:
    return os.path.join(data_dir, TOKEN_FILE)


def read_token(data_dir: str | None = None) -> str | None:
    """The token a client sends: $CLAUDE_MAILBOX_TOKEN, else the token file (None when neither)."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    if data_dir is None:
        from claude_mailbox.locate import data_dir as located

        data_dir = located()
    try:
        with open(token_path(data_dir), encoding="ascii") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token if token and token.isalnum() else None


def auth_header(data_dir: str | None = None) -> dict[str, str]:
    """{"Authorization": "Bearer ..."} when a token is known, else {} (a daemon with auth = "none")."""
    token = read_token(data_dir)
    return {"Authorization": f"Bearer {token}"} if token else {}


def ensure_token(data_dir: str) -> str:
    """The daemon's token: read it, or create it (0600, in a 0700 data dir) at the first start."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    if os.name == "posix":
        os.chmod(data_dir, 0o700)
    path = token_path(data_dir)
    try:
        with open(path, encoding="ascii") as handle:
            existing = handle.read().strip()
        if existing and existing.isalnum():
            if os.name == "posix":
                os.chmod(path, 0o600)
            return existing
    except (OSError, UnicodeDecodeError):
        pass
    from pathlib import Path

    from claude_mailbox.fsutil import atomic_write

    token = secrets.token_hex(TOKEN_BYTES)
    atomic_write(Path(path), token + "\n", mode=0o600)
    return token
