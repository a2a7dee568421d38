"""An interactive session's exit is not held up by its waiting Stop hook (issue 22's open question),
end to end with the real Claude Code CLI in a pseudo-terminal and a fake Messages API.

An idle interactive session that does not collaborate keeps its asyncRewake Stop hook waiting at the
daemon for urgent mail. At /exit Claude Code SIGTERMs the hook's process group and waits until the
group is empty (about 1.4 s at most). The hook's Python must therefore be the process Claude Code
started (hooks.json `exec`s it): a grandchild under `sh -c` is orphaned when the shell dies first,
and stays in the group as a zombie until an init reaps it, which a container's PID 1 may do late or
never. The session runs under a parent that never reaps orphans, so that case is what is tested.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from claude_code import ClaudeTty
from fake_anthropic import FakeAnthropic
from harness import REPO, Daemon
from pushkit import wait_until

pytestmark = [
    pytest.mark.claude_code,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the unreaping parent is a Linux child subreaper"),
]

# Claude Code's own grace for an async hook's process group is about 1.4 s; an exit with nothing
# waiting takes 0.2 to 0.3 s here.
HELD_UP = 1.0


def test_an_interactive_exit_is_not_held_up_by_the_waiting_stop_hook(
    claude_bin: Path, daemon: Daemon, tmp_path: Path
) -> None:
    client = daemon.client()
    env = {"CLAUDE_MAILBOX_HOME": str(daemon.home), "CLAUDE_MAILBOX_URL": daemon.url}
    with (
        FakeAnthropic() as api,
        ClaudeTty(
            fake_api_url=api.url,
            home=tmp_path / "home",
            plugin_dir=REPO,
            env_extra=env,
            binary=claude_bin,
            unreaped_orphans=True,
        ) as tty,
    ):

        def alive() -> list[str]:
            return [b["name"] for b in client.list()["mailboxes"] if b["state"] == "alive"]

        wait_until(lambda: bool(alive()), timeout=60, what="the session's SessionStart")
        assert tty.wait_for("❯", timeout=60), tty.screen()[-2000:]
        (name,) = alive()
        tty.type("hello")
        assert api.wait_for(lambda seen: any(r.is_agent_turn for r in seen), timeout=60), tty.screen()[-2000:]

        def held() -> bool:
            return bool(client.call("GET", f"/v1/collaborate?name={name}")["stopWaiter"])

        wait_until(held, timeout=30, what="the Stop hook waiting at the daemon")
        seconds = tty.exit("/exit")
        assert tty.returncode == 0, tty.screen()[-2000:]
    assert seconds < HELD_UP, f"/exit took {seconds:.2f}s with the Stop hook waiting\n{tty.debug_log()[-3000:]}"
    assert [b["state"] for b in client.list()["mailboxes"] if b["name"] == name] == ["ended"]
    wait_until(lambda: not held(), timeout=10, what="the daemon to let the waiter go")
