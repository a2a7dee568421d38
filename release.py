#!/usr/bin/env python3
"""Stamp the release version, taken from a git tag, into every file that carries it.

Claude Code caches installed plugins by the version in .claude-plugin/plugin.json, so a
release that doesn't bump it never reaches users. This script keeps that file, the
marketplace entry and the Python package (daemon/claude_mailbox/__init__.py, which
pyproject.toml reads through hatch) on one version.

    python release.py v1.3.0          stamp 1.3.0 into every file
    python release.py --from-git      stamp the tag at HEAD (what CI does)
    python release.py --check         exit 1 unless every file matches the package version
    python release.py --check v1.3.0  exit 1 unless every file is at 1.3.0

--check also reads CHANGELOG.md: when its newest section is "(unreleased)", the version files
must already carry the coming version, not the previous release's number (a change set that
changes what users get ends with a version bump), and the number that section names, if any.

Stdlib only, so it runs on a bare `setup-python` in CI.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLUGIN_NAME = "claude-mailbox"
# vMAJOR.MINOR.PATCH only: no leading zeros, no pre-release or build suffix. Claude Code
# compares these strings to decide whether to refresh its cache, so keep them plain.
TAG_RE = re.compile(r"v(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)")
VERSION_LINE_RE = re.compile(r'^__version__ = "([^"\n]*)"', re.MULTILINE)
CHANGELOG = "CHANGELOG.md"
SECTION_RE = re.compile(r"^## +(.+?)\s*$", re.MULTILINE)  # "## 0.2.0 (2026-12-07)", "## 0.3.0 (unreleased)"
SECTION_VERSION_RE = re.compile(r"(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\b")


class ReleaseError(Exception):
    """A failure worth one line on stderr (exit 1), not a traceback."""


class UsageError(ReleaseError):
    """A bad command line, e.g. a malformed tag (exit 2, like argparse)."""


@dataclass(frozen=True)
class VersionFile:
    """One file that carries the version, and how to read and rewrite it within its text."""

    path: str  # relative to the repo root, POSIX style; also what we print
    read: Callable[[str], str | None]  # text -> version, or None if this file carries none
    write: Callable[[str, str], str]  # (text, new version) -> new text


def json_file(path: str, locate: Callable[[Any], dict[str, Any] | None]) -> VersionFile:
    """A JSON file whose version lives under the "version" key of the object `locate` finds."""

    def read(text: str) -> str | None:
        holder = locate(json.loads(text))
        return None if holder is None else str(holder["version"])

    def write(text: str, version: str) -> str:
        data = json.loads(text)  # dicts keep key order, so only the value changes
        holder = locate(data)
        assert holder is not None  # callers only write files that carry a version
        holder["version"] = version
        # ensure_ascii=False keeps non-ASCII text as written instead of \u-escaping it.
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    return VersionFile(path, read, write)


def plugin_manifest(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or "version" not in data:
        raise ReleaseError('no top-level "version" key')
    return data


def marketplace_entry(data: Any) -> dict[str, Any] | None:
    # The entry may omit its version (Claude Code then falls back to plugin.json); we only
    # stamp it when present, so we never add a second place to keep in sync.
    plugins = data.get("plugins") if isinstance(data, dict) else None
    for entry in plugins if isinstance(plugins, list) else []:
        if isinstance(entry, dict) and entry.get("name") == PLUGIN_NAME and "version" in entry:
            return entry
    return None


def read_python_version(text: str) -> str:
    found: list[str] = VERSION_LINE_RE.findall(text)
    if len(found) != 1:
        raise ReleaseError(f'expected one `__version__ = "..."` line, found {len(found)}')
    return found[0]


def write_python_version(text: str, version: str) -> str:
    read_python_version(text)  # refuse files with zero or several version lines
    return VERSION_LINE_RE.sub(lambda _: f'__version__ = "{version}"', text)


PACKAGE = VersionFile("daemon/claude_mailbox/__init__.py", read_python_version, write_python_version)
FILES: tuple[VersionFile, ...] = (
    json_file(".claude-plugin/plugin.json", plugin_manifest),
    json_file(".claude-plugin/marketplace.json", marketplace_entry),
    PACKAGE,
)


def load(root: Path, file: VersionFile) -> tuple[str, str | None]:
    """Return (text, version) of one file; every failure becomes one line naming the file."""
    try:
        # Bytes, not read_text(): universal newlines would silently rewrite CRLF endings.
        text = (root / file.path).read_bytes().decode("utf-8")
        return text, file.read(text)
    except FileNotFoundError:
        raise ReleaseError(f"{file.path}: file not found") from None
    except OSError as e:
        raise ReleaseError(f"{file.path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ReleaseError(f"{file.path}: not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{file.path}: malformed JSON ({e})") from None
    except ReleaseError as e:
        raise ReleaseError(f"{file.path}: {e}") from None


def parse_tag(tag: str) -> str:
    """v1.3.0 -> 1.3.0, or UsageError."""
    if not TAG_RE.fullmatch(tag):
        raise UsageError(f"invalid tag {tag!r}: expected vMAJOR.MINOR.PATCH, e.g. v1.3.0")
    return tag[1:]


def git_tag_at_head(root: Path) -> str:
    # --tags matters: on a tag push, actions/checkout recreates the tag as a lightweight ref
    # (actions/checkout#290), which plain `git describe` ignores.
    cmd = ["git", "describe", "--exact-match", "--tags", "HEAD"]
    try:
        result = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise ReleaseError("git not found on PATH") from None
    except subprocess.CalledProcessError as e:
        detail = (e.stderr.strip().splitlines() or ["no output"])[-1]
        raise ReleaseError(f"--from-git: no tag at HEAD ({detail})") from None
    return result.stdout.strip()


def stamp(root: Path, version: str) -> int:
    # Read and validate every file before writing any, so one bad file can't leave a
    # half-stamped tree behind.
    plans = []
    for file in FILES:
        text, current = load(root, file)
        new_text = text if current in (None, version) else file.write(text, version)
        plans.append((file, current, text, new_text))
    for file, current, text, new_text in plans:
        if current is None:
            print(f"{file.path}: no version key, skipped")
        elif new_text == text:
            print(f"{file.path}: {version} (unchanged)")
        else:
            (root / file.path).write_bytes(new_text.encode("utf-8"))
            print(f"{file.path}: {current} -> {version} (changed)")
    return 0


@dataclass(frozen=True)
class Section:
    """One `## ` heading of CHANGELOG.md: its version (None if it names none) and whether it is unreleased."""

    heading: str
    version: str | None
    unreleased: bool


def changelog_sections(text: str) -> list[Section]:
    sections = []
    for heading in SECTION_RE.findall(text):
        named = SECTION_VERSION_RE.match(heading)
        sections.append(Section(heading, named[0] if named else None, "unreleased" in heading.lower()))
    return sections


def changelog_problems(root: Path, version: str) -> list[str]:
    """Why CHANGELOG.md's newest section disagrees with the version files at `version` (none: [])."""
    try:
        text = (root / CHANGELOG).read_bytes().decode("utf-8")
    except FileNotFoundError:
        return []  # a tree without a changelog has nothing to compare
    except (OSError, UnicodeDecodeError) as e:
        raise ReleaseError(f"{CHANGELOG}: {getattr(e, 'strerror', None) or 'not UTF-8'}") from None
    sections = changelog_sections(text)
    if not sections or not sections[0].unreleased:
        return []
    newest = sections[0]
    previous = next((section.version for section in sections[1:] if section.version), None)
    if previous == version:
        return [
            f"{CHANGELOG}: the newest section ({newest.heading}) is unreleased, but the version files still"
            f" carry {version}, the previous release's number; bump them with `python release.py vX.Y.Z`"
        ]
    if newest.version is not None and newest.version != version:
        return [f"{CHANGELOG}: the newest section is {newest.heading}, but the version files carry {version}"]
    return []


def check(root: Path, expected: str | None) -> int:
    if expected is None:  # no tag given: the package version is the source of truth
        expected = load(root, PACKAGE)[1]
        assert expected is not None  # read_python_version never returns None
        if not TAG_RE.fullmatch(f"v{expected}"):
            raise ReleaseError(f"{PACKAGE.path}: version {expected!r} is not MAJOR.MINOR.PATCH")
    versions = [(file, load(root, file)[1]) for file in FILES]
    drift = [(file, found) for file, found in versions if found is not None and found != expected]
    for file, found in drift:
        print(f"{file.path}: {found} (expected {expected})")
    if drift:
        print(
            f"release.py: error: {len(drift)} file(s) disagree; run `python release.py v{expected}` and commit",
            file=sys.stderr,
        )
        return 1
    problems = changelog_problems(root, expected)
    for problem in problems:
        print(f"release.py: error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"ok: every version file is at {expected}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("tag", nargs="?", help="release tag, e.g. v1.3.0")
    parser.add_argument("--from-git", action="store_true", help="use the tag at HEAD (git describe --exact-match)")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file disagrees with TAG (default: package)"
    )
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parent, help="repo root (default: this script's dir)"
    )
    args = parser.parse_args(argv)
    if args.tag and args.from_git:
        parser.error("give a tag or --from-git, not both")
    if not (args.tag or args.from_git or args.check):
        parser.error("give a tag, --from-git or --check")

    try:
        if not args.root.is_dir():
            raise ReleaseError(f"--root {args.root}: not a directory")
        tag = git_tag_at_head(args.root) if args.from_git else args.tag
        version = parse_tag(tag) if tag else None
        if args.check:
            return check(args.root, version)
        assert version is not None  # argparse checks above guarantee a tag when stamping
        return stamp(args.root, version)
    except UsageError as e:
        print(f"release.py: error: {e}", file=sys.stderr)
        return 2
    except ReleaseError as e:
        print(f"release.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
