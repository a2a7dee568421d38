"""Hook benchmark (issue 3): the UserPromptSubmit hook end to end, launched exactly as hooks/hooks.json
launches it (`sh -c <command>` with the hook's stdin JSON and Claude Code's hook environment),
against `python -I -c pass` on the same interpreter binary in the same run. Also SessionStart.

Interpreters:
- managed venv: $CLAUDE_PLUGIN_DATA/venv/bin/python is a symlink to the real interpreter binary
  (the realpath of .venv/bin/python), which is what hooks/run prefers;
- fallback: no managed venv, so hooks/run takes `python3` from PATH. On this machine that is a
  pyenv shim (a bash script that runs `pyenv exec`), shown separately with its own floor.

    .venv/bin/python bench/hook.py            # the full run (about 2 minutes)
    .venv/bin/python bench/hook.py --quick    # a smoke run (about 15 s)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    BENCH_CONFIG,
    LATENCY_HEADER,
    PYTHON,
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
)

TARGET_RATIO = 3.0
GOAL_RATIO = 2.0
SESSION_ID = "5e55104b-0000-4000-8000-00000000be4c"
PENDING = 10
VENV_PYTHON = PYTHON  # .venv/bin/python: a symlink chain to REAL_PYTHON


def hook_commands() -> dict[str, str]:
    """The command line of each hook event, read from the plugin's hooks/hooks.json."""
    spec = json.loads((REPO / "hooks" / "hooks.json").read_text(encoding="utf-8"))
    return {event: entries[0]["hooks"][0]["command"] for event, entries in spec["hooks"].items()}


def hook_input(event: str, **extra: str) -> bytes:
    data = {
        "session_id": SESSION_ID,
        "transcript_path": f"/tmp/claude/{SESSION_ID}.jsonl",
        "cwd": str(REPO),
        "hook_event_name": event,
        "permission_mode": "default",
        **extra,
    }
    return json.dumps(data).encode()


@dataclass
class Case:
    name: str
    argv: list[str]
    env: dict[str, str]
    stdin: bytes = b""
    before: Callable[[], None] | None = None  # untimed preparation (refill the inbox)
    check: Callable[[int, bytes, bytes], None] | None = None
    samples: list[float] = field(default_factory=list)

    def run(self) -> None:
        if self.before is not None:
            self.before()
        began = time.perf_counter()
        process = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = process.communicate(self.stdin)
        elapsed = time.perf_counter() - began
        if self.check is not None:
            self.check(process.returncode, out, err)
        elif process.returncode != 0:
            raise RuntimeError(f"{self.name}: exit {process.returncode}: {err[:300]!r}")
        self.samples.append(elapsed)


def main() -> int:
    args = parse_args(__doc__ or "")
    banner("claude-mailbox hook benchmark (issue 3)", args)
    trials = 30 if args.quick else 300
    commands = hook_commands()
    shim = shutil.which("python3", path=clean_env().get("PATH"))

    with temp_dir("mailbox-bench-hook-") as root:
        daemon = Daemon(root / "home", config=BENCH_CONFIG).start()
        try:
            managed = root / "plugin-data"
            (managed / "venv" / "bin").mkdir(parents=True)
            (managed / "venv" / "bin" / "python").symlink_to(REAL_PYTHON)
            no_venv = root / "plugin-data-empty"
            no_venv.mkdir()

            base = clean_env(
                daemon.home,  # the hook finds the daemon through <data dir>/daemon.url, as in real use
                CLAUDE_PLUGIN_ROOT=str(REPO),
                CLAUDE_PROJECT_DIR=str(REPO),
                CLAUDE_CODE_SESSION_ID=SESSION_ID,
                CLAUDE_PID=str(os.getpid()),  # Claude Code 2.1.330 sets it; the hook then skips the /proc walk
            )
            env_managed = {**base, "CLAUDE_PLUGIN_DATA": str(managed)}
            env_fallback = {**base, "CLAUDE_PLUGIN_DATA": str(no_venv)}

            def sh(event: str) -> list[str]:
                return ["sh", "-c", commands[event]]

            # Register the session once (as Claude Code's SessionStart would).
            start = subprocess.run(
                sh("SessionStart"),
                env=env_managed,
                input=hook_input("SessionStart", source="startup"),
                capture_output=True,
                check=True,
            )
            context = json.loads(start.stdout)["hookSpecificOutput"]["additionalContext"]
            mailbox = context.split("mailbox name is ", 1)[1].split(".", 1)[0].split()[0]

            conn = KeepAlive(daemon.port)
            counter = [0]

            def refill() -> None:
                counter[0] += 1
                for i in range(PENDING):
                    conn.send("peer-bench", mailbox, f"trial {counter[0]} message {i}: " + "status update " * 8)

            def expect_empty(code: int, out: bytes, err: bytes) -> None:
                if code != 0 or out.strip() or err.strip():
                    raise RuntimeError(f"empty inbox: exit {code}, stdout {out[:200]!r}, stderr {err[:200]!r}")

            def expect_mail(code: int, out: bytes, err: bytes) -> None:
                text = json.loads(out)["hookSpecificOutput"]["additionalContext"] if code == 0 and out else ""
                delivered = sum(f"trial {counter[0]} message {i}:" in text for i in range(PENDING))
                if delivered != PENDING:
                    raise RuntimeError(f"expected {PENDING} messages, got {delivered}: exit {code}, {err[:200]!r}")

            def expect_context(code: int, out: bytes, err: bytes) -> None:
                if code != 0 or mailbox.encode() not in out:
                    raise RuntimeError(f"SessionStart: exit {code}, stdout {out[:200]!r}, stderr {err[:200]!r}")

            prompt = hook_input("UserPromptSubmit", prompt="please carry on with the refactor")
            # The floor: the same binary started as `python -I -c pass` from this repo's venv (its
            # site-packages holds only our own .pth files). The same binary outside any venv also runs
            # the base installation's site-packages .pth files, which on this machine import certifi.
            floor = Case("floor: python -I -c pass (venv python)", [VENV_PYTHON, "-I", "-c", "pass"], base)
            real_venv = root / "plugin-data-real-venv"
            real_venv.mkdir()
            (real_venv / "venv").symlink_to(Path(VENV_PYTHON).parent.parent)
            plain_bin = root / "plain-bin"
            plain_bin.mkdir()
            (plain_bin / "python3").symlink_to(REAL_PYTHON)
            env_plain_path = {**env_fallback, "PATH": f"{plain_bin}:/usr/bin:/bin"}
            cases = [
                floor,
                Case("python -I -S -c pass", [REAL_PYTHON, "-I", "-S", "-c", "pass"], base),
                Case("python -I -c pass, base install (site .pth)", [REAL_PYTHON, "-I", "-c", "pass"], base),
                Case(
                    "UserPromptSubmit, managed venv, empty inbox",
                    sh("UserPromptSubmit"),
                    env_managed,
                    prompt,
                    check=expect_empty,
                ),
                Case(
                    f"UserPromptSubmit, managed venv, {PENDING} pending",
                    sh("UserPromptSubmit"),
                    env_managed,
                    prompt,
                    before=refill,
                    check=expect_mail,
                ),
                Case(
                    "UserPromptSubmit, managed = a real venv, empty",
                    sh("UserPromptSubmit"),
                    {**base, "CLAUDE_PLUGIN_DATA": str(real_venv)},
                    prompt,
                    check=expect_empty,
                ),
                Case(
                    "UserPromptSubmit, python3 on a plain PATH, empty",
                    sh("UserPromptSubmit"),
                    env_plain_path,
                    prompt,
                    check=expect_empty,
                ),
                Case(
                    "SessionStart, managed venv",
                    sh("SessionStart"),
                    env_managed,
                    hook_input("SessionStart", source="startup"),
                    check=expect_context,
                ),
            ]
            shim_cases = []
            if shim:
                shim_cases = [
                    Case(f"floor via PATH: {shim} -I -c pass", [shim, "-I", "-c", "pass"], base),
                    Case(
                        "UserPromptSubmit, python3 fallback (PATH), empty inbox",
                        sh("UserPromptSubmit"),
                        env_fallback,
                        prompt,
                        check=expect_empty,
                    ),
                    Case(
                        f"UserPromptSubmit, python3 fallback (PATH), {PENDING} pending",
                        sh("UserPromptSubmit"),
                        env_fallback,
                        prompt,
                        before=refill,
                        check=expect_mail,
                    ),
                ]
            everything = cases + shim_cases
            for case in everything:  # warm the page cache and the daemon
                for _ in range(3):
                    case.run()
                case.samples.clear()
            rng = random.Random(1)
            for _ in range(trials):
                order = everything[:]
                rng.shuffle(order)  # no case always runs right after another
                for case in order:
                    case.run()
            conn.close()
        finally:
            daemon.stop()

    floor_p50 = percentile(floor.samples, 50)
    rows = latency_rows([(case.name, case.samples) for case in cases])
    for case, row in zip(cases, rows, strict=True):
        ratio = percentile(case.samples, 50) / floor_p50
        row.append(f"{ratio:.2f}x")
        if case.name.startswith("UserPromptSubmit, managed venv"):
            row += [f"<= {TARGET_RATIO:g}x (goal {GOAL_RATIO:g}x)", verdict(ratio <= TARGET_RATIO)]
        else:
            row += ["", ""]
    table(
        f"Hooks launched as hooks.json does (sh -c '{commands['UserPromptSubmit']}'), {trials} trials each, "
        f"shuffled; interpreter {REAL_PYTHON}",
        [*LATENCY_HEADER, "p50 / floor", "target", ""],
        rows,
    )
    if shim_cases:
        shim_floor = percentile(shim_cases[0].samples, 50)
        rows = latency_rows([(case.name, case.samples) for case in shim_cases])
        for case, row in zip(shim_cases, rows, strict=True):
            row += [
                f"{percentile(case.samples, 50) / floor_p50:.2f}x",
                f"{percentile(case.samples, 50) / shim_floor:.2f}x",
            ]
        table(
            f"Fallback without a managed venv: python3 from PATH ({shim}); the same {trials} shuffled trials",
            [*LATENCY_HEADER, "p50 / real floor", "p50 / PATH floor"],
            rows,
        )
        plain = next(case for case in cases if "plain PATH" in case.name)
        shim_cost = percentile(shim_cases[1].samples, 50) - percentile(plain.samples, 50)
        print(f"   the {shim} shim adds {1000 * shim_cost:.1f} ms (p50) to every hook on this machine\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
