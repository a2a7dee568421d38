"""Issue 19.12: what MCP's fast path (McpEndpoint._answer_directly -> the SDK's serve_one) saves.

Two daemons at once, the same build: one as shipped, one with the fast path off (bench/_sdk_only
puts a sitecustomize on its PYTHONPATH that sets `McpEndpoint.fast_path = False`). Each round runs,
against both in alternating order, `tools/call send`:

- as hand-written JSON-RPC POSTs on one keep-alive connection (the server's share), in the
  handshake era (MCP-Protocol-Version 2025-06-18, Claude Code's) and in 2026-07-28 (envelope and
  routing headers);
- through the SDK's own client, `mcp.Client`, mode "legacy" and "auto" (-> 2026-07-28).

Per figure: the daemon's CPU per call (psutil user+system of the daemon process over the calls)
and the p50 latency, each the median over rounds, and the ratio fast / SDK-only.

    .venv/bin/python bench/mcp_fastpath.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from _common import BENCH_CONFIG, REPO, Daemon, KeepAlive, banner, parse_args, percentile, table, temp_dir

BODY = "benchmark message: " + "x" * 80
HANDSHAKE = "2025-06-18"
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench-mcp", "version": "1"},
}
SENDER = {"X-Mailbox": "mcp-bench"}
# (CPU seconds per call, p50 seconds) of one measurement
Figure = tuple[float, float]


def raw_calls(daemon: Daemon, era: str, calls: int, warmup: int) -> Figure:
    conn = KeepAlive(daemon.port)
    headers = {**SENDER, "Accept": "application/json, text/event-stream"}
    if era == "modern":
        headers |= {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "send"}
    else:
        headers["MCP-Protocol-Version"] = HANDSHAKE
    samples: list[float] = []
    cpu_before = 0.0
    for i in range(warmup + calls):
        if i == warmup:
            cpu_before = daemon.cpu_seconds()
        params: dict[str, Any] = {"name": "send", "arguments": {"to": "mcp-peer", "body": f"{BODY} {i}"}}
        if era == "modern":
            params["_meta"] = ENVELOPE
        began = time.perf_counter()
        status, data = conn.request(
            "POST", "/mcp", {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}, headers
        )
        elapsed = time.perf_counter() - began
        if status != 200 or b'"isError":false' not in data:
            raise RuntimeError(f"raw tools/call ({era}) answered {status}: {data[:300]!r}")
        if i >= warmup:
            samples.append(elapsed)
    cpu = daemon.cpu_seconds() - cpu_before
    conn.close()
    return cpu / calls, percentile(samples, 50)


async def _client_calls(daemon: Daemon, mode: str, calls: int, warmup: int) -> Figure:
    from daemon import _mcp_latencies  # bench/daemon.py: the SDK client loop

    cpu_before: list[float] = []
    headers = {**SENDER, **daemon.headers}

    def warmed() -> None:  # daemon CPU is counted from the end of the warm-up
        cpu_before.append(daemon.cpu_seconds())

    samples = await _mcp_latencies(daemon.url, headers, mode, calls, warmup, warmed)
    return (daemon.cpu_seconds() - cpu_before[0]) / calls, percentile(samples, 50)


def client_calls(daemon: Daemon, mode: str, calls: int, warmup: int) -> Figure:
    return asyncio.run(_client_calls(daemon, mode, calls, warmup))


def main() -> int:
    args = parse_args(__doc__ or "")
    banner("bench/mcp_fastpath.py: the MCP fast path, with and without, same run", args)
    rounds, raw_n, client_n, warmup = (2, 100, 50, 20) if args.quick else (7, 500, 300, 50)
    cases: dict[str, Callable[[Daemon], Figure]] = {
        "raw POST, handshake era (2025-06-18)": lambda d: raw_calls(d, "handshake", raw_n, warmup),
        "raw POST, 2026-07-28": lambda d: raw_calls(d, "modern", raw_n, warmup),
        'mcp.Client mode="legacy" (Claude Code\'s era)': lambda d: client_calls(d, "legacy", client_n, warmup),
        'mcp.Client mode="auto" (-> 2026-07-28)': lambda d: client_calls(d, "auto", client_n, warmup),
    }
    results: dict[tuple[str, str], list[Figure]] = {}
    with temp_dir("mailbox-bench-mcp-fast-") as fast_home, temp_dir("mailbox-bench-mcp-sdk-") as sdk_home:
        fast = Daemon(fast_home, config=BENCH_CONFIG)
        sdk = Daemon(sdk_home, config=BENCH_CONFIG)
        sdk.env_extra = {"PYTHONPATH": f"{REPO / 'bench' / '_sdk_only'}:{REPO / 'daemon'}"}
        with fast, sdk:
            for round_no in range(rounds):
                order = [("fast", fast), ("sdk", sdk)] if round_no % 2 == 0 else [("sdk", sdk), ("fast", fast)]
                for case, run in cases.items():
                    for label, daemon in order:
                        results.setdefault((case, label), []).append(run(daemon))
            sdk_log = sdk.log()
    if "Traceback" in sdk_log:
        raise RuntimeError(f"the SDK-only daemon logged an error: {sdk_log[-2000:]}")

    def median(case: str, label: str, index: int) -> float:
        return statistics.median(figure[index] for figure in results[(case, label)])

    rows = []
    for case in cases:
        cpu_fast, cpu_sdk = median(case, "fast", 0), median(case, "sdk", 0)
        p50_fast, p50_sdk = median(case, "fast", 1), median(case, "sdk", 1)
        rows.append(
            [
                case,
                f"{cpu_fast * 1e3:.3f}",
                f"{cpu_sdk * 1e3:.3f}",
                f"{cpu_fast / cpu_sdk:.2f}",
                f"{p50_fast * 1e3:.3f}",
                f"{p50_sdk * 1e3:.3f}",
                f"{p50_fast / p50_sdk:.2f}",
                " ".join(
                    f"{f[0] * 1e3:.2f}/{s[0] * 1e3:.2f}"
                    for f, s in zip(results[(case, "fast")], results[(case, "sdk")], strict=True)
                ),
            ]
        )
    table(
        f"tools/call send: fast path vs SDK manager only ({rounds} interleaved rounds; raw {raw_n}, "
        f"client {client_n} calls per round after {warmup} warm-up; medians over rounds)",
        [
            "",
            "CPU ms/call fast",
            "CPU ms/call SDK",
            "ratio",
            "p50 ms fast",
            "p50 ms SDK",
            "ratio",
            "CPU per round fast/SDK",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
