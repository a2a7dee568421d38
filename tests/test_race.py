"""Exactly-once delivery under real concurrency: 8 consumer PROCESSES check one inbox while 2
producer processes send 2,000+ messages, first against the store directly (each process with its
own SQLite connection on one file), then through the daemon's REST API."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import pgkit
from claude_mailbox.store import Store
from harness import Daemon
from race_workers import INBOX
from racekit import CONSUMERS, PRODUCERS, check_exactly_once, run_race, spawn

PER_PRODUCER = 1_050  # 2,100 messages in all

pytestmark = pytest.mark.slow


def open_store(where: Path | str) -> Any:
    """The daemon's store read directly: its SQLite file, or its PostgreSQL database
    (MAILBOX_TEST_STORE=postgres)."""
    return pgkit.SyncPgStore(where) if isinstance(where, str) else Store(where)


def assert_exactly_once(result: dict[str, Any], db_path: Path | str) -> None:
    assert PRODUCERS * PER_PRODUCER >= 2_000
    sent_ids = check_exactly_once(result, PRODUCERS * PER_PRODUCER)
    store = open_store(db_path)
    try:
        messages = [m for m in store.all_messages() if m.recipient == INBOX]
        assert {m.id for m in messages} == set(sent_ids)
        assert all(m.delivered_at is not None for m in messages)
        assert store.peek(INBOX) == (0, None)
        # Each producer's messages were delivered in the order they were sent.
        for producer_ids in result["sent"]:
            assert producer_ids == sorted(producer_ids)
    finally:
        store.close()


def test_store_level_exactly_once_across_processes(tmp_path: Path, mailbox_home: Path) -> None:
    db_path = tmp_path / "race.db"
    Store(db_path).close()  # migrate once up front, so the race is only about messages
    result = run_race([(mailbox_home, str(db_path))], "store", tmp_path / "work", PER_PRODUCER)
    assert_exactly_once(result, db_path)
    print(f"store race: {PRODUCERS * PER_PRODUCER} messages, {CONSUMERS} consumers, {result['elapsed']:.1f} s")


def test_rest_exactly_once_across_processes(tmp_path: Path, daemon: Daemon) -> None:
    result = run_race([(daemon.home, daemon.url)], "rest", tmp_path / "work", PER_PRODUCER)
    daemon.stop()
    assert_exactly_once(result, pgkit.daemon_database(daemon) or daemon.db_path)
    print(f"REST race: {PRODUCERS * PER_PRODUCER} messages, {CONSUMERS} consumers, {result['elapsed']:.1f} s")


def test_consumers_killed_at_random_lose_nothing_and_acknowledge_nothing_twice(
    tmp_path: Path, mailbox_home: Path
) -> None:
    """8 consumer processes read with ack=manual while one is SIGKILLed (and replaced) every 50 ms:
    every message ends up in exactly one acknowledged read; a page read but not acknowledged comes back."""
    import random

    from faultkit import write_config
    from harness import start_daemon

    write_config(mailbox_home, lease_seconds=1, rate_limit_per_minute=100_000_000, max_pending_per_mailbox=100_000)
    daemon = start_daemon(mailbox_home)
    workdir = tmp_path / "work"
    workdir.mkdir()
    rng = random.Random()
    sent = [int(daemon.client().send("producer", INBOX, f"message {n}")["id"]) for n in range(1_500)]
    consumers = [spawn(daemon.home, "killable", "rest", daemon.url, str(workdir), str(i)) for i in range(CONSUMERS)]
    kills = 0
    try:
        deadline = time.monotonic() + 60
        while daemon.client().peek(INBOX)["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
            victim = rng.randrange(CONSUMERS)
            consumers[victim].kill()
            consumers[victim].wait()
            kills += 1
            consumers[victim] = spawn(daemon.home, "killable", "rest", daemon.url, str(workdir), str(victim))
        assert daemon.client().peek(INBOX)["pending"] == 0, "the consumers did not drain the inbox"
    finally:
        for process in consumers:
            process.kill()
            process.wait()
        daemon.stop()
    pages: dict[str, list[int]] = {}
    acked: set[str] = set()
    for path in workdir.glob("killable-*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if "acked" in entry:
                acked.add(entry["acked"])
            elif "lease" in entry:
                pages[entry["lease"]] = entry["ids"]
    delivered = [message_id for lease in acked for message_id in pages[lease]]
    duplicates = [message_id for message_id, count in Counter(delivered).items() if count > 1]
    assert not duplicates, f"acknowledged twice: {duplicates[:20]}"
    # A consumer killed during its ack call may not have recorded an ack that did happen: every message
    # reached some reader's output, and the database has each one delivered (an expired lease's late
    # ack is refused, so no message is acknowledged under two leases).
    reached = {message_id for ids in pages.values() for message_id in ids}
    assert reached == set(sent), f"lost: {sorted(set(sent) - reached)[:20]}"
    store = open_store(pgkit.daemon_database(daemon) or daemon.db_path)
    try:
        assert all(m.delivered_at for m in store.all_messages()) and store.peek(INBOX) == (0, None)
    finally:
        store.close()
    assert kills >= 5
    print(f"killed {kills} consumers; {len(pages) - len(acked)} page(s) read but never acknowledged came back")
