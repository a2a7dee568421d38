"""claude-mailbox: a local mailbox that lets parallel Claude Code sessions message each other.

Kept import-free on purpose: the hooks import this package on every prompt.
"""

__version__ = "0.3.0"
