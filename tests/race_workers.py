"""Worker processes for test_race.py, run as `python -m race_workers ROLE MODE TARGET WORKDIR INDEX [COUNT]`.

ROLE is `consumer`, `killable` (REST, acknowledges by hand, runs until killed) or `producer`;
MODE is `store` (TARGET is a database file, each process opens its
own Store) or `rest` (TARGET is the daemon's URL). Coordination is through files in WORKDIR:
`ready-consumer-N` (a consumer is looping), `producers-done` (every producer has exited), and
`consumer-N.json` / `producer-N.json` (the message ids each one received or sent).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

INBOX = "race-inbox"
SENDER_CHUNK = 250  # the REST producers switch sender every 250 messages (per-sender rate limit: 600 burst)


def _consume_function(mode: str, target: str) -> Callable[[], list[int]]:
    if mode == "store":
        from claude_mailbox.model import LeaseTerms
        from claude_mailbox.store import Store

        store = Store(Path(target), busy_timeout_ms=60_000)

        def lease_and_ack() -> list[int]:
            lease = store.lease(INBOX, LeaseTerms(lease_seconds=60))
            if lease.id is not None:
                store.ack(INBOX, lease.id)
            return [message.id for message in lease.messages]

        return lease_and_ack
    from claude_mailbox.client import MailboxClient

    client = MailboxClient(target, timeout=30.0)
    return lambda: [int(message["id"]) for message in client.check(INBOX)["messages"]]


def _send_function(mode: str, target: str) -> Callable[[str, str], int]:
    if mode == "store":
        from claude_mailbox.model import SendRequest
        from claude_mailbox.store import Store

        store = Store(Path(target), busy_timeout_ms=60_000)
        return lambda sender, body: store.send(SendRequest(sender, INBOX, body)).message.id
    from claude_mailbox.client import MailboxClient

    client = MailboxClient(target, timeout=30.0)
    return lambda sender, body: int(client.send(sender, INBOX, body)["id"])


def consumer(mode: str, target: str, workdir: Path, index: int) -> None:
    consume = _consume_function(mode, target)
    received: list[int] = []
    calls = 0
    (workdir / f"ready-consumer-{index}").touch()
    while True:
        got = consume()
        calls += 1
        received.extend(got)
        if got:
            continue
        if (workdir / "producers-done").exists():
            # Every send committed before the marker appeared; an empty check after seeing it means empty.
            got = consume()
            calls += 1
            received.extend(got)
            if not got:
                break
            continue
        time.sleep(0.002)
    _write(workdir / f"consumer-{index}.json", {"ids": received, "calls": calls})


def producer(mode: str, target: str, workdir: Path, index: int, count: int) -> None:
    send = _send_function(mode, target)
    sent = [send(f"producer{index}-{n // SENDER_CHUNK}", f"producer {index} message {n}") for n in range(count)]
    _write(workdir / f"producer-{index}.json", {"ids": sent})


def _write(path: Path, data: object) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


def killable_consumer(url: str, workdir: Path, index: int) -> None:
    """Read with ack=manual until killed: each page is recorded (flushed) before it is acknowledged,
    then the acknowledgement is recorded. A kill between the two leaves a lease that expires."""
    from claude_mailbox.client import MailboxClient
    from claude_mailbox.errors import DaemonError

    client = MailboxClient(url, timeout=30.0)
    with (workdir / f"killable-{index}-{os.getpid()}.jsonl").open("a", encoding="utf-8", buffering=1) as record:
        while True:
            page = client.check(INBOX, max_chars=100, manual=True)  # small pages: many leases
            if not page["messages"]:
                time.sleep(0.01)
                continue
            record.write(json.dumps({"lease": page["leaseId"], "ids": [m["id"] for m in page["messages"]]}) + "\n")
            time.sleep(0.03)  # "printing": a kill lands here now and then
            try:
                client.ack(INBOX, page["leaseId"])
            except DaemonError:  # expired meanwhile: the mail comes again, to whoever reads next
                continue
            record.write(json.dumps({"acked": page["leaseId"]}) + "\n")


def main(argv: list[str]) -> None:
    role, mode, target, workdir, index, *rest = argv
    if role == "killable":
        killable_consumer(target, Path(workdir), int(index))
    elif role == "consumer":
        consumer(mode, target, Path(workdir), int(index))
    else:
        producer(mode, target, Path(workdir), int(index), int(rest[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
