"""Entry point of every claude-mailbox hook: puts the plugin's own source on the path and hands the
run to its job by the first argument: `headers` (the MCP headersHelper, mcpheaders.py), `cli` (the
CLI launcher, launcher.py), else a hook event (the relay, hookrelay.py).

Run as `python -I -S hook.py EVENT` by hooks/run. Each job's `main` exits the process itself.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "daemon"))
job = sys.argv[1] if len(sys.argv) > 1 else ""
try:
    if job == "headers":
        from claude_mailbox.mcpheaders import main
    elif job == "cli":
        from claude_mailbox.launcher import main
    else:
        from claude_mailbox.hookrelay import main
except BaseException:  # a broken install must not break the Claude Code session
    os._exit(0)
main(sys.argv[1:])
