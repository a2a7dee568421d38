"""The human view's feed (issue 14): from `send` returning to a waiting feed long-poll answering
(GET /v1/feed?after=..&wait=..: the web page's and `tail`'s wake-up), to a running
`claude-mailbox tail` printing the line, and the cost of the page's first read (the newest 200
messages, all mail or one conversation) over a database holding many messages.

    .venv/bin/python bench/feed.py            # 200 wake-up trials, 20,000 stored messages
    .venv/bin/python bench/feed.py --quick    # 30 trials, 2,000 messages
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import (
    BENCH_CONFIG,
    CLI,
    LATENCY_HEADER,
    REPO,
    Daemon,
    KeepAlive,
    banner,
    latency_rows,
    parse_args,
    percentile,
    table,
    temp_dir,
    verdict,
    wait_until,
)

sys.path.insert(0, str(REPO / "daemon"))
from claude_mailbox import auth

TARGET_WAKE_P50 = 0.005  # the long-poll answers within 5 ms of the send (median)
SHOWN_WITHIN = 1.0  # issue 14: a send appears in tail and on the page within 1 s
SETTLE = 0.05  # after the daemon counts the waiter: time for its first read to finish


def waiters(client: KeepAlive, token: dict[str, str]) -> int:
    return int(json.loads(client.request("GET", "/health", headers=token)[1])["waiters"])


def feed_wakeups(daemon: Daemon, token: dict[str, str], trials: int) -> list[float]:
    sender, poller = KeepAlive(daemon.port), KeepAlive(daemon.port)
    samples: list[float] = []
    last = json.loads(poller.request("GET", "/v1/feed?limit=0", headers=token)[1])["last"]
    for trial in range(trials):
        answered: queue.Queue[float] = queue.Queue()

        def poll(after: int = last, answered: queue.Queue[float] = answered) -> None:
            poller.request("GET", f"/v1/feed?after={after}&wait=30", headers=token)
            answered.put(time.perf_counter())

        thread = threading.Thread(target=poll)
        thread.start()
        wait_until(lambda: waiters(sender, token) >= 1, 10)
        time.sleep(SETTLE)
        sender.send("bench-a", "bench-b", f"wake {trial}")
        sent = time.perf_counter()
        samples.append(answered.get(timeout=10) - sent)
        thread.join()
        last += 1
    sender.close()
    poller.close()
    return samples


def tail_lines(daemon: Daemon, token: dict[str, str], trials: int) -> list[float]:
    tail = subprocess.Popen([CLI, "tail", "--url", daemon.url], env=daemon.env(), stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[float] = queue.Queue()

    def read() -> None:
        assert tail.stdout is not None
        for _ in tail.stdout:
            lines.put(time.perf_counter())

    threading.Thread(target=read, daemon=True).start()
    client = KeepAlive(daemon.port)
    samples: list[float] = []
    try:
        for trial in range(trials):
            wait_until(lambda: waiters(client, token) >= 1, 10)
            time.sleep(SETTLE)
            client.send("bench-c", "bench-d", f"tail {trial}")
            sent = time.perf_counter()
            samples.append(lines.get(timeout=10) - sent)
    finally:
        tail.kill()
        tail.wait()
        client.close()
    return samples


def first_reads(daemon: Daemon, token: dict[str, str], stored: int, trials: int) -> list[tuple[str, list[float]]]:
    client = KeepAlive(daemon.port)
    for index in range(stored):
        client.send(f"peer-{index % 50}", f"peer-{(index + 1) % 50}", f"stored message {index} " + "x" * 200)
    rows = []
    for label, query in (
        ("newest 200, all mail", "limit=200"),
        ("newest 200, one mailbox", "limit=200&name=peer-7"),
        ("newest 200, one conversation", "limit=200&name=peer-7&peer=peer-8"),
    ):
        samples = []
        for _ in range(trials):
            started = time.perf_counter()
            status, _ = client.request("GET", f"/v1/feed?{query}", headers=token)
            samples.append(time.perf_counter() - started)
            assert status == 200
        rows.append((f"{label} ({stored:,} stored)", samples))
    client.close()
    return rows


def main() -> int:
    args = parse_args(__doc__ or "")
    banner("feed: long-poll wake-up, tail, first read", args)
    trials = 30 if args.quick else 200
    stored = 2_000 if args.quick else 20_000
    with temp_dir("bench-feed-") as home, Daemon(Path(home), config=BENCH_CONFIG) as daemon:
        token = auth.auth_header(str(home))
        wake = feed_wakeups(daemon, token, trials)
        shown = tail_lines(daemon, token, max(10, trials // 4))
        reads = first_reads(daemon, token, stored, max(20, trials // 4))
    table(
        "send returned -> answer / line (ms)",
        LATENCY_HEADER,
        latency_rows(
            [
                ("GET /v1/feed long-poll answered", wake),
                ("`claude-mailbox tail` printed the line", shown),
                *reads,
            ]
        ),
    )
    print(
        f"wake-up p50 {percentile(wake, 50) * 1000:.2f} ms (target < {TARGET_WAKE_P50 * 1000:.0f} ms): "
        f"{verdict(percentile(wake, 50) < TARGET_WAKE_P50)}"
    )
    print(
        f"tail max {max(shown) * 1000:.1f} ms (issue 14: < {SHOWN_WITHIN * 1000:.0f} ms): "
        f"{verdict(max(shown) < SHOWN_WITHIN)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
