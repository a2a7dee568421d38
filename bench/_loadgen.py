"""REST send load generator, run as its own process so that it does not share the daemon's event loop
(it does share the machine's cores). N keep-alive connections, each sending one request at a time
over raw asyncio streams (cheaper per request than an HTTP client library, so more of the CPU is
left to the daemon). Prints one JSON line: completed sends in the window, rate, latencies.

    python bench/_loadgen.py --port P --clients 16 --seconds 5 --warmup 1

The daemon's token comes from $CLAUDE_MAILBOX_TOKEN (none: a daemon with auth = "none").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

RECIPIENTS = 256  # spread over many inboxes, like real traffic (each pending inbox stays small)


async def client(
    index: int, port: int, start: float, stop: float, latencies: list[float], errors: list[str], recipient: str = ""
) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sender = f"load-{os.getpid()}-{index}"
    token = os.environ.get("CLAUDE_MAILBOX_TOKEN", "")
    head = (
        f"POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Mailbox: {sender}\r\nContent-Type: application/json\r\n"
        + (f"Authorization: Bearer {token}\r\n" if token else "")
    )
    done = counted = 0
    try:
        while True:
            began = time.perf_counter()
            if began >= stop:
                break
            to = recipient or f"inbox-{(index * 7919 + done) % RECIPIENTS}"
            body = json.dumps({"to": to, "body": f"load message {done}"})
            data = body.encode()
            writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
            response_head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in response_head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            ended = time.perf_counter()
            done += 1
            if response_head[9:12] != b"201":
                if len(errors) < 5:
                    errors.append(response_head[:12].decode(errors="replace"))
                continue
            if start <= began and ended <= stop:
                counted += 1
                latencies.append(ended - began)
    finally:
        writer.close()
    return done, counted


async def main(port: int, clients: int, seconds: float, warmup: float, recipient: str = "") -> dict[str, object]:
    now = time.perf_counter()
    start, stop = now + warmup, now + warmup + seconds
    latencies: list[float] = []
    errors: list[str] = []
    cpu_before = os.times()
    results = await asyncio.gather(
        *(client(i, port, start, stop, latencies, errors, recipient) for i in range(clients))
    )
    cpu_after = os.times()
    counted = sum(c for _, c in results)
    return {
        "clients": clients,
        "sent": sum(d for d, _ in results),
        "counted": counted,
        "rate": counted / seconds,
        "latencies": latencies,
        "errors": errors,
        "cpu": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--recipient", default="", help="send everything to this one inbox (issue 10)")
    ns = parser.parse_args()
    print(json.dumps(asyncio.run(main(ns.port, ns.clients, ns.seconds, ns.warmup, ns.recipient))))
