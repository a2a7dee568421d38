"""`claude-mailbox doctor`: check the set-up and, after asking, fix it. One line per check.

1. python     a usable Python >= 3.11 (with venv/ensurepip) to build the managed environment;
2. daemon     the daemon installed in the managed virtual environment from the plugin's own
              source tree, so its version is the plugin's version;
3. autostart  registered with the service manager, running and healthy on the configured port,
              at the plugin's version;
4. prefix     the optional base prefix of session mailbox names, in config.toml;
5. smoke      a self -> self message through the daemon: send, peek, check.

When the address names another machine (a remote daemon, README "Remote daemon"), nothing is installed
or started here: `remote` replaces steps 2-4 and checks that the daemon answers, that its certificate
is trusted and that it takes this machine's token; the smoke test follows.

Idempotent: a second run changes nothing and says so. Asks before each fix unless --yes; without a
terminal and without --yes it fixes nothing and says what --yes would do.

It runs first with whatever interpreter `hooks/run` found (python3), before any dependency is
installed: until the managed environment exists it imports only the stdlib and our light modules.
Steps 3-5 need psutil and tomli-w; when this interpreter lacks them, the doctor hands the rest of
the run to the managed environment's interpreter, which it has just built.
Kept importable on Python 3.9 so that it can say which Python to install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_mailbox import locate, paths
from claude_mailbox.client import MailboxClient, probe_health
from claude_mailbox.errors import MailboxError
from claude_mailbox.setup import lifecycle, venv

MIN_PYTHON = (3, 11)
PYTHON_NAMES = ("python3.14", "python3.13", "python3.12", "python3.11", "python3", "python")
INSTALL_PYTHON = (
    "install Python 3.11 or newer with venv support (macOS: `brew install python@3.12`; Debian/Ubuntu: "
    "`sudo apt install python3.12 python3.12-venv`; Fedora: `sudo dnf install python3.12`; Windows: "
    "`winget install Python.Python.3.12`; or https://www.python.org/downloads/), then run the doctor again"
)
STEPS = ("python", "daemon", "autostart", "prefix", "smoke")
REMOTE_STEPS = ("python", "remote", "smoke")
LABELS = {
    "python": "python",
    "daemon": "daemon",
    "autostart": "autostart",
    "prefix": "prefix",
    "smoke": "smoke test",
    "remote": "remote",
}
HANDOFF_MODULES = ("psutil", "tomli_w", "apsw")
START_WAIT_SECONDS = 15.0


@dataclass
class Check:
    id: str
    status: str  # ok | fixed | failed | skipped
    summary: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "summary": self.summary, "fix": self.fix}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Check:
        return cls(str(data["id"]), str(data["status"]), str(data["summary"]), data.get("fix"))


class Declined(Exception):
    """The user said no (or there is no one to ask and no --yes)."""


class Doctor:
    def __init__(
        self,
        *,
        yes: bool = False,
        as_json: bool = False,
        prefix: str | None = None,
        url: str | None = None,
        interactive: bool | None = None,
        ask: Callable[[str], str] = input,
    ) -> None:
        self.yes = yes
        self.as_json = as_json
        self.prefix = prefix
        self.url_override = url
        if interactive is None:  # --json is for machines: nobody reads a question there
            interactive = not as_json and sys.stdin is not None and sys.stdin.isatty()
        self.interactive = interactive
        self.ask = ask
        self.root = lifecycle.plugin_root()
        self.target = (lifecycle.source_version(self.root) if self.root else None) or lifecycle.__version__
        self.venv = paths.managed_venv_dir()
        self.base_python: Path | None = None
        self.own_install: Path | None = None  # no plugin tree: the daemon runs from this interpreter
        self.checks: list[Check] = []

    # --- running -------------------------------------------------------------------------------

    def run(self, prior: list[Check] | None = None) -> int:
        if prior:
            self.checks = list(prior)
        else:
            self._header()
        for step in self._steps()[len(self.checks) :]:
            if step == "autostart" and self._needs_handoff():
                return self._handoff()
            self._record(self._run_step(step))
        return self._finish()

    def _steps(self) -> tuple[str, ...]:
        if self.remote:  # a prefix named on the command line is refused in words, not dropped
            return REMOTE_STEPS + (("prefix",) if self.prefix is not None else ())
        return STEPS

    @property
    def remote(self) -> bool:
        """The daemon's address names another machine: it is installed and started there."""
        from claude_mailbox.locate import Endpoint

        try:
            return not Endpoint.parse(self.url()).is_loopback
        except MailboxError:
            return False  # a malformed address: the local checks say what is wrong with it

    def _run_step(self, step: str) -> Check:
        blocked = self._blocked(step)
        if blocked:
            return Check(step, "skipped", blocked)
        try:
            return getattr(self, f"check_{step}")()
        except Declined as declined:
            return Check(step, "failed", declined.args[0], declined.args[1])
        except MailboxError as exc:
            return Check(step, "failed", exc.message, self._default_fix(step))
        except Exception as exc:  # never a traceback: one line that says what broke
            return Check(step, "failed", f"unexpected {type(exc).__name__}: {exc}", self._default_fix(step))

    def _blocked(self, step: str) -> str | None:
        done = {check.id: check.status for check in self.checks}
        # prefix writes config.toml with tomli-w, which the managed environment brings.
        needs: dict[str, tuple[str, ...]] = {
            "daemon": ("python",),
            "autostart": ("daemon",),
            "prefix": ("daemon",),
            "smoke": ("autostart",),
        }
        if self.remote:
            needs.update(prefix=(), smoke=("remote",))
        for need in needs.get(step, ()):
            if done.get(need) not in ("ok", "fixed"):
                return f"skipped: needs the {LABELS[need]} check to pass first"
        return None

    def _default_fix(self, step: str) -> str | None:
        if step == "smoke" and self.remote:
            return "see the daemon log on its machine, then run the doctor again"
        if step in ("autostart", "smoke"):
            return f"see the daemon log {paths.log_file()}, then run the doctor again"
        return None

    def _confirm(self, plan: str, problem: str) -> None:
        """Go ahead with `plan`, or raise Declined (the check then fails and says what to do)."""
        if self.yes:
            return
        if self.interactive:
            answer = self.ask(f"{problem}\n  fix: {plan}? [Y/n] ").strip().lower()
            if answer in ("", "y", "yes"):
                return
            raise Declined(problem, f"{plan} (declined)")
        raise Declined(problem, f"{plan}: run `claude-mailbox doctor --yes`")

    def _progress(self, text: str) -> None:
        if not self.as_json and sys.stderr is not None and sys.stderr.isatty():
            print(f"  ...     {text}", file=sys.stderr, flush=True)

    # --- 1. python -----------------------------------------------------------------------------

    def check_python(self) -> Check:
        here = f"Python {_version_text(sys.version_info)} at {sys.executable}"
        if sys.version_info >= MIN_PYTHON and _has_venv_support():
            self.base_python = _base_interpreter()
            return Check("python", "ok", here)
        for name in PYTHON_NAMES:
            found = shutil.which(name)
            if found and _usable_python(Path(found)):
                self.base_python = Path(found)
                return Check("python", "ok", f"{here} is not usable; using {found} ({_python_version(found)})")
        why = "is older than 3.11" if sys.version_info < MIN_PYTHON else "has no venv/ensurepip module"
        return Check("python", "failed", f"{here} {why}, and no usable python3.11+ is on PATH", INSTALL_PYTHON)

    # --- 2. the managed environment --------------------------------------------------------------

    def check_daemon(self) -> Check:
        python = paths.venv_python(self.venv)
        if self.root is None:
            if venv.can_run_daemon_here():
                self.own_install = Path(sys.executable)
                return Check(
                    "daemon", "ok", f"claude-mailbox {self.target} runs from this installation ({sys.executable})"
                )
            return Check(
                "daemon",
                "failed",
                "no plugin source tree to install from",
                "run the doctor from the plugin (/claude-mailbox:mailbox-doctor) or set CLAUDE_PLUGIN_ROOT",
            )
        problem: str | None = "does not exist"
        if python.exists():
            problem = venv.probe_problem(venv.probe(python), self.target)
            if problem is None:
                return Check("daemon", "ok", f"claude-mailbox {self.target} installed in {self.venv}")
        issue = f"the managed environment {self.venv} {problem}"
        # An interpreter that does not run, or has no pip (its base Python was removed or
        # upgraded), is rebuilt; otherwise installing over what is there is enough.
        created = not _runs_pip(python)
        if created:
            plan = f"create {self.venv} and install claude-mailbox {self.target} from {self.root} (about a minute)"
        else:
            plan = f"install claude-mailbox {self.target} from {self.root} into {self.venv}"
        self._confirm(plan, issue)
        assert self.base_python is not None
        try:
            if created:
                self._progress(f"creating {self.venv}")
                venv.create_venv(self.base_python, self.venv)
            self._progress(f"installing claude-mailbox {self.target} and its dependencies (pip)")
            venv.pip_install(python, self.root, first=created)
        except MailboxError as exc:
            return Check(
                "daemon",
                "failed",
                exc.message,
                "pip must reach your package index (or set PIP_INDEX_URL / PIP_FIND_LINKS for a mirror); "
                "then run the doctor again",
            )
        problem = venv.probe_problem(venv.probe(python), self.target)
        if problem:
            return Check("daemon", "failed", f"after installing, {self.venv} {problem}", "run the doctor again")
        return Check("daemon", "fixed", f"claude-mailbox {self.target} installed in {self.venv} (from {self.root})")

    def daemon_python(self) -> Path:
        return self.own_install or paths.venv_python(self.venv)

    # --- handing over to the managed environment ---------------------------------------------------

    def _needs_handoff(self) -> bool:
        import importlib.util

        if self.root is None or not paths.venv_python(self.venv).exists():
            return False
        return any(importlib.util.find_spec(module) is None for module in HANDOFF_MODULES)

    def _handoff(self) -> int:
        """Run the remaining checks in the managed environment's interpreter (this one lacks psutil
        and tomli-w). It prints the rest, asks its own questions (stdin is shared), and sums up."""
        assert self.root is not None
        argv = ["doctor", "--resume", json.dumps([check.to_json() for check in self.checks])]
        argv += ["--yes"] if self.yes else []
        argv += ["--json"] if self.as_json else []
        argv += ["--prefix", self.prefix] if self.prefix is not None else []
        argv += ["--url", self.url_override] if self.url_override else []
        sys.stdout.flush()
        try:
            return venv.run_cli(self.root, argv, capture=False).returncode
        except OSError as exc:
            self._record(Check("autostart", "failed", f"cannot run {paths.venv_python(self.venv)}: {exc}"))
            return self._finish()

    # --- 3. autostart, running, healthy ----------------------------------------------------------

    def url(self) -> str:
        """The one resolver's answer (flag > $CLAUDE_MAILBOX_URL > daemon.url > config.toml > default)."""
        return locate.daemon_url(self.url_override)

    def check_autostart(self) -> Check:
        from claude_mailbox.setup import autostart

        url, source = locate.resolve(self.url_override)
        python = self.daemon_python()
        mechanism = autostart.installed_mechanism()
        detached_only = mechanism is None and _no_service_manager()
        from claude_mailbox import portholder
        from claude_mailbox.httpclient import NotOurDaemon

        unproven = False
        try:
            # Detailed (the token, once the listener proved it holds it): its dbPath (_foreign_database).
            health: dict[str, Any] | None = MailboxClient(url, timeout=2.0).health(detailed=True)
        except NotOurDaemon:  # it answered but cannot prove it holds the token: it got none (issue 20.1)
            health, unproven = None, True
        except MailboxError:
            health = None
        running = str(health.get("version")) if health else None
        held = portholder.describe(url, unproven=unproven) if health is None else None
        if held:
            return Check(
                "autostart", "failed", held, "free the port, or move the mailbox as said; then run the doctor again"
            )
        foreign = _foreign_database(health)
        if foreign:
            return Check(
                "autostart",
                "failed",
                f"the daemon at {url} serves {foreign}, not this data dir's database (another daemon holds the port)",
                f"stop that daemon, or give this data dir another port (port = N in {paths.config_path()}); "
                "then run the doctor again",
            )
        issues = []
        if mechanism is None and not detached_only:
            issues.append("the daemon is not registered to start at login")
        if running is None:
            issues.append(f"no daemon answers at {url}")
        elif running != self.target:
            issues.append(f"the daemon at {url} runs {running}, not {self.target}")
        if not issues:
            return Check("autostart", "ok", self._autostart_summary(mechanism, url, source, running))
        if running is not None and mechanism is None and not _pid_file_daemon():
            return Check(
                "autostart",
                "failed",
                "; ".join(issues) + " (a daemon started by hand holds the port)",
                f"stop the claude-mailbox daemon running at {url}, then run the doctor again",
            )
        how = "start a detached daemon (no service manager is usable here)" if detached_only else "register autostart"
        self._confirm(f"{how}, running claude-mailbox {self.target} at {url}", "; ".join(issues))
        result = autostart.install(python, url)
        if lifecycle.daemon_version(url) not in (None, self.target):
            autostart.restart(python, url, START_WAIT_SECONDS)  # it kept running the old version
        autostart.ensure_running(url, python, wait=START_WAIT_SECONDS)
        now = lifecycle.daemon_version(url, timeout=2.0)
        if now != self.target:
            state = "not answering" if now is None else f"answering as {now}"
            return Check(
                "autostart",
                "failed",
                f"{result.message}; but the daemon at {url} is {state}",
                f"see the daemon log {paths.log_file()}, then run the doctor again",
            )
        summary = self._autostart_summary(result.mechanism if not detached_only else None, url, source, now)
        return Check("autostart", "fixed", summary)

    def _autostart_summary(self, mechanism: Any, url: str, source: str, version: str | None) -> str:
        from claude_mailbox.setup import autostart

        if mechanism is None:
            pid = _pid_file_daemon()
            runs = f"a detached daemon runs (pid {pid})" if pid else "a daemon started by hand runs"
            how = f"no service manager is usable here, so {runs} and sessions start it on demand"
        else:
            how = f"{mechanism.value} ({_installed_location() or autostart.UNIT_NAME})"
        from claude_mailbox.setup import status

        note = status.mcp_note(url, source)
        auth = "auth: " + status.auth_line(status.auth_info(probe_health(url, timeout=2.0, detailed=True)))
        summary = f"{how}; daemon {version} healthy at {url} (address from {source}); {auth}"
        return summary + (f"; {note}" if note else "")

    # --- 2-4 for a daemon on another machine ---------------------------------------------------------

    def check_remote(self) -> Check:
        from claude_mailbox.errors import DaemonError, DaemonUnreachable
        from claude_mailbox.httpclient import CA_ENV, TlsFailed
        from claude_mailbox.setup import status

        url, source = locate.resolve(self.url_override)
        client = MailboxClient(url, timeout=5.0)
        try:
            health = client.health()
        except TlsFailed as exc:
            return Check(
                "remote",
                "failed",
                exc.message,
                f"copy the daemon's certificate to this machine and point ${CA_ENV} (hooks, CLI) and "
                "$NODE_EXTRA_CA_CERTS (Claude Code's MCP connection) at it, then restart Claude Code",
            )
        except DaemonUnreachable as exc:
            return Check(
                "remote",
                "failed",
                exc.message,
                "start it on its own machine (`claude-mailbox start` there): nothing here starts a daemon for "
                "another machine's address",
            )
        info = status.auth_info(health)
        token_fix = f"copy the daemon machine's token file (`token` in its data dir) to {info['tokenPath']} (mode 600)"
        try:
            client.list()
        except DaemonError as exc:
            if exc.http_status != 401:
                raise
            refused = f"the daemon at {url} refuses this machine's token: {exc.message}"
            return Check("remote", "failed", refused, token_fix)
        if info.get("mcpWarning"):
            return Check("remote", "failed", f"the hooks reach {url}, but {info['mcpWarning']}", token_fix)
        version = health.get("version")
        behind = "" if version == self.target else f" (this plugin is {self.target}: update the daemon on its machine)"
        return Check(
            "remote",
            "ok",
            f"daemon {version}{behind} on another machine at {url} (address from {source}); "
            f"auth: {status.auth_line(info)}; nothing to install or start here",
        )

    # --- 4. prefix ------------------------------------------------------------------------------

    def check_prefix(self) -> Check:
        from claude_mailbox import config, identity

        if self.remote:
            return Check(
                "prefix",
                "failed",
                "the prefix of session names is a setting of the daemon's machine, not this one",
                "run `claude-mailbox doctor --prefix NAME` on the daemon's machine",
            )

        current = config.load().prefix
        wanted = self.prefix
        if wanted is None and self.interactive and not self.yes:
            shown = current or "none: sessions are named claude-<8 hex digits>"
            wanted = self.ask(f"Base prefix for session mailbox names, e.g. backend (now {shown}; Enter keeps it): ")
            wanted = wanted.strip() or None
        if wanted is None:
            return Check("prefix", "ok", _prefix_summary(current))
        cleaned = identity.clean_prefix(wanted) if wanted.strip() else None
        if cleaned == current:
            return Check("prefix", "ok", _prefix_summary(current))
        adjusted = f" ({wanted!r} made safe for mailbox names)" if cleaned and cleaned != wanted.strip() else ""
        target = paths.config_path()
        # Naming the prefix (--prefix, or the answer just typed) is the consent to write it.
        config.write_setting("prefix", cleaned)
        restarted = ""
        url = self.url()
        if lifecycle.daemon_version(url) is not None and lifecycle.restart_daemon(url, self.daemon_python()):
            restarted = "; daemon restarted to apply it"
        summary = _prefix_summary(cleaned) + adjusted
        return Check("prefix", "fixed", f"{summary} (written to {target}{restarted})")

    # --- 5. smoke test --------------------------------------------------------------------------

    def check_smoke(self) -> Check:
        import secrets

        url = self.url()
        client = MailboxClient(url, timeout=5.0)
        token = secrets.token_hex(4)
        name = f"doctor-{token}"
        body = f"claude-mailbox doctor smoke test {token}"
        started = time.monotonic()
        sent = client.send(name, name, body)
        pending = client.peek(name)["pending"]
        if pending != 1:
            raise MailboxError(f"sent message #{sent['id']} to {name}, but peek counts {pending} pending")
        answer = client.check(name, manual=True)  # acknowledged before forget asks: no race with it
        messages = answer["messages"]
        if answer.get("leaseId"):
            client.ack(name, answer["leaseId"])
        if [(m["from"], m["body"]) for m in messages] != [(name, body)]:
            raise MailboxError(f"sent message #{sent['id']} to {name}, but check returned {messages!r}")
        left = client.peek(name)["pending"]
        if left != 0:
            raise MailboxError(f"{name} still has {left} pending after check")
        elapsed = (time.monotonic() - started) * 1000
        removed = ", removed it" if _forget_mailbox(client, name) else ""
        summary = f"{name} -> itself: sent #{sent['id']}, peeked 1, checked it{removed} ({elapsed:.0f} ms)"
        return Check("smoke", "ok", summary)

    # --- output ---------------------------------------------------------------------------------

    def _header(self) -> None:
        if not self.as_json:
            where = f", {self.root}" if self.root else ""
            print(f"claude-mailbox doctor (plugin {self.target}{where})", flush=True)

    def _record(self, check: Check) -> None:
        self.checks.append(check)
        if not self.as_json:
            print(f"  {check.status:<7} {LABELS[check.id]:<10} {check.summary}", flush=True)
            if check.fix and check.status == "failed":
                print(f"  {'':<7} {'':<10} fix: {check.fix}", flush=True)

    def _finish(self) -> int:
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("ok", "fixed", "failed", "skipped")}
        failed = counts["failed"] + counts["skipped"] > 0
        changed = counts["fixed"] > 0
        if self.as_json:
            data = {
                "ok": not failed,
                "changed": changed,
                "pluginVersion": self.target,
                "pluginRoot": str(self.root) if self.root else None,
                "venv": str(self.venv),
                "checks": [check.to_json() for check in self.checks],
            }
            print(json.dumps(data, indent=2))
        elif failed:
            skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
            tally = f"{counts['failed']} failed{skipped}, {counts['fixed']} fixed, {counts['ok']} ok"
            print(f"{tally}: see the fix lines above.")
        elif changed:
            print(f"All set: {counts['fixed']} fixed, {counts['ok']} ok.")
        else:
            print("All set; nothing to change.")
        return 1 if failed else 0


# --- helpers -----------------------------------------------------------------------------------------


def _version_text(info: Any) -> str:
    return ".".join(str(part) for part in tuple(info)[:3])


def _has_venv_support() -> bool:
    import importlib.util

    return importlib.util.find_spec("venv") is not None and importlib.util.find_spec("ensurepip") is not None


def _base_interpreter() -> Path:
    """The interpreter a new environment is made from: not a venv's own python (`--clear` would
    pull the floor from under it when the doctor runs from the managed environment)."""
    base = getattr(sys, "_base_executable", None)
    if sys.prefix != sys.base_prefix and base and Path(base).exists():
        return Path(base)
    return Path(sys.executable)


def _usable_python(python: Path) -> bool:
    probe = "import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 1)"
    try:
        return subprocess.run([str(python), "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _runs_pip(python: Path) -> bool:
    if not python.exists():
        return False
    try:
        result = subprocess.run([str(python), "-I", "-c", "import pip"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _python_version(python: str) -> str:
    try:
        out = subprocess.run([python, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown version"
    return (out.stdout or out.stderr).strip()


def _no_service_manager() -> bool:
    from claude_mailbox.setup import autostart

    return sys.platform.startswith("linux") and not autostart.user_systemd_available()


def _pid_file_daemon() -> int | None:
    from claude_mailbox.setup import autostart

    return autostart.detached_pid()


def _installed_location() -> str | None:
    from claude_mailbox.setup import autostart

    return autostart.installed_location()


def _foreign_database(health: dict[str, Any] | None) -> str | None:
    """The database of a daemon that answers on our port but belongs to another data dir."""
    if health and "database" not in health:  # /health without details: it refused this data dir's token
        return "another data dir's database (it does not take this data dir's token)"
    if not health or not health.get("dbPath"):
        return None
    from claude_mailbox import config

    theirs, ours = Path(str(health["dbPath"])), config.load().database
    try:
        same = theirs.resolve() == ours.resolve()
    except OSError:
        same = str(theirs) == str(ours)
    return None if same else str(theirs)


def _forget_mailbox(client: MailboxClient, name: str) -> bool:
    """Remove the smoke test's mailbox, so that sessions do not list it as a peer for the next hour.
    The daemon does it (POST /v1/forget): the doctor never opens the database. Best effort: the
    smoke test has just talked to this daemon, and a refusal only leaves a harmless mailbox."""
    try:
        return client.forget(name)
    except MailboxError:
        return False


def _prefix_summary(prefix: str | None) -> str:
    if prefix:
        return f"{prefix}: sessions are named {prefix}-<8 hex digits>"
    return "none: sessions are named claude-<8 hex digits> (set one with --prefix NAME)"


def main(*, yes: bool, as_json: bool, prefix: str | None, url: str | None, resume: str | None = None) -> int:
    """The `doctor` verb."""
    prior = None
    if resume:
        try:
            prior = [Check.from_json(item) for item in json.loads(resume)]
        except (ValueError, KeyError, TypeError):
            raise MailboxError("--resume: not a list of checks") from None
    return Doctor(yes=yes, as_json=as_json, prefix=prefix, url=url).run(prior)
