"""Fault machinery shared by tests/test_faults.py and bench/reliability.py: a daemon that logs to a
file, config.toml writing, and the kill -9 load run (client processes that send and check while
the daemon is killed and restarted, then an audit of the database against what every client saw).

The client side runs as its own processes: `python tests/faultkit.py worker URL NAME PEERS OUT STOP SEED`.
It imports only the stdlib client, so it starts fast and never shares the daemon's interpreter.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import sqlite_rows, tracebacks

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TAG_PREFIX = "faultkit "

# The load run measures delivery under faults, not flood protection: lift the limits.
UNLIMITED = {"rate_limit_per_minute": 1_000_000, "max_pending_per_mailbox": 10_000_000}  # config.py maxima
LOAD_LEASE_SECONDS = 2  # mail read but not acknowledged before a kill comes back this soon


def write_config(home: Path, **settings: Any) -> Path:
    """config.toml in the data dir (the daemon reads it at start)."""
    lines = []
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def logged_daemon(home: Path, *args: str, port: int | None = None, log_path: Path | None = None) -> Any:
    """A started daemon whose output goes to a file (default `home/daemon.log`): see harness.Daemon."""
    from harness import start_daemon

    return start_daemon(home, *args, port=port, log_path=log_path or home / "daemon.log")


# --- the client worker (its own process) -----------------------------------------------------------


def worker(url: str, name: str, peers: list[str], out: Path, stop: Path, seed: int) -> None:
    """Send to random peers and check our own inbox until `stop` exists, recording every outcome:
    {"ack": tag, "id", "to"} answered 201; {"unknown": tag} sent, but the answer was cut off (the
    daemon died mid-request: stored or not, never retried, so never stored twice); {"rejected": tag,
    "status"} an error answer; {"recv": id, "tag", "from"} mail taken by a check; {"down": n} calls
    refused while the daemon was down (a refused send is retried as the same message)."""
    sys.path.insert(0, str(REPO / "daemon"))
    from claude_mailbox.client import MailboxClient
    from claude_mailbox.errors import DaemonError, DaemonUnreachable

    rng = random.Random(seed)
    client = MailboxClient(url, timeout=15.0)
    sequence = 0
    down = 0
    outgoing: tuple[str, str, str] | None = None  # a send refused while the daemon was down: retried as is
    with out.open("a", encoding="utf-8", buffering=1) as record:

        def write(**entry: Any) -> None:
            record.write(json.dumps(entry) + "\n")

        while not stop.exists():
            try:
                if outgoing is not None or rng.random() < 0.7:
                    if outgoing is None:
                        sequence += 1
                        tag = f"{name}/{sequence}"
                        outgoing = (tag, rng.choice(peers), f"{TAG_PREFIX}{tag} " + "x" * rng.randrange(0, 300))
                    tag, to, body = outgoing
                    try:
                        result = client.send(name, to, body, idempotency_key=tag)
                    except DaemonUnreachable as exc:
                        if "connection refused" not in exc.message:
                            outgoing = None
                            write(unknown=tag)
                        raise
                    except DaemonError as exc:
                        outgoing = None
                        write(rejected=tag, status=exc.http_status, code=exc.code)
                        continue
                    outgoing = None
                    if isinstance(result, dict) and "id" in result:
                        write(ack=tag, id=result["id"], to=to)
                    else:  # a 201 whose body was cut off: the outcome is unknown to this client
                        write(unknown=tag)
                else:
                    # ack=manual: recorded first, then acknowledged (a kill in between: the mail comes again).
                    result = client.check(name, manual=True)
                    if not isinstance(result, dict):
                        write(cut_check=1)
                        continue
                    for message in result["messages"]:
                        tag = message["body"].split(" ", 2)[1]
                        write(recv=message["id"], tag=tag, sender=message["from"], lease=result["leaseId"])
                    if result["leaseId"]:
                        client.ack(name, result["leaseId"])
                        write(acked_lease=result["leaseId"])
            except DaemonUnreachable:
                down += 1
                time.sleep(0.02 + rng.random() * 0.03)  # the daemon is down: retry until it is back
            except DaemonError:
                time.sleep(0.02)
        write(down=down)


# --- the kill -9 run ---------------------------------------------------------------------------------


@dataclass
class LoadResult:
    clients: int
    seconds: float
    kills: int
    acked: int = 0  # sends answered 201
    unknown: int = 0  # sends whose answer was cut off by a kill (stored at most once, never retried)
    unknown_stored: int = 0  # of those, how many the daemon had stored (each exactly once)
    rejected: int = 0  # sends answered with an error
    received: int = 0  # messages handed to a consumer (checks during the run + the final drain)
    cut_deliveries: int = 0  # acknowledged, but the answer to the acknowledgement was cut off by a kill
    down_retries: int = 0  # client calls that found the daemon down and retried
    lost: list[str] = field(default_factory=list)  # acknowledged sends missing from the database
    duplicated: list[str] = field(default_factory=list)  # stored twice, or received twice
    problems: list[str] = field(default_factory=list)  # every violated property, in words
    log_tracebacks: list[str] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return self.acked


def _spawn_worker(
    url: str, name: str, peers: list[str], workdir: Path, seed: int, home: Path
) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CLAUDE_", "COV_"))}
    env["PYTHONPATH"] = str(REPO / "daemon")
    env["CLAUDE_MAILBOX_HOME"] = str(home)  # its client reads the daemon's token there
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "worker",
            url,
            name,
            ",".join(peers),
            str(workdir / f"{name}.jsonl"),
            str(workdir / "stop"),
            str(seed),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_kill_load(
    workdir: Path, *, clients: int = 8, seconds: float = 12.0, kills: int = 4, seed: int | None = None
) -> LoadResult:
    """Clients send and check for `seconds` while the daemon is killed with SIGKILL `kills` times at
    random moments (one in each equal slice of the run) and restarted on the same port. Then every
    inbox is drained and the database is audited against what the clients recorded."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    home = workdir / "home"
    home.mkdir(parents=True)
    write_config(home, **UNLIMITED, lease_seconds=LOAD_LEASE_SECONDS)
    daemon = logged_daemon(home)
    names = [f"load-{index}" for index in range(clients)]
    workers = [_spawn_worker(daemon.url, name, names, workdir, rng.randrange(1 << 30), home) for name in names]
    killed = 0
    try:
        started = time.monotonic()
        slice_length = seconds * 0.8 / kills
        moments = [seconds * 0.1 + slice_length * (index + rng.random()) for index in range(kills)]
        for moment in moments:
            time.sleep(max(0.0, started + moment - time.monotonic()))
            daemon.stop(signal.SIGKILL)
            killed += 1
            time.sleep(rng.uniform(0.0, 0.4))  # down for a moment: clients retry until it is back
            daemon.start()
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        (workdir / "stop").touch()
        for process in workers:
            _, err = process.communicate(timeout=60)
            if process.returncode != 0:
                raise RuntimeError(f"a load client failed: {err.decode(errors='replace')[-2000:]}")
        elapsed = time.monotonic() - started
        drained = _drain(daemon, names)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        daemon.stop()
    result = _audit(workdir, home / "mailbox.db", names, drained)
    result.seconds = elapsed
    result.kills = killed
    result.log_tracebacks = tracebacks(daemon.log())
    if result.log_tracebacks:
        result.problems.append(f"the daemon log has tracebacks: {result.log_tracebacks[:3]}")
    if killed != kills:
        result.problems.append(f"only {killed} of {kills} kills happened")
    return result


def _drain(daemon: Any, names: list[str]) -> list[dict[str, Any]]:
    """After the run: take whatever is still pending, as one more consumer."""
    client = daemon.client(timeout=30.0)
    records = []
    deadline = time.monotonic() + LOAD_LEASE_SECONDS + 10.0
    for name in names:
        while True:
            messages = client.check(name)["messages"]
            if not messages:
                if not client.peek(name)["pending"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)  # held by a lease whose reader was cut off: it expires and comes back
                continue
            records += [
                {"recv": m["id"], "tag": m["body"].split(" ", 2)[1], "sender": m["from"], "by": name} for m in messages
            ]
    return records


def _audit(workdir: Path, db_path: Path, names: list[str], drained: list[dict[str, Any]]) -> LoadResult:
    result = LoadResult(clients=len(names), seconds=0.0, kills=0)
    acked: dict[str, dict[str, Any]] = {}
    unknown: set[str] = set()
    rejected: set[str] = set()
    received: list[dict[str, Any]] = []
    acked_leases: set[str] = set()
    for name in names:
        for line in (workdir / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if "acked_lease" in entry:
                acked_leases.add(entry["acked_lease"])
            elif "ack" in entry:
                acked[entry["ack"]] = entry
            elif "unknown" in entry:
                unknown.add(entry["unknown"])
            elif "rejected" in entry:
                rejected.add(entry["rejected"])
            elif "recv" in entry:
                received.append({**entry, "by": name})
            elif "down" in entry:
                result.down_retries += int(entry["down"])
    # Only acknowledged deliveries count: a page whose acknowledgement a kill prevented comes again.
    seen_by_a_reader = {entry["recv"] for entry in received}
    received = [entry for entry in received if entry.get("lease") is None or entry["lease"] in acked_leases]
    received += drained
    result.acked, result.unknown, result.rejected, result.received = len(acked), len(unknown), len(rejected), 0

    integrity = sqlite_rows(db_path, "PRAGMA integrity_check")
    rows = sqlite_rows(db_path, "SELECT id, sender, recipient, body, delivered_at FROM messages")
    if integrity != [("ok",)]:
        result.problems.append(f"integrity_check: {integrity[:3]}")
    by_tag: dict[str, list[tuple[Any, ...]]] = {}
    by_id = {}
    for row in rows:
        by_id[row[0]] = row
        if row[3].startswith(TAG_PREFIX):
            by_tag.setdefault(row[3].split(" ", 2)[1], []).append(row)

    stored_twice = sorted(tag for tag, tagged in by_tag.items() if len(tagged) > 1)
    result.lost = sorted(tag for tag in acked if tag not in by_tag)
    for tag, entry in acked.items():
        tagged = by_tag.get(tag, [])
        if len(tagged) == 1 and (tagged[0][0] != entry["id"] or tagged[0][2] != entry["to"]):
            result.problems.append(f"{tag}: acknowledged as #{entry['id']} to {entry['to']}, stored as {tagged[0]}")
    refused_but_stored = sorted(tag for tag in rejected if tag in by_tag)
    if refused_but_stored:
        result.problems.append(f"sends answered with an error were stored anyway: {refused_but_stored[:5]}")
    result.unknown_stored = sum(1 for tag in unknown if tag in by_tag)
    strays = sorted(tag for tag in by_tag if tag not in acked and tag not in unknown)
    if strays:
        result.problems.append(f"stored messages no client sent: {strays[:5]}")

    counts = Counter(entry["recv"] for entry in received)
    received_twice = sorted(message_id for message_id, count in counts.items() if count > 1)
    result.received = len(counts)
    for entry in received:
        row = by_id.get(entry["recv"])
        if row is None or row[4] is None or row[2] != entry["by"] or row[3].split(" ", 2)[1] != entry["tag"]:
            result.problems.append(f"{entry['by']} received #{entry['recv']} ({entry['tag']}) but the db has {row}")
    pending = [row[0] for row in rows if row[4] is None]
    if pending:
        result.problems.append(f"{len(pending)} message(s) still pending after the drain: {pending[:5]}")
    cut = [row[0] for row in rows if row[4] is not None and row[0] not in counts]
    result.cut_deliveries = len(cut)
    unseen = [message_id for message_id in cut if message_id not in seen_by_a_reader]
    if unseen:
        result.problems.append(f"delivered without any reader having them: {unseen[:5]}")
    result.duplicated = [f"stored twice: {tag}" for tag in stored_twice] + [
        f"received twice: #{message_id}" for message_id in received_twice
    ]
    if result.lost:
        result.problems.append(f"{len(result.lost)} acknowledged send(s) lost: {result.lost[:5]}")
    if result.duplicated:
        result.problems.append(f"{len(result.duplicated)} duplicate(s): {result.duplicated[:5]}")
    return result


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "worker":
        _, _, url, name, peers, out, stop, seed = sys.argv
        worker(url, name, peers.split(","), Path(out), Path(stop), int(seed))
    else:
        sys.exit("usage: faultkit.py worker URL NAME PEERS OUT STOP SEED")
