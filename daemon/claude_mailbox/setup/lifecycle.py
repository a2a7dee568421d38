"""Keeping the daemon up and at the plugin's version: the SessionStart hook's slow path, `doctor`
and `update` share this.

The managed virtual environment (`paths.managed_venv_dir()`) holds the daemon installed from the
plugin's own source tree, so the daemon's version is the plugin's version by construction. When a
plugin update brings a newer version, the first SessionStart that sees the older daemon reinstalls
that environment from the new plugin root and restarts the daemon (gracefully: SIGTERM, so the
daemon finishes its requests and every stored message stays stored), then says so in one line.
An older plugin still loaded in an older session never downgrades a newer daemon.

Imported only on slow paths (daemon down, version mismatch, doctor), with only the stdlib and our
light modules: it must run before the managed environment exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from claude_mailbox import __version__, paths
from claude_mailbox.client import MailboxClient
from claude_mailbox.errors import MailboxError
from claude_mailbox.locate import daemon_url
from claude_mailbox.setup import autostart

START_WAIT_SECONDS = 2.0
RESTART_WAIT_SECONDS = 15.0
HOOK_BUDGET_SECONDS = 50.0  # the SessionStart hook's timeout is 60 s (hooks/hooks.json)
PIP_TIMEOUT_SECONDS = 600.0  # doctor and `update`: a first install downloads the dependencies
PROBE_TIMEOUT_SECONDS = 60.0
UPDATE_LOCK = "update.lock"
# What the daemon imports; the probe checks them in the managed environment.
DAEMON_MODULES = ("aiohttp", "mcp", "apsw", "psutil", "tomli_w")
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
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


# --- the plugin and its versions -------------------------------------------------------------------


def plugin_root() -> Path | None:
    """The plugin's source tree: ${CLAUDE_PLUGIN_ROOT}, else the checkout this code runs from."""
    for candidate in (os.environ.get("CLAUDE_PLUGIN_ROOT"), Path(__file__).resolve().parents[3]):
        if candidate and is_source_tree(Path(candidate)):
            return Path(candidate).resolve()
    return None


def is_source_tree(root: Path) -> bool:
    return (root / "pyproject.toml").is_file() and (root / "daemon" / "claude_mailbox" / "__init__.py").is_file()


def source_version(root: Path) -> str | None:
    """The version a `pip install <root>` installs (the package's single source of truth)."""
    try:
        text = (root / "daemon" / "claude_mailbox" / "__init__.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = _VERSION_LINE.search(text)
    return match.group(1) if match else None


def version_key(version: str) -> tuple[int, ...]:
    numbers = [int(part) for part in re.findall(r"\d+", version.split("+", 1)[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def should_update(running: str, target: str) -> bool:
    """True when the daemon at `running` must move to `target`. Never downgrade: an older plugin,
    still loaded in an older session, meets a daemon that a newer session already updated."""
    return running != target and version_key(running) <= version_key(target)


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


# --- the managed environment -----------------------------------------------------------------------


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
        return {"error": _last_line(result.stderr) or f"{python} exited with {result.returncode}"}
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


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# --- the running daemon ----------------------------------------------------------------------------


def daemon_version(url: str, timeout: float = 1.0) -> str | None:
    try:
        return str(MailboxClient(url, timeout=timeout).health().get("version"))
    except MailboxError:
        return None


def start_url() -> str:
    """Where a daemon that is down must be started: $CLAUDE_MAILBOX_URL, else config.toml's
    bind/port, else the default. (The hooks' fast path reads daemon.url instead, which a daemon
    that stopped cleanly has removed and one that crashed may have left stale.)"""
    if os.environ.get("CLAUDE_MAILBOX_URL"):
        return os.environ["CLAUDE_MAILBOX_URL"]
    try:
        from claude_mailbox import config

        return config.load().url.replace("://0.0.0.0:", "://127.0.0.1:")
    except (MailboxError, ImportError):
        return paths.DEFAULT_URL


def can_run_daemon_here() -> bool:
    """Whether this interpreter could run the daemon itself (no managed environment yet)."""
    import importlib.util

    return all(importlib.util.find_spec(module) is not None for module in DAEMON_MODULES)


def restart_daemon(url: str, python: Path, wait: float = RESTART_WAIT_SECONDS) -> bool:
    """Stop the daemon (SIGTERM: in-flight requests finish, the database closes cleanly) and start
    it with `python` through its service manager. False when the daemon is not ours to restart
    (no autostart entry, no pid file: someone runs `claude-mailbox serve` by hand)."""
    if not autostart.stop():
        return False
    autostart.restart(python, url, wait)
    return True


# --- what SessionStart calls -----------------------------------------------------------------------


def bring_up(running_version: str | None) -> str | None:
    """Start the daemon if it is down, or update it if it is older than this plugin.

    Returns one line for the session's announcement, or None. Never raises: whatever goes wrong,
    the session starts, the old daemon keeps running, and the note says what to do.
    """
    try:
        return _bring_up(running_version, time.monotonic() + HOOK_BUDGET_SECONDS)
    except Exception as exc:  # a hook must never break the session
        return (
            f"claude-mailbox: could not check the mailbox daemon ({_describe(exc)}); run /claude-mailbox:mailbox-doctor"
        )


def _bring_up(running_version: str | None, deadline: float) -> str | None:
    root = plugin_root()
    if root is None:  # installed without a plugin tree: nothing to update from
        if running_version is None:
            autostart.ensure_running(start_url(), None, wait=START_WAIT_SECONDS)
        return None
    return bring_up_to(root, running_version, deadline=deadline, wait=START_WAIT_SECONDS)


def bring_up_to(
    root: Path, running_version: str | None, *, deadline: float | None = None, wait: float = RESTART_WAIT_SECONDS
) -> str | None:
    """Make the daemon run the version of the plugin at `root`: start it if it is down (updating
    its environment first if that is behind), update and restart it if it is older."""
    deadline = deadline or time.monotonic() + PIP_TIMEOUT_SECONDS
    target = source_version(root)
    if target is None:
        return f"claude-mailbox: {root} is not a claude-mailbox plugin tree"
    if running_version is not None:
        return sync(root, daemon_url(), deadline=deadline, running_version=running_version)
    url = start_url()
    note = None
    venv = paths.managed_venv_dir()
    have = installed_version(venv)
    if have and should_update(have, target):
        with _update_lock(deadline) as held:
            if held and installed_version(venv) == have:
                note = _reinstall(root, have, target, deadline)
    reinstalled = have is not None and installed_version(venv) != have
    if reinstalled:  # a first start after an install compiles and imports more: give it longer
        wait = max(wait, min(RESTART_WAIT_SECONDS, deadline - time.monotonic()))
    if not autostart.ensure_running(url, None, wait=wait):
        return note
    if note is None and reinstalled:
        note = f"mailbox daemon updated {have} -> {target}"
    return note


def sync(
    root: Path, url: str | None = None, *, deadline: float | None = None, running_version: str | None = None
) -> str | None:
    """Bring a running daemon to the version of the plugin at `root`: reinstall the managed
    environment from `root`, restart the daemon. Returns the one-line note (None: nothing to do)."""
    url = url or daemon_url()
    deadline = deadline or time.monotonic() + PIP_TIMEOUT_SECONDS
    target = source_version(root)
    if target is None:
        return f"claude-mailbox: {root} is not a claude-mailbox plugin tree"
    with _update_lock(deadline) as held:
        current = daemon_version(url) or running_version
        if current is None:
            return None  # down: the caller starts it
        if not held or not should_update(current, target):
            return None  # another session updated it meanwhile, or it is newer than this plugin
        venv = paths.managed_venv_dir()
        python = paths.venv_python(venv)
        if python.exists():
            if installed_version(venv) != target:
                note = _reinstall(root, current, target, deadline)
                if note is not None:
                    return note
        elif can_run_daemon_here():
            python = Path(sys.executable)  # no managed environment: the daemon runs from this source tree
        else:
            return (
                f"mailbox daemon {current} is older than the plugin ({target}) and there is no managed "
                "environment to update; run /claude-mailbox:mailbox-doctor"
            )
        if not restart_daemon(url, python, wait=max(2.0, min(RESTART_WAIT_SECONDS, deadline - time.monotonic()))):
            return (
                f"mailbox daemon {current} was not started by claude-mailbox's autostart, so it was left "
                f"running; restart it to run {target} (or run /claude-mailbox:mailbox-doctor)"
            )
        now = daemon_version(url, timeout=2.0)
        if now == target:
            return f"mailbox daemon updated {current} -> {target}"
        if now is None:
            return f"mailbox daemon {target} did not come back after the update; run /claude-mailbox:mailbox-doctor"
        return f"mailbox daemon is still {now} after the update to {target}; run /claude-mailbox:mailbox-doctor"


def _reinstall(root: Path, current: str, target: str, deadline: float) -> str | None:
    """Reinstall and verify the managed environment; None on success, else the failure note."""
    python = managed_python()
    try:
        pip_install(python, root, timeout=max(1.0, deadline - time.monotonic() - 5.0))
        problem = probe_problem(probe(python, timeout=max(5.0, deadline - time.monotonic())), target)
        if problem:
            raise MailboxError(f"the reinstalled environment {problem}")
    except MailboxError as exc:
        return (
            f"mailbox daemon {current} kept running: updating it to {target} failed ({exc.message}); "
            "run /claude-mailbox:mailbox-doctor"
        )
    return None


@contextlib.contextmanager
def _update_lock(deadline: float) -> Iterator[bool]:
    """One updater at a time; the others wait (until `deadline`) and then find the work done."""
    lock_path = paths.data_dir() / UPDATE_LOCK
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        while True:
            try:
                _lock(handle)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                _unlock(handle)


def _lock(handle: object) -> None:
    fileno = handle.fileno()  # type: ignore[attr-defined]
    if os.name == "nt":
        import msvcrt

        handle.seek(0)  # type: ignore[attr-defined]
        msvcrt.locking(fileno, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]
    else:
        import fcntl

        fcntl.flock(fileno, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(handle: object) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)  # type: ignore[attr-defined]
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined,unused-ignore]
    # POSIX: closing the file releases the flock.


def _tail(output: object) -> str:
    last = _last_line(str(output))
    return f" ({last})" if last else ""


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, MailboxError) else f"{type(exc).__name__}: {exc}"


# --- `claude-mailbox update` (the mailbox-update slash command) ------------------------------------


def newest_plugin_root(root: Path | None = None) -> Path | None:
    """The newest installed copy of this plugin. `claude plugin update` unpacks a new version next
    to the running one (~/.claude/plugins/cache/<marketplace>/<plugin>/<version>/) while this
    session keeps the old ${CLAUDE_PLUGIN_ROOT} until /reload-plugins."""
    root = root or plugin_root()
    if root is None:
        return None
    candidates = [root]
    if root.parent.parent.parent.name == "cache":  # inside Claude Code's plugin cache: look at siblings
        with contextlib.suppress(OSError):
            candidates += [child for child in root.parent.iterdir() if child.is_dir() and is_source_tree(child)]
    versioned = [(version_key(source_version(c) or "0"), c) for c in candidates]
    return max(versioned, key=lambda pair: pair[0])[1]


PLUGIN_NAME = "claude-mailbox"
PULL_TIMEOUT_SECONDS = 180.0


def claude_command() -> str | None:
    """The `claude` CLI: on PATH, else the binary of the Claude Code running this command."""
    import shutil

    found = shutil.which("claude") or os.environ.get("CLAUDE_CODE_EXECPATH")
    return found if found and os.access(found, os.X_OK) else None


def pull_plugin(root: Path | None = None) -> list[dict[str, object]]:
    """`claude plugin marketplace update <marketplace>` then `claude plugin update
    <plugin>@<marketplace>`, where the `claude` command is available. One entry per command:
    {command, ok, output}."""
    root = root or plugin_root()
    in_cache = root is not None and root.parent.parent.parent.name == "cache"
    marketplace = root.parent.parent.name if in_cache and root else PLUGIN_NAME
    claude = claude_command()
    commands = [["plugin", "marketplace", "update", marketplace], ["plugin", "update", f"{PLUGIN_NAME}@{marketplace}"]]
    results: list[dict[str, object]] = []
    for args in commands:
        shown = "claude " + " ".join(args)
        if claude is None:
            results.append({"command": shown, "ok": False, "output": "the `claude` command is not on PATH"})
            continue
        try:
            done = subprocess.run(
                [claude, *args],
                capture_output=True,
                text=True,
                timeout=PULL_TIMEOUT_SECONDS,
                stdin=subprocess.DEVNULL,
            )
            output = (done.stdout + done.stderr).strip()
            results.append({"command": shown, "ok": done.returncode == 0, "output": output[-2000:]})
        except (OSError, subprocess.TimeoutExpired) as exc:
            results.append({"command": shown, "ok": False, "output": str(exc)})
        if not results[-1]["ok"]:
            break  # no plugin update from a marketplace that did not refresh
    return results


def update(root: Path | None = None, url: str | None = None, *, pull: bool = False) -> dict[str, object]:
    """`pull`: first fetch the newest plugin version (pull_plugin). Then reinstall the managed
    environment from the newest installed plugin copy and restart the daemon, or start it if it
    is down. Returns {ok, message, before, after, pluginVersion, pluginRoot, url, pulled}."""
    pulled = pull_plugin(root) if pull else []
    lines = [f"{entry['command']}: {'ok' if entry['ok'] else 'failed'}" + _tail(entry["output"]) for entry in pulled]
    root = root or newest_plugin_root()
    if root is None or not is_source_tree(root):
        where = root or "this installation"
        message = f"no claude-mailbox plugin tree at {where}"
        return {"ok": False, "message": "\n".join([*lines, message]), "pulled": pulled, "pluginRoot": str(root)}
    if not _has_module("psutil"):  # plain python3 (hooks/run before the managed environment exists)
        result = _update_in_managed_environment(root, url)
        result["message"] = "\n".join([*lines, str(result["message"])])
        return {**result, "pulled": pulled}
    if url is None:
        url = daemon_url()
        if daemon_version(url) is None:
            url = start_url()  # down: it is started where config.toml says
    target = source_version(root) or "unknown"
    before = daemon_version(url)
    note = bring_up_to(root, before)
    after = daemon_version(url, timeout=2.0)
    ok = after is not None and not should_update(after, target)
    if note:
        message = note
    elif after is None:
        message = f"the mailbox daemon is not running at {url}; run /claude-mailbox:mailbox-doctor"
    elif after == target:
        message = f"mailbox daemon {after} already runs the plugin's version ({root})"
    else:
        message = f"mailbox daemon {after} is newer than the plugin at {root} ({target}); nothing to do"
    return {
        "ok": ok,
        "message": "\n".join([*lines, message]),
        "pulled": pulled,
        "before": before,
        "after": after,
        "pluginVersion": target,
        "pluginRoot": str(root),
        "url": url,
    }


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _update_in_managed_environment(root: Path, url: str | None) -> dict[str, object]:
    """Run `update --root ROOT --json` with the managed environment's interpreter (this one cannot
    drive the service manager) and return its result."""
    python = managed_python()
    if not python.exists():
        return {"ok": False, "message": "claude-mailbox is not set up here yet: run /claude-mailbox:mailbox-doctor"}
    argv = ["update", "--json", "--root", str(root), *(["--url", url] if url else [])]
    code = (
        f"import sys\nsys.path.insert(0, {str(root / 'daemon')!r})\n"
        f"from claude_mailbox.cli import main\nsys.exit(main({argv!r}))\n"
    )
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", code], capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS + 60
        )
        result = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return {"ok": False, "message": f"could not run the update in {python}: {_describe(exc)}"}
    return result if isinstance(result, dict) else {"ok": False, "message": "unexpected answer"}


# --- the announcement ------------------------------------------------------------------------------


def with_note(hook_output: str, note: str | None) -> str:
    """Prefix the SessionStart context with a note (e.g. "mailbox daemon updated 1.2.0 -> 1.3.0")."""
    if not note:
        return hook_output
    if not hook_output:
        return note
    try:
        data = json.loads(hook_output)
        output = data["hookSpecificOutput"]
        output["additionalContext"] = f"{note}\n{output['additionalContext']}"
        return json.dumps(data)
    except (ValueError, KeyError, TypeError):
        return f"{note}\n{hook_output}"


__all__ = ["__version__", "bring_up", "plugin_root", "source_version", "sync", "with_note"]
