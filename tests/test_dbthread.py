"""The database thread's group commit (dbthread.py + store.WriteGroup) on a real SQLite file: sends
queued together share one COMMIT, a refused send undoes only itself, and a failed COMMIT answers
every send of the group with the error and stores none of them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from claude_mailbox.dbthread import DbThread
from claude_mailbox.errors import MailboxFull
from claude_mailbox.model import SendRequest
from claude_mailbox.store import Store


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[DbThread, Store]]:
    thread = DbThread("test-db")
    store = Store(tmp_path / "mailbox.db")
    try:
        yield thread, store
    finally:
        thread.shutdown()
        store.close()


def committed(store: Store) -> list[tuple[Any, ...]]:
    """What another connection sees: only committed mail."""
    db = apsw.Connection(str(store.path))
    try:
        return db.execute("SELECT sender, recipient, body FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


async def queued_sends(thread: DbThread, store: Store, sends: list[tuple[str, str, int | None]]) -> list[Any]:
    """Hold the thread with one job so that all `sends` queue up behind it, then let them run."""
    gate = threading.Event()
    blocker = asyncio.ensure_future(thread.run(gate.wait))
    await asyncio.sleep(0.05)
    tasks = [
        asyncio.ensure_future(
            thread.run(
                lambda s=sender, r=to, m=limit: store.send(SendRequest(s, r, "hi", max_pending=m)), group=store.group
            )
        )
        for sender, to, limit in sends
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_queued_sends_share_one_commit_and_a_refused_one_undoes_only_itself(
    opened: tuple[DbThread, Store],
) -> None:
    thread, store = opened
    store.send(SendRequest("seed", "full", "already one"))
    commits: list[int] = []

    def count_commit() -> bool:
        commits.append(1)
        return False  # let it commit

    store.db.set_commit_hook(count_commit)
    sends: list[tuple[str, str, int | None]] = [(f"s{i}", "bob", None) for i in range(6)]
    sends.insert(3, ("s-full", "full", 1))  # refused: "full" already holds its one allowed message
    results = asyncio.run(queued_sends(thread, store, sends))
    assert isinstance(results[3], MailboxFull)
    ok = [r for i, r in enumerate(results) if i != 3]
    assert all(not isinstance(r, BaseException) for r in ok), results
    assert len(commits) == 1  # seven jobs, one transaction (without grouping: six commits)
    assert committed(store)[1:] == [(f"s{i}", "bob", "hi") for i in range(6)]
    assert [r.message.id for r in ok] == sorted(r.message.id for r in ok)  # answered in submission order
    assert store.pending_counts() == {"full": 1, "bob": 6}


def test_a_failed_group_commit_fails_every_send_and_stores_none(opened: tuple[DbThread, Store]) -> None:
    thread, store = opened
    store.db.set_commit_hook(lambda: True)  # every COMMIT turns into a rollback (as a failed write would)
    results = asyncio.run(queued_sends(thread, store, [(f"s{i}", "bob", None) for i in range(4)]))
    store.db.set_commit_hook(None)
    assert all(isinstance(r, BaseException) for r in results), results
    assert committed(store) == []
    assert store.pending_counts() == {}
    assert not store.db.in_transaction
    store.send(SendRequest("after", "bob", "works again"))  # the connection is usable afterwards
    assert committed(store) == [("after", "bob", "works again")]
