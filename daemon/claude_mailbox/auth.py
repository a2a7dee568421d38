"""The per-user token that keeps other local processes and users out of the mailboxes.

A loopback port has no file permissions, so the daemon writes a random token to `<data dir>/token`
(mode 0600, the data dir 0700) at its first start; every route but `GET /health` and the web page's
static shell requires `Authorization: Bearer <token>`. Clients (CLI, hook relay, headersHelper,
doctor, status) read the same file. `auth = "none"` in config.toml turns the check off (the seed's
open loopback).

Stdlib only and cheap: the hook process reads the token on every prompt (one small file read; the
`secrets` and `hmac` imports are paid only by the daemon).
"""

from __future__ import annotations

import os

TOKEN_FILE = "token"
TOKEN_ENV = "CLAUDE_MAILBOX_TOKEN"  # for clients on another machine, or a token kept elsewhere
TOKEN_BYTES = 32
MODES = ("token", "none")  # config.toml `auth`: "token" (the default) or "none" (open loopback)
SCHEME = "Bearer"
# Before a client sends the token it asks the listener to prove it holds it (issue 20.1): another
# user can bind the port while this user's daemon is stopped. The client sends a random nonce, the
# daemon answers HMAC-SHA256(token, nonce); only the token's holder can, and the nonce is fresh.
CHALLENGE_HEADER = "X-Mailbox-Challenge"
PROOF_HEADER = "X-Mailbox-Proof"


def token_path(data_dir: str) -> str:
    return os.path.join(data_dir, TOKEN_FILE)


def read_token(data_dir: str | None = None) -> str | None:
    """The token a client sends: $CLAUDE_MAILBOX_TOKEN, else the token file (None when neither)."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env if _well_formed(env) else None
    if data_dir is None:
        from claude_mailbox.locate import data_dir as located

        data_dir = located()
    return read_token_file(token_path(data_dir))


def auth_header(data_dir: str | None = None) -> dict[str, str]:
    """{"Authorization": "Bearer ..."} when a token is known, else {} (a daemon with auth = "none")."""
    token = read_token(data_dir)
    return {"Authorization": f"{SCHEME} {token}"} if token else {}


def new_nonce() -> str:
    return os.urandom(16).hex()


def well_formed_nonce(nonce: str) -> bool:
    """16 to 64 bytes in hex: what the daemon agrees to sign (it signs nothing a client chose freely)."""
    return 32 <= len(nonce) <= 128 and nonce.isascii() and all(ch in "0123456789abcdef" for ch in nonce)


def proof(token: str, nonce: str) -> str:
    """HMAC-SHA256(token, nonce) in hex, the daemon's answer to a challenge. Built on `_sha256` (0.3 ms
    to import) instead of `hmac`, which pulls in OpenSSL's `_hashlib` (2.5 ms on every prompt)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]  # CPython 3.12+
        except ImportError:
            from hashlib import sha256
    key = token.encode("ascii")
    if len(key) > 64:
        key = sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = sha256(bytes(b ^ 0x36 for b in key) + nonce.encode("ascii")).digest()
    return str(sha256(bytes(b ^ 0x5C for b in key) + inner).hexdigest())


def proven(token: str, nonce: str, answer: str | None) -> bool:
    """Did the listener answer the challenge `nonce` as only the holder of `token` can?"""
    expected = proof(token, nonce)
    return answer is not None and len(answer) == len(expected) and answer.lower() == expected


def _well_formed(token: str) -> bool:
    """Letters and digits only: a token can then never break a header line or a URL fragment."""
    return bool(token) and token.isascii() and token.isalnum()


def read_token_file(path: str) -> str | None:
    """The token in a token file (None when missing or malformed), whatever the environment says."""
    try:
        with open(path, "rb") as handle:  # binary: no codec machinery on the hook's path
            token = handle.read(1024).strip().decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    return token if _well_formed(token) else None


def ensure_token(data_dir: str) -> str:
    """The daemon's token: read it, or create it (0600, in a 0700 data dir) at the first start.
    ConfigError (one line) when the data dir or the file cannot be written.

    Created with a hard link from a finished temporary file, which fails when the token exists: two
    daemons starting at once cannot each keep a different token, and no reader sees a half-written
    file."""
    try:
        return _ensure_token(data_dir)
    except OSError as exc:
        from claude_mailbox.errors import ConfigError

        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"the data dir {data_dir} is not writable: cannot create the token file {token_path(data_dir)} ({reason})"
        ) from None


def _ensure_token(data_dir: str) -> str:
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    if os.name == "posix":
        os.chmod(data_dir, 0o700)
    path = token_path(data_dir)
    for _ in range(3):
        existing = read_token_file(path)
        if existing is not None:
            if os.name == "posix":
                os.chmod(path, 0o600)
            return existing
        if os.path.lexists(path):
            if read_token_file(path) is not None:
                continue  # another daemon linked its token between the two looks: use that one
            # Replacing a damaged file could race another daemon's fresh token: say so instead.
            from claude_mailbox.errors import ConfigError

            raise ConfigError(f"the token file {path} is damaged or unreadable: delete it, then start the daemon again")
        import secrets

        token = secrets.token_hex(TOKEN_BYTES)
        temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(token.encode("ascii") + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                continue  # another daemon created it first: use that one
            return token
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)
    raise OSError(f"cannot create the token file {path}")


def matches(header: str | None, token: str) -> bool:
    """Does an Authorization header carry `token`? Compared in constant time."""
    import hmac

    if not header:
        return False
    scheme, _, sent = header.strip().partition(" ")
    sent = sent.strip()
    if scheme.lower() != SCHEME.lower() or not sent.isascii():  # compare_digest takes ASCII text only
        return False
    return hmac.compare_digest(sent, token)
