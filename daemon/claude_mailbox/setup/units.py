"""The service definitions autostart installs, as pure functions: explicit inputs, no I/O, and
PurePath arguments, so tests can check the Windows and macOS texts on any OS.

A systemd --user unit (Linux), a launchd LaunchAgent plist (macOS), a Task Scheduler XML and the
command line of a Windows logon entry (which goes through `python -m claude_mailbox.setup.autostart`
to apply the environment and the log, since neither Windows mechanism carries them).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import PurePath

LAUNCHD_LABEL = "dev.claude-mailbox.daemon"
SERVE = ("-m", "claude_mailbox", "serve")


def systemd_unit_text(python: PurePath, env: Mapping[str, str], log: PurePath) -> str:
    exec_start = " ".join(_systemd_quote(word, exec_word=True) for word in (str(python), *SERVE))
    lines = [
        "[Unit]",
        "Description=claude-mailbox daemon (messages between parallel Claude Code sessions)",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        *(f"Environment={_systemd_quote(f'{key}={value}', exec_word=False)}" for key, value in env.items()),
        # append: needs systemd >= 240; older versions ignore it and log to the journal.
        f"StandardOutput=append:{_systemd_escape_specifiers(str(log))}",
        f"StandardError=append:{_systemd_escape_specifiers(str(log))}",
        "Restart=on-failure",
        "RestartSec=2",
        "TimeoutStopSec=10",
        "LimitNOFILE=65536",  # one open file per connection and waiting watcher (issue 12.2)
        "UMask=0077",  # the log systemd creates is private, like every file the daemon writes
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def launchd_plist_bytes(python: PurePath, env: Mapping[str, str], log: PurePath) -> bytes:
    import plistlib

    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [str(python), *SERVE],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a crash, not after a clean stop
        "SoftResourceLimits": {"NumberOfFiles": 65536},  # launchd's default soft limit is 256
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
        "EnvironmentVariables": dict(env),
        "ProcessType": "Background",
        "Umask": 0o077,  # the log launchd creates is private, like every file the daemon writes
    }
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=True)


def windows_command(python: PurePath, env: Mapping[str, str], log: PurePath) -> list[str]:
    """Task Scheduler and Run values carry neither environment nor output redirection, so the
    daemon is started through `launch` below, which applies both before running `serve`."""
    args = [str(python), "-m", "claude_mailbox.setup.autostart", "--log", str(log)]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return [*args, "serve"]


def schtasks_xml(python: PurePath, env: Mapping[str, str], log: PurePath, user: str | None = None) -> str:
    import xml.etree.ElementTree as ET

    ns = "http://schemas.microsoft.com/windows/2004/02/mit/task"
    task = ET.Element("Task", {"version": "1.2", "xmlns": ns})

    def add(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
        child = ET.SubElement(parent, tag)
        child.text = text
        return child

    add(add(task, "RegistrationInfo"), "Description", "Starts the claude-mailbox daemon at logon.")
    trigger = add(add(task, "Triggers"), "LogonTrigger")
    add(trigger, "Enabled", "true")
    principal = add(task, "Principals")
    principal = add(principal, "Principal")
    principal.set("id", "Author")
    if user:
        add(trigger, "UserId", user)
        add(principal, "UserId", user)
    add(principal, "LogonType", "InteractiveToken")
    add(principal, "RunLevel", "LeastPrivilege")  # no admin rights, no UAC prompt
    settings = add(task, "Settings")
    for tag, text in (
        ("MultipleInstancesPolicy", "IgnoreNew"),
        ("DisallowStartIfOnBatteries", "false"),
        ("StopIfGoingOnBatteries", "false"),
        ("ExecutionTimeLimit", "PT0S"),  # the default (72 h) would kill a long-lived daemon
        ("Enabled", "true"),
    ):
        add(settings, tag, text)
    restart = add(settings, "RestartOnFailure")
    add(restart, "Interval", "PT1M")
    add(restart, "Count", "3")
    actions = add(task, "Actions")
    actions.set("Context", "Author")
    exe = add(actions, "Exec")
    command = windows_command(python, env, log)
    add(exe, "Command", command[0])
    add(exe, "Arguments", subprocess.list2cmdline(command[1:]))
    # `-m` also searches the working directory: lets a source checkout run without an install.
    add(exe, "WorkingDirectory", env.get("PYTHONPATH") or str(log.parent))
    ET.indent(task)
    return '<?xml version="1.0" encoding="UTF-16"?>\n' + ET.tostring(task, encoding="unicode") + "\n"


def _systemd_escape_specifiers(text: str) -> str:
    return text.replace("%", "%%")


def _systemd_quote(word: str, *, exec_word: bool) -> str:
    """One ExecStart word or Environment assignment; `$` is only special in ExecStart."""
    text = _systemd_escape_specifiers(word)
    if exec_word:
        text = text.replace("$", "$$")
    if text and not any(c in text for c in " \t\n\"'\\;"):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'
