"""Both stores side by side (issue 13): SQLite (the default) and PostgreSQL (database_url), in one run.

- REST send throughput at 16 keep-alive clients (bench/_loadgen.py, its own process) into one daemon;
- consume latency: POST /v1/check-inbox of a one-message inbox, p50/p99;
- wake-up: from a send returning on daemon A to a long-poll POST /v1/watch parked on daemon B
  returning (PostgreSQL: two daemons sharing the database, LISTEN/NOTIFY; SQLite has no second
  daemon to wake, so its row is A -> A, the same daemon, for scale; PostgreSQL A -> A shows what
  the hop through LISTEN/NOTIFY adds). Goal: p50 <= 10 ms on loopback.

The PostgreSQL server is started by tests/pgkit.py in a temporary directory (fsync off, as in the
tests; a production server with fsync on commits slower). The daemons run with auth = "none" so the
load generator needs no token.

    .venv/bin/python bench/postgres.py            # 5 s of load per store, 100 wake-ups
    .venv/bin/python bench/postgres.py --quick    # 2 s, 30 wake-ups
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_CONFIG,
    Daemon,
    KeepAlive,
    banner,
    ms,
    parse_args,
    percentile,
    run_loadgen,
    table,
    temp_dir,
)

CONFIG = {**BENCH_CONFIG, "auth": "none"}


def consume_latency(daemon: Daemon, trials: int) -> list[float]:
    conn = KeepAlive(daemon.port)
    samples = []
    try:
        for i in range(trials):
            conn.send("bench-sender", "bench-consume", f"m{i}")
            began = time.perf_counter()
            got = conn.check("bench-consume")
            samples.append(time.perf_counter() - began)
            assert len(got) == 1, got
    finally:
        conn.close()
    return samples


def wakeups(sender: Daemon, watcher: Daemon, trials: int) -> list[float]:
    """Send through `sender` while a long-poll waits on `watcher`: seconds from the send's answer to the
    watch's answer."""
    send = KeepAlive(sender.port)
    samples = []
    try:
        for i in range(trials):
            name = f"bench-wake-{i}"
            done: dict[str, float] = {}

            def watch(name: str = name, done: dict[str, float] = done) -> None:
                conn = KeepAlive(watcher.port)
                try:
                    status, data = conn.request("POST", f"/v1/watch?name={name}&timeout=10", None, {"X-Mailbox": name})
                    done["at"] = time.perf_counter()
                    assert status == 200 and json.loads(data)["messages"], data[:200]
                finally:
                    conn.close()

            thread = threading.Thread(target=watch)
            thread.start()
            time.sleep(0.05)  # parked in the long-poll
            send.send("bench-sender", name, "wake")
            sent_at = time.perf_counter()
            thread.join(15)
            samples.append(done["at"] - sent_at)
    finally:
        send.close()
    return samples


def measure(label: str, a: Daemon, b: Daemon, args: Any) -> list[str]:
    seconds, trials = (2.0, 30) if args.quick else (5.0, 100)
    load = run_loadgen(a.port, a.token, 16, seconds, 1.0)
    consume = consume_latency(a, trials)
    wake = wakeups(a, b, trials)
    return [
        label,
        f"{load['rate']:,.0f}/s" + (f" ({len(load['errors'])} errors)" if load["errors"] else ""),
        f"{ms(percentile(consume, 50))} / {ms(percentile(consume, 99))}",
        f"{ms(percentile(wake, 50))} / {ms(percentile(wake, 99))}",
    ]


def main() -> None:
    args = parse_args(__doc__ or "")
    banner("SQLite and PostgreSQL stores side by side", args)
    rows = []
    with temp_dir("bench-pg-") as root:
        sqlite = Daemon(root / "sqlite", config=CONFIG).start()
        try:
            rows.append(measure("SQLite (A -> A)", sqlite, sqlite, args))
        finally:
            sqlite.stop()
        import pgkit  # tests/ is on sys.path once _common is imported

        server = pgkit.start()
        try:
            url = server.fresh_database()
            a = Daemon(root / "pg-a", config={**CONFIG, "database_url": url}).start()
            b = Daemon(Path(root / "pg-b"), config={**CONFIG, "database_url": url}).start()
            try:
                rows.append(measure("PostgreSQL (A -> B)", a, b, args))
                same = wakeups(a, a, 30 if args.quick else 100)  # the share of LISTEN/NOTIFY in the above
                rows.append(["PostgreSQL (A -> A)", "", "", f"{ms(percentile(same, 50))} / {ms(percentile(same, 99))}"])
            finally:
                a.stop()
                b.stop()
        finally:
            server.stop()
    table(
        "16 clients, one daemon; consume and wake-up p50 / p99",
        ["store", "send throughput", "check-inbox (1 msg)", "wake-up send -> watcher"],
        rows,
    )


if __name__ == "__main__":
    main()
