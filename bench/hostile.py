"""Issue 12's attacks at full size against real daemons, one fresh daemon per attack: for each,
requests tried, accepted (what got through: served when it should have been refused, or an answer
that broke the contract; for the long-poll flood, the long-polls left waiting under the cap; for
the rotating sender, the sends stored), the daemon's RSS before and after, and GET /health p50/max
on fresh connections every 50 ms during it. tests/test_hostile.py runs the same attacks small.

    .venv/bin/python bench/hostile.py            # full size (about a minute)
    .venv/bin/python bench/hostile.py --quick    # small counts, seconds
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# isort: off
from _common import BENCH_CONFIG, banner, parse_args  # first: it puts tests/ on sys.path

import attacks
from faultkit import write_config
from harness import Daemon
from rawhttp import request

# isort: on


def run_one(
    label: str,
    attack: Callable[[Daemon], attacks.Outcome],
    settings: dict[str, Any] | None = None,
    preexec: Callable[[], None] | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        home = Path(tmp)
        if settings:
            write_config(home, **settings)
        daemon = Daemon(home, log_path=home / "daemon.log", preexec_fn=preexec).start()
        try:
            warm_up(daemon)  # the MCP SDK loads lazily (about 35 MiB): count it before, not as the attack's
            before = daemon.rss_mib()[0]
            with attacks.HealthProbe(daemon.port) as probe:
                outcome = attack(daemon)
            after = daemon.rss_mib()[0]
            alive = daemon.process is not None and daemon.process.poll() is None and attacks.health(daemon)
            crashes = attacks_tracebacks(daemon.log())
        finally:
            daemon.stop()
    # The flood measures /health itself, on the connections it competes with.
    p50 = outcome.details.get("health_p50_ms", probe.p50_ms())
    worst = outcome.details.get("health_max_ms", probe.max_ms())
    return {
        "attack": outcome.attack or label,
        "tried": outcome.tried,
        "accepted": outcome.accepted,
        "rss": f"{before:.1f} -> {after:.1f}",
        "health": f"{p50:.1f} / {worst:.0f}",
        "note": outcome.note + ("" if alive else " DAEMON DOWN") + (f" TRACEBACKS {len(crashes)}" if crashes else ""),
    }


def warm_up(daemon: Daemon) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    request(daemon.url, "POST", "/mcp", json_body=ping, headers=headers, timeout=30)


def attacks_tracebacks(log: str) -> list[str]:
    from harness import tracebacks

    return tracebacks(log)


def main() -> None:
    args = parse_args(__doc__ or "")
    banner("hostile: issue 12's attacks against the real daemon", args)
    quick = args.quick
    full = 100
    rows = [
        run_one("no token", lambda d: attacks.no_token(d, 2 if quick else 20)),
        run_one("mcp other inbox", lambda d: attacks.mcp_reads_another_inbox(d, 10 if quick else 50)),
        run_one(
            "watch flood",
            lambda d: attacks.watch_flood(d, 1100),
            preexec=attacks.limit_open_files(),
        ),
        run_one("idle flood", lambda d: attacks.idle_flood(d, 1100), preexec=attacks.limit_open_files()),
        run_one("many names", lambda d: attacks.many_names(d, 300 if quick else 2000), BENCH_CONFIG),
        run_one("escapes", lambda d: attacks.escape_injection(d, 3 if quick else 20)),
        run_one("rotating sender", lambda d: attacks.rotating_sender(d, 1000 if quick else 12_000, threads=4)),
        run_one("protocol errors", lambda d: attacks.protocol_errors(d, 5 if quick else 50)),
        run_one(
            "mailbox full",
            lambda d: attacks.mailbox_full(d, full, full),
            {"max_pending_per_mailbox": full},
        ),
        run_one("damaged database", attacks.damage_while_running),
    ]
    with tempfile.TemporaryDirectory(prefix="hostile-config-") as tmp:
        config = attacks.bad_configs(Path(tmp))
    rows.append(
        {
            "attack": config.attack,
            "tried": config.tried,
            "accepted": config.accepted,
            "rss": "-",
            "health": "-",
            "note": config.note or "each: exit 1, one line",
        }
    )
    headers = ("attack", "tried", "accepted", "RSS MiB before -> after", "/health p50 / max ms", "note")
    keys = ("attack", "tried", "accepted", "rss", "health", "note")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in keys) + " |")


if __name__ == "__main__":
    main()
