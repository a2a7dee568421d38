"""Push delivery benchmark (issue 5): from `send` returning (the 201 read on a keep-alive connection)
to the waiting PROCESS having the mail (its output line is readable on the pipe) and to that process
having exited. Waiters measured:

- `claude-mailbox watch --block --name N` (the real CLI, the pip console script);
- the Stop hook relay (`hooks/run stop` launched as hooks.json launches it, collaboration mode on);
- baseline: a long-poll POST /v1/watch on a raw socket in this process (the daemon's share alone).

Each trial starts a fresh waiter, waits until the daemon counts it among its waiters (GET /health
`waiters`; from a daemon that does not report it: until the process holds a connection to the
daemon) plus 50 ms (so it is parked in the long-poll), then sends.

    .venv/bin/python bench/watch.py            # the full run (200 trials per waiter, about 50 s)
    .venv/bin/python bench/watch.py --quick    # a smoke run (30 trials, about 10 s)
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time

import psutil

from _common import (
    BENCH_CONFIG,
    CLI,
    LATENCY_HEADER,
    REAL_PYTHON,
    REPO,
    Daemon,
    KeepAlive,
    banner,
    clean_env,
    latency_rows,
    parse_args,
    percentile,
    table,
    temp_dir,
    verdict,
    wait_until,
)

TARGET_P50 = 0.005
SETTLE = 0.05  # after the daemon counts the waiter: time for its first check of the inbox to finish
SESSION_ID = "3a7c4e11-0000-4000-8000-00000000a7c4"


def connected(pid: int, port: int) -> bool:
    """Does the process (or a child of it) hold an established TCP connection to the daemon?"""
    try:
        process = psutil.Process(pid)
        for proc in [process, *process.children(recursive=True)]:
            for conn in proc.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED:
                    return True
    except psutil.Error:
        pass
    return False


def waiter_count(conn: KeepAlive) -> int | None:
    """How many long-polls the daemon holds (GET /health's `waiters`; None if it does not say)."""
    status, data = conn.request("GET", "/health")
    count = json.loads(data).get("waiters") if status == 200 else None
    return count if isinstance(count, int) else None


def wait_parked(process: subprocess.Popen[bytes], daemon: Daemon, conn: KeepAlive) -> None:
    """Until the waiter process is parked in the daemon's long-poll: the daemon counts it among its
    waiters (or, from a daemon that does not report that, it holds a connection), plus SETTLE."""
    if waiter_count(conn) is not None:
        parked = wait_until(lambda: (waiter_count(conn) or 0) >= 1, 30.0, 0.002)
    else:
        parked = wait_until(lambda: connected(process.pid, daemon.port), 30.0, 0.002)
    if not parked:
        raise RuntimeError(f"the waiter never reached the daemon (exit {process.poll()})")
    time.sleep(SETTLE)


def wait_readable(fd: int, timeout: float = 30.0) -> float:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    if not poller.poll(timeout * 1000):
        raise RuntimeError("the waiter produced no output in time")
    return time.perf_counter()


def process_trial(
    daemon: Daemon,
    conn: KeepAlive,
    argv: list[str],
    env: dict[str, str],
    stdin: bytes,
    mailbox: str,
    trial: int,
    stream: str,
    expect_exit: int,
) -> tuple[float, float]:
    """(send -> output readable, send -> process exited) for one freshly started waiter."""
    process = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    try:
        process.stdin.write(stdin)
        process.stdin.close()
        wait_parked(process, daemon, conn)
        body = f"wake-up {trial}"
        conn.send("bench-sender", mailbox, body)
        sent = time.perf_counter()
        pipe = process.stdout if stream == "stdout" else process.stderr
        readable = wait_readable(pipe.fileno())
        code = process.wait(30)
        exited = time.perf_counter()
        out, err = process.stdout.read(), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = (out if stream == "stdout" else err).decode(errors="replace")
    if code != expect_exit or body not in text:
        raise RuntimeError(f"trial {trial}: exit {code}, stdout {out[:200]!r}, stderr {err[:200]!r}")
    return readable - sent, exited - sent


def longpoll_trial(daemon: Daemon, conn: KeepAlive, mailbox: str, trial: int) -> float:
    """Send -> a raw-socket long-poll in this process has the whole response."""
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(
            f"POST /v1/watch?name={mailbox}&timeout=30 HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n"
            f"X-Mailbox: {mailbox}\r\nAuthorization: Bearer {daemon.token}\r\nConnection: close\r\n\r\n".encode()
        )
        time.sleep(SETTLE)
        body = f"wake-up {trial}"
        conn.send("bench-sender", mailbox, body)
        sent = time.perf_counter()
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        received = time.perf_counter()
    if body.encode() not in data:
        raise RuntimeError(f"long-poll trial {trial}: {data[:300]!r}")
    return received - sent


def main() -> int:
    args = parse_args(__doc__ or "")
    banner("claude-mailbox push delivery benchmark (issue 5)", args)
    trials = 30 if args.quick else 200
    hooks = json.loads((REPO / "hooks" / "hooks.json").read_text(encoding="utf-8"))["hooks"]
    stop_command = hooks["Stop"][0]["hooks"][0]["command"]
    start_command = hooks["SessionStart"][0]["hooks"][0]["command"]

    with temp_dir("mailbox-bench-watch-") as root:
        daemon = Daemon(root / "home", config=BENCH_CONFIG).start()
        try:
            conn = KeepAlive(daemon.port)
            env = clean_env(daemon.home)  # the CLI and the hook find the daemon through daemon.url

            # The Stop hook waiter needs a registered session in collaboration mode.
            plugin_data = root / "plugin-data"
            (plugin_data / "venv" / "bin").mkdir(parents=True)
            (plugin_data / "venv" / "bin" / "python").symlink_to(REAL_PYTHON)
            hook_env = {
                **env,
                "CLAUDE_PLUGIN_ROOT": str(REPO),
                "CLAUDE_PLUGIN_DATA": str(plugin_data),
                "CLAUDE_PROJECT_DIR": str(REPO),
                "CLAUDE_CODE_SESSION_ID": SESSION_ID,
                "CLAUDE_PID": str(os.getpid()),
            }
            base_input = {"session_id": SESSION_ID, "transcript_path": "/tmp/t.jsonl", "cwd": str(REPO)}
            start = subprocess.run(
                ["sh", "-c", start_command],
                env=hook_env,
                input=json.dumps({**base_input, "hook_event_name": "SessionStart", "source": "startup"}).encode(),
                capture_output=True,
                check=True,
            )
            context = json.loads(start.stdout)["hookSpecificOutput"]["additionalContext"]
            session_mailbox = context.split("mailbox name is ", 1)[1].split(".", 1)[0].split()[0]
            status, data = conn.request("POST", "/v1/collaborate", {"name": session_mailbox, "on": True})
            if status != 200 or not json.loads(data)["collaborating"]:
                raise RuntimeError(f"collaborate on: {status} {data!r}")
            stop_input = json.dumps({**base_input, "hook_event_name": "Stop", "stop_hook_active": False}).encode()

            longpoll, cli_mail, cli_exit, stop_mail, stop_exit = [], [], [], [], []
            for trial in range(-3, trials):  # three warm-up trials of each
                lp = longpoll_trial(daemon, conn, "poller", trial)
                mail, gone = process_trial(
                    daemon,
                    conn,
                    [CLI, "watch", "--block", "--name", "watcher", "--timeout", "60"],
                    env,
                    b"",
                    "watcher",
                    trial,
                    "stdout",
                    0,
                )
                hook_mail, hook_gone = process_trial(
                    daemon, conn, ["sh", "-c", stop_command], hook_env, stop_input, session_mailbox, trial, "stderr", 2
                )
                if trial >= 0:
                    longpoll.append(lp)
                    cli_mail.append(mail)
                    cli_exit.append(gone)
                    stop_mail.append(hook_mail)
                    stop_exit.append(hook_gone)
            conn.close()
        finally:
            daemon.stop()

    rows = latency_rows(
        [
            ("long-poll POST /v1/watch in this process: response read", longpoll),
            ("`claude-mailbox watch --block`: mail line readable", cli_mail),
            ("`claude-mailbox watch --block`: process exited", cli_exit),
            ("Stop hook (hooks/run stop): mail readable on stderr", stop_mail),
            ("Stop hook (hooks/run stop): process exited (code 2)", stop_exit),
        ]
    )
    for row, target in zip(rows, ("", "mail", "", "mail", ""), strict=True):
        if target:
            p50 = percentile(cli_mail if row is rows[1] else stop_mail, 50)
            row += [f"p50 <= {TARGET_P50 * 1000:g}", verdict(p50 <= TARGET_P50)]
        else:
            row += ["", ""]
    table(
        f"From send's 201 to the waiter ({trials} trials each, a fresh waiter process per trial)",
        [*LATENCY_HEADER, "target ms", ""],
        rows,
    )
    print(f"   CLI: {CLI}; hook interpreter: {REAL_PYTHON} (managed venv symlink)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
