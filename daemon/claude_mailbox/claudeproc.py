"""The Claude Code process a hook runs under: its pid, and whether it is a one-shot `claude -p`.

On the hook's fast path (every relay sends the pid): stdlib `os` only; `subprocess` is imported on
systems without /proc (macOS), and only there.
"""

from __future__ import annotations

import os

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ash", "busybox", "fish"})


def claude_pid() -> int:
    """Claude Code's pid: $CLAUDE_PID (2.1.330+), else the nearest ancestor that is not a shell
    (Claude Code runs hooks as `sh -c <command>`, and our launcher is a shell script too)."""
    env = os.environ.get("CLAUDE_PID", "")
    if env.isdigit():
        return int(env)
    pid = os.getppid()
    for _ in range(4):
        name, parent = _process_name_and_parent(pid)
        if name not in SHELLS or parent <= 1:
            return pid
        pid = parent
    return pid


def _process_name_and_parent(pid: int) -> tuple[str, int]:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        return name, int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return _process_name_and_parent_ps(pid)


def _process_name_and_parent_ps(pid: int) -> tuple[str, int]:
    """Systems without /proc (macOS): ask ps. Slower, but only there."""
    import subprocess

    try:
        out = subprocess.run(
            ["ps", "-o", "ppid=,comm=", "-p", str(pid)], capture_output=True, text=True, timeout=2
        ).stdout.split(None, 1)
        return os.path.basename(out[1].strip()).lstrip("-"), int(out[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return "", 0


def one_shot_print_run(pid: int) -> bool:
    """Is Claude Code a plain `claude -p` run? It exits after this turn: it holds its exit for up to
    30 s for a pending async hook, and an asyncRewake exit 2 then starts no turn (the mail would be
    consumed and never shown). `-p` with `--input-format stream-json` is a live session: it wakes."""
    if os.environ.get("CLAUDE_CODE_SESSION_ATTENDED") != "0":
        return False  # interactive
    args = _command_line(pid)
    if "--" in args:
        args = args[: args.index("--")]
    live = "stream-json" in args and ("--input-format" in args or "--input-format=stream-json" in args)
    return ("-p" in args or "--print" in args) and not live


def _command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode("utf-8", "replace").split("\0")
    except OSError:
        pass
    import subprocess  # no /proc (macOS)

    try:
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, timeout=2)
        return out.stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []
