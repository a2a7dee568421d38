"""Daemon start-up (issue 11.1): how long after `claude-mailbox serve` is spawned its port accepts a
connection, and how long until the first request is answered. A client that connects early (Claude
Code's MCP connection while the SessionStart hook starts the daemon) must never be refused: with
listen-first it waits in the backlog and is answered when the app is ready.

    .venv/bin/python bench/startup.py            # 15 starts
    .venv/bin/python bench/startup.py --quick    # 4 starts

Each trial: spawn the daemon (fresh data dir, free port), try to connect every 2 ms; the first
connection that succeeds sends GET /health at once, a second one an MCP initialize, and both wait for
their answers. Printed: medians and maxima of spawn -> listening, -> first /health answer, -> first
MCP answer, and how many connection attempts were refused before the port listened (each of those
would be a lost MCP connect).
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import time

from _common import PYTHON, banner, clean_env, free_port, ms, parse_args, table, temp_dir
from claude_mailbox import auth

CONNECT_INTERVAL = 0.002


MCP_INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"},
        },
    }
).encode()


def one_start() -> tuple[float, float, float, int]:
    """Seconds from spawn to: listening, the first /health answer, the first MCP answer; and the
    connection attempts refused before the port listened."""
    with temp_dir("bench-startup-") as home:
        token = auth.ensure_token(str(home))  # the daemon finds it at start; MCP needs it (issue 12.1)
        port = free_port()
        started = time.monotonic()
        process = subprocess.Popen(
            [PYTHON, "-m", "claude_mailbox", "serve", "--port", str(port)],
            env=clean_env(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        refused = 0
        try:
            while True:
                try:
                    health = socket.create_connection(("127.0.0.1", port), timeout=30)
                    break
                except ConnectionRefusedError:
                    refused += 1
                if process.poll() is not None:
                    raise RuntimeError(f"serve exited with {process.returncode}")
                time.sleep(CONNECT_INTERVAL)
            listening = time.monotonic() - started
            mcp = socket.create_connection(("127.0.0.1", port), timeout=30)
            host = f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n"
            health.sendall(f"GET /health HTTP/1.1\r\n{host}\r\n".encode())
            mcp.sendall(
                (
                    f"POST /mcp HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                    f"Accept: application/json, text/event-stream\r\nContent-Length: {len(MCP_INITIALIZE)}\r\n\r\n"
                ).encode()
                + MCP_INITIALIZE
            )
            answered = _first_bytes(health, started)
            mcp_answered = _first_bytes(mcp, started)
        finally:
            process.terminate()
            process.wait(30)
        return listening, answered, mcp_answered, refused


def _first_bytes(sock: socket.socket, started: float) -> float:
    """Wait for the answer's status line (a 200) on `sock`; seconds since `started`. The two answers
    are read in the order they are expected (health first), so the MCP figure is not late by it."""
    with sock:
        first = sock.recv(64)
        at = time.monotonic() - started
    if not first.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer {first!r}")
    return at


def main() -> None:
    args = parse_args(__doc__ or "", [(("--runs",), {"type": int, "default": 0, "help": "number of starts"})])
    runs = args.runs or (4 if args.quick else 15)
    banner(f"daemon start-up, {runs} starts", args)
    one_start()  # warm the file cache (imports), not counted
    results = [one_start() for _ in range(runs)]
    listening, answered, mcp_answered, refused = zip(*results, strict=True)
    table(
        "spawn -> ...",
        ["figure", "median", "max"],
        [
            ["port listening (connect accepted)", ms(statistics.median(listening)), ms(max(listening))],
            ["first request answered (GET /health)", ms(statistics.median(answered)), ms(max(answered))],
            ["first MCP request answered (initialize)", ms(statistics.median(mcp_answered)), ms(max(mcp_answered))],
            ["connects refused before listening", f"{statistics.median(refused):.0f}", f"{max(refused)}"],
        ],
    )


if __name__ == "__main__":
    main()
