"""Where claude-mailbox keeps its files, as Path values. Every other module resolves paths through
here; the data dir itself and the names the stdlib-only hook path reads are decided in locate.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from claude_mailbox import locate
from claude_mailbox.locate import DEFAULT_BIND, DEFAULT_PORT, DEFAULT_URL

__all__ = ["DEFAULT_BIND", "DEFAULT_PORT", "DEFAULT_URL"]


def data_dir() -> Path:
    """locate.data_dir() as a Path (the hook's path cannot pay for pathlib)."""
    return Path(locate.data_dir())


def url_file() -> Path:
    """The running daemon's address (written by serve, read by hooks and the CLI)."""
    return data_dir() / locate.URL_FILE


def config_path() -> Path:
    return data_dir() / locate.CONFIG_FILE


def legacy_config_path() -> Path:
    """The seed product's JSON config, still read for compatibility."""
    return data_dir() / locate.LEGACY_CONFIG_FILE


def default_db_path() -> Path:
    return data_dir() / "mailbox.db"


def pid_file() -> Path:
    return data_dir() / "daemon.pid"


def log_file() -> Path:
    return data_dir() / "daemon.log"


def start_lock_file() -> Path:
    """Held while one process starts the daemon, so two sessions never start two."""
    return data_dir() / "start.lock"


def managed_venv_dir() -> Path:
    """The virtual environment doctor installs the daemon into; survives plugin updates."""
    plugin_data = os.environ.get("CLAUDE_PLUGIN_DATA")
    return Path(plugin_data) / "venv" if plugin_data else data_dir() / "venv"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
