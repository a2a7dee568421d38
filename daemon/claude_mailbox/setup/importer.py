"""`claude-mailbox import-sqlite`: copy one machine's SQLite mailbox into PostgreSQL, once, when its
user moves to several machines (README "Several machines").

What is copied, in ONE PostgreSQL transaction (all or nothing):
- mailboxes (aliases left by /clear, created/last-seen times; a name PostgreSQL already has is merged)
  and sessions (so `list` still shows their project, state and collaboration mode; their host is this
  machine's, whose daemon alone judges their Claude Code processes);
- every message, pending and delivered (the feed, `tail` and the page show the history; `prune` and
  `retention_days` age it as before), in id order, with sender, recipient, body, times and attempts.
  PostgreSQL assigns the ids (it may hold other machines' mail): they come from its own sequence, so
  nothing clashes, and are handed out in the old order, so each inbox reads in the same order;
- idempotency keys still in their 24 h window, pointing at the new ids (a retried send answers
  "repeated").
Leases are not copied: mail handed out and never acknowledged is pending again, as after a lease
expiry (its attempts kept, so it comes back marked redelivered). Pending counts are kept by
PostgreSQL's own triggers as the rows go in.

Run twice, copy once: the SQLite file gets a `pg_import` row with an id (committed) BEFORE the copy,
and the copy inserts a `sqlite_imports` row with that id in its own transaction; after the PostgreSQL
commit the SQLite row is marked finished, and later runs refuse. A run that died between the commit and
that mark finds the id in PostgreSQL when run again: it copies nothing and marks it. A copy known to
have rolled back (PostgreSQL refused a row) frees the row, so the file may go to another database; an
unfinished row that names another database is refused (its copy may have committed there). While it
copies it holds SQLite's write lock, so a daemon started meanwhile cannot take mail that would stay behind.

The SQL lives in the stores: the SQLite side is store.ImportFile (a read-only connection for the rows;
the only write to the file is that row and, for a file an older version wrote, the daemon's own
migrations), the PostgreSQL side PgStore.import_copy. This module holds the rules of the move.
Imported by the CLI's `import-sqlite` verb only: apsw and asyncpg never load for the light verbs.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_mailbox.client import probe_health
from claude_mailbox.config import redact_url
from claude_mailbox.errors import ConfigError, InvalidInput, MailboxError, StoreUnavailable
from claude_mailbox.model import ImportCounts, ImportMarker, ImportProgress
from claude_mailbox.store import ImportFile

STOP_HINT = (
    "stop it first (`claude-mailbox stop`, or end the `claude-mailbox serve` run by hand), "
    "then run import-sqlite again: mail it stored after the copy would not reach PostgreSQL"
)


@dataclass(frozen=True)
class Imported:
    """What one run did. `recovered`: an earlier run's copy had committed but was not yet noted in the
    SQLite file; this run noted it and copied nothing."""

    source: str
    database: str  # the PostgreSQL URL without its password
    imported_at: str
    mailboxes: int
    sessions: int
    pending: int
    delivered: int
    keys: int
    recovered: bool = False

    @classmethod
    def of(cls, source: str, database: str, counts: ImportCounts) -> Imported:
        return cls(
            source,
            database,
            counts.imported_at,
            counts.mailboxes,
            counts.sessions,
            counts.pending,
            counts.delivered,
            counts.keys,
            counts.recovered,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "database": self.database,
            "importedAt": self.imported_at,
            "mailboxes": self.mailboxes,
            "sessions": self.sessions,
            "pending": self.pending,
            "delivered": self.delivered,
            "idempotencyKeys": self.keys,
            "recovered": self.recovered,
        }


def run(
    source: Path, url: str, *, host: str | None = None, daemon_url: str | None = None, connect_timeout: float = 10.0
) -> Imported:
    """Copy the SQLite mailbox at `source` into the PostgreSQL database at `url` (see the module doc).
    `daemon_url`: the located daemon, refused when it runs on `source`."""
    label = redact_url(url)
    if daemon_url:
        _refuse_if_served(source, daemon_url)  # first: nothing may touch a file a daemon is using
    file = _open_source(source)
    try:
        _refuse_if_done(file.marker(), source, label)
        try:
            from claude_mailbox import pgstore  # the optional extra: only this verb loads asyncpg
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise ConfigError(
                "import-sqlite needs the PostgreSQL driver: pip install 'claude-mailbox[postgres]'"
            ) from None
        return asyncio.run(_import(pgstore, file, source, url, label, host, connect_timeout))
    finally:
        file.close()


async def _import(
    pgstore: Any, file: ImportFile, source: Path, url: str, label: str, host: str | None, connect_timeout: float
) -> Imported:
    # Connect (and create or migrate the schema, as a daemon would) before writing anything to SQLite.
    pg = await pgstore.PgStore.open(url, host=host, max_connections=1, connect_timeout=connect_timeout)
    try:
        file.open_writer()
        try:
            import_id = file.claim(label, lambda marker: _refuse_if_done(marker, source, label))
            file.lock()  # no daemon writes this file until the note is made
            progress = ImportProgress()
            try:
                _refuse_if_done(file.marker(on_writer=True), source, label)
                snapshot = file.snapshot()
                try:
                    counts = await pg.import_copy(import_id, snapshot, str(source), progress)
                except pgstore.ImportRefused:  # certainly rolled back: nothing to find out
                    raise
                except StoreUnavailable as exc:
                    if not progress.may_have_committed:
                        raise
                    raise StoreUnavailable(
                        f"lost PostgreSQL at {label} while committing the copy ({exc.message}); run import-sqlite "
                        "again: it finds out whether the copy is there and never copies twice"
                    ) from None
                result = Imported.of(str(source), label, counts)
                try:
                    file.finish(import_id, result.imported_at, json.dumps(result.to_json()))
                except MailboxError as exc:
                    raise StoreUnavailable(
                        f"the mail was copied into {label}, but noting that in {source} failed ({exc.message}); "
                        "run import-sqlite again: it notes it without copying twice"
                    ) from None
            except BaseException:
                file.abandon(import_id, rolled_back=progress.rolled_back)
                raise
        finally:
            file.close_writer()
    finally:
        await pg.close()
    return result


def _open_source(path: Path) -> ImportFile:
    """The file, checked before SQLite opens it (a read-only connection at the current schema)."""
    if not path.exists():
        raise InvalidInput(f"no SQLite mailbox at {path}: nothing to import (--from names another file)")
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file (--from names the SQLite mailbox, e.g. ~/.claude-mailbox/mailbox.db)")
    if not os.access(path, os.R_OK):
        raise InvalidInput(f"cannot read {path}: permission denied")
    return ImportFile(path, STOP_HINT)


def _refuse_if_done(marker: ImportMarker | None, path: Path, label: str) -> None:
    """Refuse a file already imported, or whose unfinished import went to another database (its copy
    may have committed there: copying here too would put the mail in two databases)."""
    if marker is None:
        return
    if marker.finished_at:
        raise InvalidInput(
            f"{path} was already imported into {marker.database} at {marker.finished_at}; nothing copied again "
            "(its mail is there: set database_url in config.toml and start the daemon)"
        )
    if marker.database != label:
        raise InvalidInput(
            f"an import of {path} into {marker.database} started at {marker.started_at} did not finish: run "
            "import-sqlite again with --database-url for that database (it completes it without copying twice)"
        )


def _refuse_if_served(path: Path, daemon_url: str) -> None:
    """A daemon on this file would keep taking mail that the copy does not carry."""
    health = probe_health(daemon_url, timeout=2.0, detailed=True)  # dbPath needs the token
    served = health.get("dbPath") if health else None
    if not served:
        return
    try:
        same = Path(str(served)).resolve() == path.resolve()
    except OSError:
        same = str(served) == str(path)
    if same:
        raise InvalidInput(f"the daemon at {daemon_url} is running on {path}: {STOP_HINT}")
