"""The exactly-once race, for test_race.py (one store or daemon) and test_postgres.py (two daemons on
one database): consumer and producer processes (race_workers.py), started in order, waited for
within a deadline, and the checks every race must pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harness import REPO, base_env

CONSUMERS = 8
PRODUCERS = 2
DEADLINE = 150.0


def spawn(home: Path, *args: str) -> subprocess.Popen[bytes]:
    """One `python -m race_workers ARGS` process with data dir `home`."""
    env = base_env(home)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), str(REPO / "tests")])
    return subprocess.Popen(
        [sys.executable, "-m", "race_workers", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_all(processes: list[subprocess.Popen[bytes]], deadline: float) -> None:
    for process in processes:
        try:
            _, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail("a race worker did not finish in time")
        assert process.returncode == 0, err.decode(errors="replace")


def run_race(places: Sequence[tuple[Path, str]], mode: str, workdir: Path, per_producer: int) -> dict[str, Any]:
    """Start the consumers, wait until all are looping, run the producers, then let consumers drain.
    Worker N uses places[N % len(places)]: (its data dir, its target: a database file or a URL)."""
    workdir.mkdir()
    deadline = time.monotonic() + DEADLINE

    def worker(role: str, index: int, *extra: str) -> subprocess.Popen[bytes]:
        home, target = places[index % len(places)]
        return spawn(home, role, mode, target, str(workdir), str(index), *extra)

    consumers = [worker("consumer", i) for i in range(CONSUMERS)]
    try:
        while len(list(workdir.glob("ready-consumer-*"))) < CONSUMERS:
            for process in consumers:
                if process.poll() is not None:
                    pytest.fail(f"a consumer exited early: {process.communicate()[1].decode(errors='replace')}")
            assert time.monotonic() < deadline, "consumers did not start"
            time.sleep(0.02)
        started = time.monotonic()
        wait_all([worker("producer", i, str(per_producer)) for i in range(PRODUCERS)], deadline)
        (workdir / "producers-done").touch()
        wait_all(consumers, deadline)
        elapsed = time.monotonic() - started
    finally:
        for process in consumers:
            if process.poll() is None:
                process.kill()
                process.wait()
    received = [json.loads((workdir / f"consumer-{i}.json").read_text()) for i in range(CONSUMERS)]
    sent = [json.loads((workdir / f"producer-{i}.json").read_text())["ids"] for i in range(PRODUCERS)]
    return {"received": received, "sent": sent, "elapsed": elapsed}


def check_exactly_once(result: dict[str, Any], expected: int) -> list[int]:
    """Every one of the `expected` messages sent was received exactly once, by more than one
    consumer in all. Returns the sent ids."""
    sent_ids = [message_id for ids in result["sent"] for message_id in ids]
    assert len(sent_ids) == expected
    assert len(set(sent_ids)) == len(sent_ids), "two sends got the same id"
    received_ids = [message_id for consumer in result["received"] for message_id in consumer["ids"]]
    duplicates = [message_id for message_id, count in Counter(received_ids).items() if count > 1]
    assert not duplicates, f"delivered more than once: {duplicates[:20]}"
    assert set(received_ids) == set(sent_ids), (
        f"lost: {sorted(set(sent_ids) - set(received_ids))[:20]}, "
        f"unknown: {sorted(set(received_ids) - set(sent_ids))[:20]}"
    )
    # More than one consumer actually won messages: the race was real, not serialised by accident.
    winners = sum(1 for consumer in result["received"] if consumer["ids"])
    assert winners >= 2, [len(consumer["ids"]) for consumer in result["received"]]
    return sent_ids
