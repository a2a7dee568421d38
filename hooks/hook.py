"""Entry point of every claude-mailbox hook: puts the plugin's own source on the path and relays.

Run as `python -I -S hook.py EVENT` by hooks/run; see claude_mailbox/hookrelay.py.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "daemon"))
try:
    from claude_mailbox.hookrelay import main
except BaseException:  # a broken install must not break the Claude Code session
    os._exit(0)
main(sys.argv[1:])
