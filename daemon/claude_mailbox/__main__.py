"""`python -m claude_mailbox ...` is the same as the `claude-mailbox` command."""

import sys

from claude_mailbox.cli import main

sys.exit(main())
