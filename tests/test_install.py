"""The README's install command, run exactly as written with the distribution's own python3 (on
Debian and Ubuntu an "externally managed" interpreter that refuses `pip install .`, PEP 668) in a
fresh HOME; the daemon it starts must answer /health."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from claude_mailbox import __version__
from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import MailboxError
from harness import REPO, free_port

SYSTEM_PYTHON = Path("/usr/bin/python3")


def readme_install_command() -> str:
    """The one-line command of the README's Quick start ("Without the plugin ...")."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Quick start") : readme.index("## Development")]
    (command,) = re.findall(r"^(python3 -m venv .*)$", section, re.M)
    return command


@pytest.mark.slow
def test_the_readme_install_command_works_with_the_distributions_python3(tmp_path: Path) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} does not exist here")
    home = tmp_path / "home"
    data = home / ".claude-mailbox"
    data.mkdir(parents=True)
    port = free_port()
    (data / "config.toml").write_text(f"port = {port}\n")  # the README's own way to move the port
    bin_dir = tmp_path / "bin"  # `python3` on PATH is the distribution's, not a pyenv or venv one
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(SYSTEM_PYTHON)
    keep = {"PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "LANG"}
    env = {key: value for key, value in os.environ.items() if key in keep}
    env.update(HOME=str(home), PATH=f"{bin_dir}:/usr/bin:/bin")
    process = subprocess.Popen(
        ["/bin/sh", "-c", readme_install_command()],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        client = MailboxClient(f"http://127.0.0.1:{port}", timeout=1.0)
        deadline = time.monotonic() + 600  # pip builds the package and installs its dependencies
        health = None
        while health is None and time.monotonic() < deadline and process.poll() is None:
            try:
                health = client.health()
            except MailboxError:
                time.sleep(0.25)
        assert health is not None, f"exit {process.poll()}: {process.communicate()[0] if process.poll() else ''}"
        client.token = (data / "token").read_text().strip()  # the database and port need it (issue 20.8)
        health = client.health(detailed=True)
        assert health["version"] == __version__ and health["port"] == port, health
        assert (data / "venv" / "bin" / "claude-mailbox").exists()
        assert Path(str(health["dbPath"])).parent == data
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert "externally-managed-environment" not in output, output
