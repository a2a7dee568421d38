"""Settings: built-in defaults < config file < command-line flags.

The config file is TOML (`config.toml` in the data dir). The seed product's `mailbox.json` is still
read when no TOML file exists. A malformed file is a ConfigError naming the file and the line.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

from claude_mailbox import fsutil, paths
from claude_mailbox.auth import MODES as AUTH_MODES
from claude_mailbox.errors import ConfigError
from claude_mailbox.locate import DEFAULT_BIND, is_loopback

WILDCARD_BINDS = frozenset({"0.0.0.0", "::"})
DEFAULT_LOOPBACK = DEFAULT_BIND  # what a wildcard bind (0.0.0.0) is reached at from here
_PATH_KEYS = {"tls_cert", "tls_key", "tls_ca"}
_BOOL_KEYS = {"insecure_remote", "deliver_between_tools"}
DURABILITY_LEVELS = ("normal", "full")
MAX_LEASE_SECONDS = 24 * 3600
MIN_RESPONSE_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # half of what the stdlib client accepts (httpclient.MAX_RESPONSE_BYTES)


@dataclass(frozen=True)
class Config:
    port: int = paths.DEFAULT_PORT
    bind: str = paths.DEFAULT_BIND
    db_path: Path | None = None  # None: mailbox.db in the data dir
    database_url: str | None = None  # postgresql://user@host:port/dbname: the store is on PostgreSQL (several machines)
    database_connect_timeout_seconds: int = 10  # a PostgreSQL server that accepts and never answers: give up
    host_id: str | None = None  # this machine's name among daemons sharing a database (default: the host name)
    durability: str = "normal"  # "full" fsyncs every commit (SQLite synchronous=FULL)
    busy_timeout_ms: int = 2000
    max_body_bytes: int = 64 * 1024
    max_request_bytes: int = 1024 * 1024
    rate_limit_per_minute: int = 600
    urgent_per_hour: int = 20  # urgent sends per sender (each may wake an idle session: a turn spent)
    max_pending_per_mailbox: int = 10_000
    client_timeout_seconds: int = 10  # to send a request's headers, then its body; idle keep-alive closes after it
    lease_seconds: int = 60  # mail handed out and not acknowledged within this comes back to the inbox
    max_response_bytes: int = 4 * 1024 * 1024  # bounds every answer that carries mail (a read pages)
    retention_days: int | None = None  # delivered mail older than this is pruned daily
    prefix: str | None = None  # base of session mailbox names, e.g. "backend" -> backend-1a2b3c4d
    max_connections: int = 1000  # open connections; lowered at start to what the open-file limit allows
    max_watchers: int = 512  # waiting long-polls (watch, feed, Stop hooks); over either cap: 503 at once
    rate_limit_per_peer_per_minute: int | None = None  # None: 10 x rate_limit_per_minute
    rate_limit_global_per_minute: int | None = None  # None: 20 x rate_limit_per_minute
    integrity_check_minutes: int = 60  # PRAGMA quick_check this often (and at SIGHUP); 0: only at SIGHUP
    auth: str = "token"  # "token": every route but /health and the page needs the data dir's token; "none": open
    tls_cert: Path | None = None  # PEM certificate (chain): the daemon serves HTTPS (needed for a non-loopback bind)
    tls_key: Path | None = None  # PEM private key of tls_cert
    tls_ca: Path | None = None  # clients: a CA file to trust besides the system's (a self-signed tls_cert)
    insecure_remote: bool = False  # allow a non-loopback bind without TLS (the token then crosses the network in clear)
    deliver_between_tools: bool = True  # the PostToolUse hook hands a busy session its mail after each tool call
    public_name: str | None = None  # names clients use for this daemon, comma-separated: accepted in Host and Origin
    source: str | None = None  # the file these settings came from, for messages

    @property
    def database(self) -> Path:
        return self.db_path or paths.default_db_path()

    @property
    def database_label(self) -> str:
        """Where the mail is kept, for messages: the file, or the PostgreSQL URL without its credentials."""
        if not self.database_url:
            return str(self.database)
        return redact_url(self.database_url)

    @property
    def peer_rate_limit(self) -> int:
        """Sending requests a minute from one connection peer (address): the claimed name is not trusted."""
        return self.rate_limit_per_peer_per_minute or 10 * self.rate_limit_per_minute

    @property
    def global_rate_limit(self) -> int:
        """Sending requests a minute from everyone together: loopback peers can use 127.0.0.2, 127.0.0.3, ..."""
        return self.rate_limit_global_per_minute or 20 * self.rate_limit_per_minute

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @cached_property
    def public_names(self) -> frozenset[str]:
        """Host names besides loopback that Host and Origin may carry: public_name, and bind when it
        names one address (not 0.0.0.0 / ::)."""
        names = {name.strip().lower() for name in (self.public_name or "").split(",") if name.strip()}
        if not is_loopback(self.bind) and self.bind not in WILDCARD_BINDS:
            names.add(self.bind.lower())
        return frozenset(f"[{name}]" if ":" in name else name for name in names)

    @property
    def url(self) -> str:
        bind = self.bind
        if bind in WILDCARD_BINDS:  # listening everywhere: clients here use the public name, else loopback
            names = [name.strip() for name in (self.public_name or "").split(",") if name.strip()]
            bind = names[0] if names else ("::1" if bind == "::" else DEFAULT_LOOPBACK)
        host = f"[{bind}]" if ":" in bind else bind
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


# libpq (and asyncpg) parameters that carry a secret or the path to one; any key naming a password,
# a key, a token or a secret counts too, so a parameter added later is not shown by default.
_SECRET_PARAMS = frozenset({"password", "passfile", "sslpassword", "sslkey", "sslcert", "sslcrl", "sslcrldir"})
_SECRET_WORDS = ("pass", "key", "secret", "token", "cred", "auth")


def _secret_param(key: str) -> bool:
    key = key.strip().lower()
    return key in _SECRET_PARAMS or any(word in key for word in _SECRET_WORDS)


def _query_pairs(query: str) -> list[tuple[str, str, str]]:
    """(raw pair, decoded key, decoded value) for each `k=v` of a query; libpq decodes %XX in keys too."""
    pairs = []
    for raw in query.split("&"):
        key, _, value = raw.partition("=")
        pairs.append((raw, unquote_plus(key), unquote_plus(value)))
    return pairs


def url_secrets(url: str) -> list[str]:
    """The secrets in a database URL (its password, wherever it stands, and secret parameters' values),
    raw and decoded: `scrub` removes them from text that may quote the URL (a driver's error)."""
    rest = url.partition("://")[2]
    netloc, _, query = rest.split("#", 1)[0].partition("?")
    netloc = netloc.split("/", 1)[0]
    found: list[str] = []
    if "@" in netloc:
        password = netloc.rpartition("@")[0].partition(":")[2]
        found += [password, unquote(password)]
    for raw, key, value in _query_pairs(query):
        if _secret_param(key):
            found += [raw.partition("=")[2], value]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """A database URL without its credentials, safe to show, log and put in an error: the password of
    the user info and every secret query parameter (password, passfile, sslpassword, sslkey, ...) are
    removed; the user, hosts, database and other parameters stay. Never raises, even on a malformed URL."""
    scheme, found, rest = url.partition("://")
    if not found:
        return "(not a URL)"
    rest = rest.split("#", 1)[0]  # a fragment means nothing to libpq
    authority_and_path, _, query = rest.partition("?")
    authority, slash, path = authority_and_path.partition("/")
    if "@" in authority:
        user_info, _, hosts = authority.rpartition("@")
        user = user_info.partition(":")[0]
        authority = f"{user}@{hosts}" if user else hosts
    kept = [raw for raw, key, _ in _query_pairs(query) if raw and not _secret_param(key)] if query else []
    return f"{scheme}://{authority}{slash}{path}" + (f"?{'&'.join(kept)}" if kept else "")


def scrub(text: str, url: str) -> str:
    """`text` with every secret of `url` replaced: for messages that quote what a driver said."""
    for secret in url_secrets(url):
        if len(secret) >= 3 or secret in text.split():  # a 1-2 character secret only as a whole word
            text = text.replace(secret, "***")
    return text


def database_url_problem(url: str) -> str | None:
    """What is wrong with a database URL, in words naming the part (None: nothing found). Checked at
    load, so a bad port or host is one line then, never a traceback from the driver."""
    if not url.startswith(("postgresql://", "postgres://")):
        return "database_url must be a postgresql://user@host:port/dbname URL"
    label = f"database_url {redact_url(url)}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed [ in the host
        return f"{label} has a malformed host ({exc}: a bracketed IPv6 address needs its closing ])"
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(",") if hosts else []:  # libpq takes several host[:port], comma-separated
        name, port = host, ""
        if host.startswith("["):
            name, closed, after = host[1:].partition("]")
            if not closed or (after and not after.startswith(":")):
                return f"{label} has a malformed host {host!r}"
            port = after[1:]
        elif ":" in host:
            name, _, port = host.rpartition(":")
        if ":" in name and not host.startswith("["):
            return f"{label} has a malformed host {host!r} (write an IPv6 address in brackets: [::1]:5432)"
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return f"{label} has port {port!r} for host {name!r}: a port is a number from 1 to 65535"
    for _raw, key, value in _query_pairs(parts.query) if parts.query else []:
        if key == "port" and not all(p.isascii() and p.isdigit() and 1 <= int(p) <= 65535 for p in value.split(",")):
            return f"{label} has port {value!r} in its query: a port is a number from 1 to 65535"
    return None


# Keys the seed's mailbox.json used, mapped to ours.
_LEGACY_KEYS = {"port": "port", "bind": "bind", "dbPath": "db_path", "db_path": "db_path"}
_INT_KEYS = {
    "port",
    "busy_timeout_ms",
    "max_body_bytes",
    "max_request_bytes",
    "rate_limit_per_minute",
    "urgent_per_hour",
    "max_pending_per_mailbox",
    "client_timeout_seconds",
    "retention_days",
    "lease_seconds",
    "max_response_bytes",
    "max_connections",
    "max_watchers",
    "rate_limit_per_peer_per_minute",
    "rate_limit_global_per_minute",
    "integrity_check_minutes",
    "database_connect_timeout_seconds",
}
_STR_KEYS = {"bind", "durability", "prefix", "auth", "database_url", "host_id", "public_name"}


def load(path: Path | None = None) -> Config:
    """Read the config file (`path`, else config.toml, else legacy mailbox.json) over the defaults."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        candidates = [path]
    else:
        candidates = [paths.config_path(), paths.legacy_config_path()]
    for candidate in candidates:
        if candidate.is_file():
            raw = _read_json(candidate) if candidate.suffix == ".json" else _read_toml(candidate)
            return _apply(Config(source=str(candidate)), raw, candidate)
    return Config()


def with_overrides(config: Config, **overrides: Any) -> Config:
    """Command-line flags win over the file; None means the flag was not given."""
    given = {key: value for key, value in overrides.items() if value is not None}
    merged = replace(config, **given)
    validate(merged, config.source or "command line")
    return merged


# Every whole-number setting and the range it is checked against at load (issue 12.1): a value
# outside it is a one-line error, never an overflow deep inside SQLite or asyncio.
RANGES: dict[str, tuple[int, int]] = {
    "port": (0, 65535),
    "busy_timeout_ms": (1, 60_000),
    "max_body_bytes": (1, 16 * 1024 * 1024),
    "max_request_bytes": (1024, 64 * 1024 * 1024),
    "rate_limit_per_minute": (1, 1_000_000_000),  # tests and benches lift it far out of the way
    "urgent_per_hour": (1, 1_000_000),
    "max_pending_per_mailbox": (1, 1_000_000_000),
    "client_timeout_seconds": (1, 3600),
    "lease_seconds": (1, MAX_LEASE_SECONDS),
    "max_response_bytes": (MIN_RESPONSE_BYTES, MAX_RESPONSE_BYTES),
    "retention_days": (1, 36_500),
    "max_connections": (16, 1_000_000),
    "max_watchers": (1, 1_000_000),
    "rate_limit_per_peer_per_minute": (1, 1_000_000_000),
    "rate_limit_global_per_minute": (1, 1_000_000_000),
    "integrity_check_minutes": (0, 7 * 24 * 60),
    "database_connect_timeout_seconds": (1, 3600),
}


def validate(config: Config, origin: str) -> None:
    for key, (low, high) in RANGES.items():
        value = getattr(config, key)
        if value is not None and not low <= value <= high:
            kind = "a positive number " if low == 1 else ""
            raise ConfigError(f"{origin}: {key} must be {kind}between {low} and {high}, not {value}")
    if config.auth not in AUTH_MODES:
        raise ConfigError(f'{origin}: auth must be "token" or "none", not {config.auth!r}')
    if config.durability not in DURABILITY_LEVELS:
        raise ConfigError(f"{origin}: durability must be one of {', '.join(DURABILITY_LEVELS)}")
    if config.max_body_bytes > config.max_request_bytes:
        raise ConfigError(f"{origin}: max_body_bytes ({config.max_body_bytes}) must not exceed max_request_bytes")
    if config.db_path is not None:
        _check_db_path(config.db_path, origin)
    if config.database_url is not None:
        problem = database_url_problem(config.database_url)
        if problem:
            raise ConfigError(f"{origin}: {problem}")
    if (config.tls_cert is None) != (config.tls_key is None):
        missing = "tls_key" if config.tls_key is None else "tls_cert"
        raise ConfigError(f"{origin}: tls_cert and tls_key go together: {missing} is missing")
    for name in (config.public_name or "").split(","):
        name = name.strip()
        if name and not all(ch.isalnum() or ch in ".-:" for ch in name):
            raise ConfigError(f"{origin}: public_name must be host names separated by commas, not {name!r}")


def remote_problem(config: Config) -> str | None:
    """Why this config may not listen beyond loopback (None: it may). A remote daemon needs the
    token (issue 12.1) and TLS, or an explicit insecure_remote = true."""
    if is_loopback(config.bind):
        return None
    where = config.source or "config.toml"
    if config.auth != "token":
        return f'refusing to bind {config.bind}: beyond loopback the token is required: set auth = "token" in {where}'
    if not config.tls and not config.insecure_remote:
        missing = " and ".join(key for key in ("tls_cert", "tls_key") if getattr(config, key) is None)
        return (
            f"refusing to bind {config.bind} beyond loopback without TLS: set {missing} (PEM files) in {where}, "
            "or insecure_remote = true to send the token in clear"
        )
    return None


def _check_db_path(db_path: Path, origin: str) -> None:
    """A parent that is a regular file would surface later as "[Errno 17] File exists"."""
    if db_path.is_dir():
        raise ConfigError(f"{origin}: db_path {db_path} is a directory; name a file inside it")
    for parent in db_path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{origin}: db_path {db_path}: {parent} is a file, not a directory")
            return


def write_setting(key: str, value: Any, path: Path | None = None) -> Path:
    """Set one key in config.toml (tomli-w), keeping the others. Used by doctor."""
    import tomli_w  # only the commands that write config pay for it

    target = path or paths.config_path()
    current = _read_toml(target) if target.is_file() else {}
    if value is None:
        current.pop(key, None)
    else:
        current[key] = value
    fsutil.atomic_write(target, tomli_w.dumps(current))
    return target


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return {_LEGACY_KEYS[key]: value for key, value in data.items() if key in _LEGACY_KEYS}


def _apply(config: Config, raw: dict[str, Any], path: Path) -> Config:
    known = {field.name for field in fields(Config)} - {"source"}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        if key in _INT_KEYS and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{path}: {key} must be a whole number, not {value!r}")
        if key in _STR_KEYS and not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string, not {value!r}")
        if key == "db_path" or key in _PATH_KEYS:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: {key} must be a file path")
            value = Path(value).expanduser()
        if key in _BOOL_KEYS and not isinstance(value, bool):
            raise ConfigError(f"{path}: {key} must be true or false, not {value!r}")
        values[key] = value
    merged = replace(config, **values)
    validate(merged, str(path))
    return merged
