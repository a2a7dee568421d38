"""Between-tool-calls benchmark (issue 22): the PostToolUse hook runs after every tool call, so its
cost is paid all the time.

1. The hook with an empty inbox, launched exactly as hooks/hooks.json launches it (`sh -c <command>`,
   the PostToolUse stdin JSON, Claude Code's hook environment, the managed venv's interpreter),
   against `python -I -S -c pass` on the same binary in the same run (target <= 2x), interleaved.
   The UserPromptSubmit hook (empty inbox) is shown beside it: the two must cost the same.
2. The `http` hook variant: what Claude Code's http hook would do instead of a process, one POST
   to /v1/hooks/post-tool on a fresh connection, in milliseconds (client side, stdlib).
3. Send -> text in the model's next request, busy session: the real Claude Code (tests/claude_code.py,
   a fake Messages API, offline) runs Bash tool calls of 0.5 s each while a peer sends at random
   moments; each latency is from the send to the fake API receiving the request that carries it.

    .venv/bin/python bench/between_tools.py            # about 2 minutes
    .venv/bin/python bench/between_tools.py --quick    # a smoke run
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import (
    BENCH_CONFIG,
    LATENCY_HEADER,
    REAL_PYTHON,
    REPO,
    Daemon,
    banner,
    clean_env,
    latency_rows,
    parse_args,
    percentile,
    table,
    temp_dir,
    verdict,
)

GOAL_RATIO = 2.0
SESSION_ID = "5e55104b-0000-4000-8000-0000000b0522"
TOOL_SECONDS = 0.5


def hook_command(event: str) -> str:
    spec = json.loads((REPO / "hooks" / "hooks.json").read_text(encoding="utf-8"))
    return str(spec["hooks"][event][0]["hooks"][0]["command"])


def hook_input(event: str) -> bytes:
    data: dict[str, object] = {
        "session_id": SESSION_ID,
        "transcript_path": f"/tmp/claude/{SESSION_ID}.jsonl",
        "cwd": str(REPO),
        "hook_event_name": event,
        "permission_mode": "default",
    }
    if event == "PostToolUse":
        data.update(
            tool_name="Bash",
            tool_input={"command": "ls", "description": "list"},
            tool_response={"stdout": "a\nb\n", "stderr": "", "interrupted": False, "isImage": False},
            tool_use_id="toolu_01BENCH",
        )
    else:
        data["prompt"] = "carry on"
    return json.dumps(data).encode()


def timed(argv: list[str], env: dict[str, str], stdin: bytes) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, input=stdin, capture_output=True, check=False)
    elapsed = time.perf_counter() - began
    if done.returncode != 0 or done.stdout.strip() or done.stderr.strip():
        raise RuntimeError(f"{argv[-1][:60]}: exit {done.returncode}, {done.stdout[:200]!r} {done.stderr[:200]!r}")
    return elapsed


def hook_costs(daemon: Daemon, root: Path, trials: int) -> dict[str, list[float]]:
    managed = root / "plugin-data"
    (managed / "venv" / "bin").mkdir(parents=True)
    (managed / "venv" / "bin" / "python").symlink_to(REAL_PYTHON)
    env = clean_env(
        daemon.home,
        CLAUDE_PLUGIN_ROOT=str(REPO),
        CLAUDE_PLUGIN_DATA=str(managed),
        CLAUDE_PROJECT_DIR=str(REPO),
        CLAUDE_CODE_SESSION_ID=SESSION_ID,
        CLAUDE_PID=str(os.getpid()),
    )
    start = subprocess.run(
        ["sh", "-c", hook_command("SessionStart")],
        env=env,
        input=hook_input("SessionStart"),
        capture_output=True,
        check=True,
    )
    assert b"mailbox name is" in start.stdout, start
    cases = {
        "floor: python -I -S -c pass": (lambda: timed([REAL_PYTHON, "-I", "-S", "-c", "pass"], env, b"")),
        "PostToolUse, empty inbox": (
            lambda: timed(["sh", "-c", hook_command("PostToolUse")], env, hook_input("PostToolUse"))
        ),
        "UserPromptSubmit, empty inbox": (
            lambda: timed(["sh", "-c", hook_command("UserPromptSubmit")], env, hook_input("UserPromptSubmit"))
        ),
        "PostToolUse, off for the session (env)": (
            lambda: timed(
                ["sh", "-c", hook_command("PostToolUse")],
                {**env, "CLAUDE_MAILBOX_BETWEEN_TOOLS": "0"},
                hook_input("PostToolUse"),
            )
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for name in cases:  # warm-up
        cases[name]()
    order = [name for name in cases for _ in range(trials)]
    random.shuffle(order)
    for name in order:
        samples[name].append(cases[name]())
    return samples


def http_hook_cost(daemon: Daemon, trials: int) -> list[float]:
    sys.path.insert(0, str(REPO / "daemon"))
    from claude_mailbox import auth
    from claude_mailbox.httpclient import http_request

    os.environ["CLAUDE_MAILBOX_HOME"] = str(daemon.home)
    headers = {"Content-Type": "application/json", **auth.auth_header()}
    data = hook_input("PostToolUse")
    samples = []
    for _ in range(trials):
        began = time.perf_counter()
        reply = http_request(daemon.url, "POST", "/v1/hooks/post-tool", body=data, headers=headers, timeout=5)
        samples.append(time.perf_counter() - began)
        if reply.status != 200 or reply.body:
            raise RuntimeError(f"http hook: {reply.status} {reply.body[:200]!r}")
    return samples


def busy_latency(daemon: Daemon, root: Path, messages: int) -> tuple[list[float], str]:
    from claude_code import claude_binary, run_claude
    from fake_anthropic import FakeAnthropic, RecordedRequest, text, tool_use

    binary = claude_binary()
    if binary is None:
        return [], "the Claude Code CLI is not installed (scripts/install-tools.sh)"
    calls = messages * 2 + 4
    script = [tool_use("Bash", {"command": f"sleep {TOOL_SECONDS}", "description": "work"}) for _ in range(calls)]
    sent: dict[str, float] = {}
    client = daemon.client()
    before = {b["name"] for b in client.list()["mailboxes"]}  # the hook benchmark's own session

    def peer(api: FakeAnthropic) -> None:
        if not api.wait_for(lambda rs: sum(r.is_agent_turn for r in rs) >= 2, timeout=90):
            return
        (name,) = [b["name"] for b in client.list()["mailboxes"] if b["state"] == "alive" and b["name"] not in before]
        for index in range(messages):
            time.sleep(random.uniform(0.4, 1.2))
            body = f"BENCH_BUSY_{index:03d}"
            sent[body] = time.monotonic()
            client.send("peer", name, body)

    with FakeAnthropic([*script, text("done")]) as api:
        thread = threading.Thread(target=peer, args=(api,), daemon=True)
        thread.start()
        result = run_claude(
            "work",
            fake_api_url=api.url,
            plugin_dir=REPO,
            home=root / "cc-home",
            env_extra={"CLAUDE_MAILBOX_HOME": str(daemon.home), "CLAUDE_MAILBOX_URL": daemon.url},
            allowed_tools=["Bash"],
            timeout=300,
            binary=binary,
        )
        thread.join(10)
        requests: list[RecordedRequest] = api.agent_requests()
    if result.returncode != 0:
        return [], f"claude exited {result.returncode}: {result.stderr[-300:]}"
    if not sent:
        return [], "the peer sent nothing (see the thread's error above)"
    latencies = []
    for body, at in sent.items():
        quoted = json.dumps(body)
        arrived = next((r.time for r in requests if quoted in r.text()), None)
        if arrived is None:
            return [], f"{body} never reached the model"
        latencies.append(arrived - at)
    return latencies, ""


def main() -> int:
    args = parse_args(__doc__ or "")
    banner("claude-mailbox between-tool-calls benchmark (issue 22)", args)
    trials = 30 if args.quick else 200
    with temp_dir("mailbox-bench-busy-") as root:
        daemon = Daemon(root / "home", config=BENCH_CONFIG).start()
        try:
            samples = hook_costs(daemon, root, trials)
            floor = percentile(samples["floor: python -I -S -c pass"], 50)
            rows = latency_rows(list(samples.items()))
            for row, name in zip(rows, samples, strict=True):
                ratio = percentile(samples[name], 50) / floor
                row.append(f"{ratio:.2f}x")
                target = name == "PostToolUse, empty inbox"
                row += [f"<= {GOAL_RATIO:g}x", verdict(ratio <= GOAL_RATIO)] if target else ["", ""]
            table(
                f"hook process, {trials} trials each, shuffled (sh -c <hooks.json command>)",
                [*LATENCY_HEADER, "vs floor", "target", ""],
                rows,
            )
            http = http_hook_cost(daemon, trials)
            table(
                "http hook variant: one POST /v1/hooks/post-tool, fresh connection",
                LATENCY_HEADER,
                latency_rows([("POST, empty inbox", http)]),
            )
            latencies, problem = busy_latency(daemon, root, 6 if args.quick else 20)
            if problem:
                print(f"\nsend -> model, busy session: not measured: {problem}")
            else:
                table(
                    f"send -> text in the model's next request, busy session (Bash calls of {TOOL_SECONDS:g} s)",
                    LATENCY_HEADER,
                    latency_rows([("send -> next request", latencies)]),
                )
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
