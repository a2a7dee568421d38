"""Imported at interpreter start by a daemon whose PYTHONPATH puts this directory first (bench/mcp_fastpath.py):
every McpEndpoint it builds has its fast path off, so all of /mcp goes through the SDK's session
manager. A benchmark-only switch: the product has none."""

from claude_mailbox import mcp_http

_init = mcp_http.McpEndpoint.__init__


def _sdk_only(self: mcp_http.McpEndpoint, *args: object, **kwargs: object) -> None:
    _init(self, *args, **kwargs)  # type: ignore[arg-type]
    self.fast_path = False


mcp_http.McpEndpoint.__init__ = _sdk_only  # type: ignore[method-assign]
