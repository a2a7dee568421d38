"""`hooks/run cli ARGS`: the claude-mailbox CLI from the plugin's own source, for plugin commands and
skills on machines where `claude-mailbox` is not on PATH.

Importable by any python3 that hooks/run finds (stdlib `os` and `sys` only, until the CLI itself),
so that a Python too old for the CLI gets one line saying what to install.
"""

from __future__ import annotations

import os
import sys


def run_cli(args: list[str]) -> int:
    """The CLI's exit code; its output is its own."""
    try:
        import site

        site.main()
        from claude_mailbox.cli import main as cli_main

        return cli_main(args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # one line, not a traceback, and a failing exit code
        if sys.version_info < (3, 11):  # noqa: UP036 - hooks/run may find any python3: say what to install
            version = ".".join(str(part) for part in sys.version_info[:3])
            print(
                f"claude-mailbox: Python {version} ({sys.executable}) is too old; install Python 3.11 or newer "
                "(https://www.python.org/downloads/), then run /claude-mailbox:mailbox-doctor",
                file=sys.stderr,
            )
            return 1
        print(f"claude-mailbox: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        import contextlib

        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


def main(argv: list[str]) -> None:
    """`hook.py cli ARGS`: exit with the CLI's code (0 when even that failed: like a hook)."""
    try:
        code = run_cli(argv[1:])
    except BaseException:
        code = 0
    os._exit(code)
