"""Shared helpers for the benchmarks: a real daemon subprocess on a free port with its own data dir,
a keep-alive HTTP client, percentiles and plain-text tables.

Benchmarks print figures and ratios against a baseline measured in the same run; they are not
timed tests. The machine is shared and noisy, so every figure is a median (and p99) over many trials.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the one daemon harness lives with the tests (stdlib only)
import harness  # noqa: E402
from harness import free_port, health_ok  # noqa: E402

__all__ = ["Daemon", "free_port", "health_ok"]  # the benchmarks import these from here
PYTHON = sys.executable  # the venv's interpreter (the benchmarks are run as .venv/bin/python bench/NAME.py)
REAL_PYTHON = os.path.realpath(PYTHON)  # the binary behind the venv's symlink chain
CLI = str(Path(PYTHON).parent / "claude-mailbox")  # the pip console script, as a user runs it

# The benchmarks send far faster than a person or an agent: lift the per-sender rate limit and the
# pending cap (to config.py's maxima) so they measure the daemon, not its flood protection.
BENCH_CONFIG: dict[str, Any] = {"rate_limit_per_minute": 1_000_000, "max_pending_per_mailbox": 10_000_000}


# --- arguments -----------------------------------------------------------------------------------


def parse_args(description: str, extra: Iterable[tuple[tuple[str, ...], dict[str, Any]]] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="few trials: a smoke run in seconds, figures are rough")
    for flags, options in extra:
        parser.add_argument(*flags, **options)
    return parser.parse_args()


def banner(title: str, args: argparse.Namespace) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(f"== {title}")
    print(
        f"   python {platform.python_version()} ({REAL_PYTHON}), {os.cpu_count()} cores, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{', QUICK (rough figures)' if args.quick else ''}"
    )
    print()


# --- environment and the daemon ------------------------------------------------------------------


def clean_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The caller's environment without any Claude Code or mailbox variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE_", "COV_", "PYTHON"))}
    if home is not None:
        env["CLAUDE_MAILBOX_HOME"] = str(home)
    env.update(extra)
    return env


def write_config(home: Path, settings: dict[str, Any]) -> Path:
    """config.toml with integer/string settings (enough for the benchmarks; no TOML library)."""
    lines = []
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value) if isinstance(value, str) else int(value)}")
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Daemon(harness.Daemon):
    """The tests' daemon harness (tests/harness.py), with a config.toml and its log in the data dir."""

    def __init__(self, home: Path, *, config: dict[str, Any] | None = None, args: Sequence[str] = ()) -> None:
        home.mkdir(parents=True, exist_ok=True)
        if config is not None:
            write_config(home, config)
        super().__init__(home, free_port(), tuple(args), log_path=home / "bench-daemon.log")


def run_loadgen(
    port: int, token: str | None, clients: int, seconds: float, warmup: float, recipient: str = ""
) -> dict[str, Any]:
    """bench/_loadgen.py in a process of its own against 127.0.0.1:`port`: its JSON result (rate,
    latencies, errors, its own CPU seconds). `recipient`: every send to that one inbox."""
    out = subprocess.run(
        [
            *(PYTHON, str(REPO / "bench" / "_loadgen.py"), "--port", str(port), "--clients", str(clients)),
            *("--seconds", str(seconds), "--warmup", str(warmup)),
            *(("--recipient", recipient) if recipient else ()),
        ],
        env=clean_env(CLAUDE_MAILBOX_TOKEN=token or ""),
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# --- a keep-alive HTTP client (the benchmark's side, never the product's) -----------------------


class KeepAlive:
    """One persistent HTTP/1.1 connection to the daemon."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.auth = harness.auth_headers_for(port)  # the token of the daemon this bench started there

    def request(
        self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        body = None if payload is None else json.dumps(payload).encode()
        all_headers = {**self.auth, **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=body, headers=all_headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def send(self, sender: str, to: str, body: str) -> dict[str, Any]:
        status, data = self.request("POST", "/v1/send", {"to": to, "body": body}, {"X-Mailbox": sender})
        if status != 201:
            raise RuntimeError(f"send answered {status}: {data[:200]!r}")
        return json.loads(data)

    def check(self, name: str) -> list[dict[str, Any]]:
        status, data = self.request("POST", f"/v1/check-inbox?name={name}", None, {"X-Mailbox": name})
        if status != 200:
            raise RuntimeError(f"check-inbox answered {status}: {data[:200]!r}")
        return list(json.loads(data)["messages"])

    def close(self) -> None:
        self.conn.close()


# --- statistics and output ----------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {
        "n": float(len(samples)),
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "min": min(samples) if samples else float("nan"),
        "max": max(samples) if samples else float("nan"),
    }


def ms(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    value = seconds * 1000
    return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        first, *rest = row
        return "  ".join([first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)])

    print(f"-- {title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    print(flush=True)


def latency_rows(named: Sequence[tuple[str, Sequence[float]]]) -> list[list[str]]:
    """Rows of `name, n, p50, p90, p99, max` in milliseconds."""
    rows = []
    for name, samples in named:
        s = summary(samples)
        rows.append([name, str(int(s["n"])), ms(s["p50"]), ms(s["p90"]), ms(s["p99"]), ms(s["max"])])
    return rows


LATENCY_HEADER = ("", "n", "p50 ms", "p90 ms", "p99 ms", "max ms")


def wait_until(predicate: Any, timeout: float, interval: float = 0.002) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
