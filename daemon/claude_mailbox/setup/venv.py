"""The managed virtual environment: the daemon installed from the plugin's own source tree, so its
version is the plugin's version by construction. Created and checked by `doctor`, reinstalled by
the version sync (lifecycle), and the place where the CLI runs when plain python3 cannot drive the
service manager (`run_cli`).

Stdlib only: this runs before the environment exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from claude_mailbox import paths
from claude_mailbox.errors import MailboxError

PIP_TIMEOUT_SECONDS = 600.0  # doctor and `update`: a first install downloads the dependencies
PROBE_TIMEOUT_SECONDS = 60.0
# What the daemon imports; the probe checks them in the managed environment.
DAEMON_MODULES = ("aiohttp", "mcp", "apsw", "psutil", "tomli_w")
_PROBE = (
    "import json, importlib.util as u, claude_mailbox as c\n"
    "missing = [m for m in {modules!r} if u.find_spec(m) is None]\n"
    "error = None\n"
    "if not missing:\n"
    "    try:\n"
    "        import claude_mailbox.server\n"
    "    except Exception as exc:\n"
    "        error = f'{{type(exc).__name__}}: {{exc}}'\n"
    "print(json.dumps({{'version': c.__version__, 'file': c.__file__, 'missing': missing, 'error': error}}))\n"
)


def installed_version(venv: Path) -> str | None:
    """The claude-mailbox version pip recorded in the environment (no interpreter started)."""
    patterns = ("lib/python3*/site-packages/claude_mailbox-*.dist-info", "Lib/site-packages/claude_mailbox-*.dist-info")
    for pattern in patterns:
        for info in sorted(venv.glob(pattern)):
            return info.name[len("claude_mailbox-") : -len(".dist-info")]
    return None


def build_requirements(root: Path) -> list[str]:
    """[build-system] requires: installed into the managed environment too, so that a later update
    can build the new version without an index (`--no-build-isolation`)."""
    try:
        import tomllib

        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        requires = data.get("build-system", {}).get("requires", [])
    except (ImportError, OSError, ValueError):
        return []
    return [str(item) for item in requires if isinstance(item, str)]


def managed_python() -> Path:
    return paths.venv_python(paths.managed_venv_dir())


def probe(python: Path, timeout: float = PROBE_TIMEOUT_SECONDS) -> dict[str, object]:
    """Ask the environment's own interpreter what it has: claude_mailbox's version and file, the
    daemon's dependencies that are missing, and whether the daemon's modules import.
    `-I`: no PYTHONPATH, no user site, no current directory, so only the environment answers."""
    code = _PROBE.format(modules=DAEMON_MODULES)
    try:
        result = subprocess.run(
            [str(python), "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=str(python.parent),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"cannot run {python}: {exc}"}
    if result.returncode != 0:
        return {"error": last_line(result.stderr) or f"{python} exited with {result.returncode}"}
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unexpected answer from {python}: {result.stdout.strip()[:200]}"}
    return data if isinstance(data, dict) else {"error": "unexpected answer"}


def probe_problem(report: dict[str, object], version: str | None) -> str | None:
    """Why a probe report is not a usable daemon at `version` (None: it is)."""
    if report.get("error"):
        return str(report["error"])
    if report.get("missing"):
        return "missing " + ", ".join(str(m) for m in report["missing"])  # type: ignore[attr-defined]
    if version and report.get("version") != version:
        return f"has claude-mailbox {report.get('version')}, not {version}"
    return None


def create_venv(base_python: Path, venv: Path, timeout: float = 300.0) -> None:
    """A self-contained environment (no system site-packages), with pip."""
    _run_checked([str(base_python), "-m", "venv", "--clear", str(venv)], timeout, f"creating {venv}")


def pip_install(python: Path, root: Path, timeout: float = PIP_TIMEOUT_SECONDS, *, first: bool = False) -> None:
    """Install the plugin's source tree into the environment of `python`.

    Offline first: when the environment has the build backend, build with it (no isolated build
    environment to download) and resolve the dependencies against what is installed (no index),
    which is all an update needs unless the new version added a dependency. Otherwise, or if that
    fails, a normal install, which may download. pip resolves before it uninstalls anything, so a
    failed attempt leaves the installed version in place.
    """
    base = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet"]
    attempts: list[list[str]] = []
    if not first and _has_build_backend(python, root):
        attempts.append([*base, "--no-build-isolation", "--no-index", str(root)])
    attempts.append([*base, *build_requirements(root), str(root)])
    deadline = time.monotonic() + timeout
    failure = ""
    for args in attempts:
        remaining = deadline - time.monotonic()
        if remaining <= 1:
            break
        try:
            _run_checked(args, remaining, f"pip install {root}")
            return
        except MailboxError as exc:
            failure = exc.message
    raise MailboxError(failure or f"pip install {root}: no time left")


def _has_build_backend(python: Path, root: Path) -> bool:
    names = [re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().replace("-", "_") for req in build_requirements(root)]
    if not names:
        return False
    venv = python.parent.parent
    found = list(venv.glob("lib/python3*/site-packages")) + list(venv.glob("Lib/site-packages"))
    return bool(found) and all(any((site / name).is_dir() for site in found) for name in names)


def _run_checked(args: Sequence[str], timeout: float, what: str) -> None:
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MailboxError(f"{what} took longer than {timeout:.0f} s") from None
    except OSError as exc:
        raise MailboxError(f"{what}: {exc}") from None
    if result.returncode != 0:
        raise MailboxError(f"{what} failed: {_error_summary(result.stderr or result.stdout)}")


def _error_summary(output: str) -> str:
    """pip's last error line, not its warnings (a mirror that lists nothing warns on every name)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def can_run_daemon_here() -> bool:
    """Whether this interpreter could run the daemon itself (no managed environment yet)."""
    import importlib.util

    return all(importlib.util.find_spec(module) is not None for module in DAEMON_MODULES)


def run_cli(
    root: Path, argv: Sequence[str], *, capture: bool, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `claude-mailbox ARGV` from the plugin tree at `root` with the managed environment's
    interpreter (`-I`: only that environment answers). `capture`: collect stdout/stderr instead of
    sharing this process's terminal (the doctor's hand-over asks its questions there). Raises OSError
    and subprocess.TimeoutExpired."""
    code = (
        f"import sys\nsys.path.insert(0, {str(root / 'daemon')!r})\n"
        f"from claude_mailbox.cli import main\nsys.exit(main({list(argv)!r}))\n"
    )
    return subprocess.run(
        [str(managed_python()), "-I", "-c", code], capture_output=capture, text=True, timeout=timeout, check=False
    )
