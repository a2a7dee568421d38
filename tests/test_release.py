"""release.py: stamping the version from a git tag, --from-git, --check, and its error paths.

Every test runs release.py as a subprocess against a throwaway git repo holding copies of the
real version files, so the real formatting is what gets round-tripped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "release.py"
PLUGIN = ".claude-plugin/plugin.json"
MARKET = ".claude-plugin/marketplace.json"
INIT = "daemon/claude_mailbox/__init__.py"
FILES = (PLUGIN, MARKET, INIT)

OLD = re.search(r'^__version__ = "([^"]+)"', (REPO / INIT).read_text(), re.MULTILINE)[1]  # type: ignore[index]
TAG = "v123.45.6"  # a version the real repo will never be at, so every stamped file must change
NEW = TAG[1:]

# Isolate git from the developer's config (signing, hooks, templates) and from GIT_DIR & co.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, env=ENV, check=True, capture_output=True, text=True)


def release(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RELEASE), "--root", str(root), *args], env=ENV, capture_output=True, text=True
    )


def read(root: Path, rel: str) -> bytes:
    return (root / rel).read_bytes()


def edit_json(root: Path, rel: str, change) -> None:
    data = json.loads(read(root, rel))
    change(data)
    (root / rel).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def add_market_version(version: str):
    return lambda data: data["plugins"][0].update(version=version)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo with copies of the three version files, committed and tagged TAG."""
    for rel in FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, tmp_path / rel)
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.name", "Release Test")
    git(tmp_path, "config", "user.email", "release-test@example.invalid")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "initial")
    git(tmp_path, "tag", TAG)
    return tmp_path


def assert_stamped(before: dict[str, bytes], root: Path, stamped: tuple[str, ...]) -> None:
    """Stamped files differ from `before` only in the version; the rest are byte-identical."""
    assert before and set(stamped) <= set(before), (sorted(before), stamped)  # every stamped file is compared
    for rel, old in before.items():
        after = read(root, rel)
        if rel not in stamped:
            assert after == old, rel
        elif rel == INIT:
            assert after == old.replace(f'__version__ = "{OLD}"'.encode(), f'__version__ = "{NEW}"'.encode())
        else:
            assert after == old.replace(f'"version": "{OLD}"'.encode(), f'"version": "{NEW}"'.encode()), rel
            assert after.endswith(b"}\n") and b'\n  "' in after, rel  # indent 2 + trailing newline


def test_stamp_explicit_tag(repo: Path) -> None:
    before = {rel: read(repo, rel) for rel in FILES}
    result = release(repo, TAG)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{PLUGIN}: {OLD} -> {NEW} (changed)",
        f"{MARKET}: no version key, skipped",
        f"{INIT}: {OLD} -> {NEW} (changed)",
    ]
    assert_stamped(before, repo, stamped=(PLUGIN, INIT))  # marketplace has no version: untouched

    again = release(repo, TAG)  # idempotent, and says so
    assert again.returncode == 0
    assert f"{PLUGIN}: {NEW} (unchanged)" in again.stdout
    assert release(repo, "--check").returncode == 0
    assert release(repo, "--check", TAG).returncode == 0


def test_stamp_marketplace_entry_that_has_a_version(repo: Path) -> None:
    edit_json(repo, MARKET, add_market_version(OLD))
    before = {rel: read(repo, rel) for rel in FILES}
    result = release(repo, TAG)
    assert result.returncode == 0, result.stderr
    assert f"{MARKET}: {OLD} -> {NEW} (changed)" in result.stdout
    assert_stamped(before, repo, stamped=FILES)


def test_from_git_uses_the_tag_at_head(repo: Path) -> None:
    result = release(repo, "--from-git")
    assert result.returncode == 0, result.stderr
    assert json.loads(read(repo, PLUGIN))["version"] == NEW
    assert f'__version__ = "{NEW}"' in read(repo, INIT).decode()


def test_from_git_without_a_tag_at_head_fails(repo: Path) -> None:
    git(repo, "commit", "-q", "--allow-empty", "-m", "after the tag")
    before = {rel: read(repo, rel) for rel in FILES}
    result = release(repo, "--from-git")
    assert result.returncode == 1
    assert "no tag at HEAD" in result.stderr and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert {rel: read(repo, rel) for rel in FILES} == before


def test_check_passes_when_in_sync(repo: Path) -> None:
    edit_json(repo, MARKET, add_market_version(OLD))
    result = release(repo, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert release(repo, "--check", f"v{OLD}").returncode == 0


@pytest.mark.parametrize(
    "drifted",
    [PLUGIN, MARKET, INIT],
)
def test_check_names_each_kind_of_drift(repo: Path, drifted: str) -> None:
    edit_json(repo, MARKET, add_market_version(OLD))  # so the marketplace entry takes part
    if drifted == INIT:
        text = read(repo, INIT).decode().replace(f'"{OLD}"', '"9.9.9"')
        (repo / INIT).write_text(text)
    elif drifted == PLUGIN:
        edit_json(repo, PLUGIN, lambda d: d.update(version="9.9.9"))
    else:
        edit_json(repo, MARKET, add_market_version("9.9.9"))

    # Compare with an explicit tag so the drifted file, and only it, is the odd one out.
    result = release(repo, "--check", f"v{OLD}")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{drifted}: 9.9.9 (expected {OLD})"]
    assert "1 file(s) disagree" in result.stderr


def test_check_defaults_to_the_package_version(repo: Path) -> None:
    text = read(repo, INIT).decode().replace(f'"{OLD}"', f'"{NEW}"')
    (repo / INIT).write_text(text)  # package bumped, plugin.json forgotten
    result = release(repo, "--check")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{PLUGIN}: {OLD} (expected {NEW})"]


# --- CHANGELOG.md: an unreleased newest section needs the version bumped (issue 19.11) ---------------


def write_changelog(root: Path, *headings: str) -> None:
    """A CHANGELOG.md in the temporary repo (never the real one) with these `## ` sections, newest first."""
    sections = "".join(f"## {heading}\n\n- Changed: something users get.\n\n" for heading in headings)
    (root / "CHANGELOG.md").write_text(f"# Changelog\n\n{sections}", encoding="utf-8")


@pytest.mark.parametrize("newest", [f"{NEW} (unreleased)", "(unreleased)"])
def test_check_fails_when_the_changelog_is_unreleased_but_the_version_is_the_previous_release(
    repo: Path, newest: str
) -> None:
    write_changelog(repo, newest, f"{OLD} (2026-12-07)")
    result = release(repo, "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"release.py: error: CHANGELOG.md: the newest section ({newest}) is unreleased, but the version files"
        f" still carry {OLD}, the previous release's number; bump them with `python release.py vX.Y.Z`"
    ]
    assert release(repo, "--check", f"v{OLD}").returncode == 1  # with an explicit tag too


def test_check_passes_once_the_version_is_bumped_for_the_unreleased_section(repo: Path) -> None:
    write_changelog(repo, f"{NEW} (unreleased)", f"{OLD} (2026-12-07)")
    assert release(repo, TAG).returncode == 0
    result = release(repo, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"ok: every version file is at {NEW}"]


def test_check_passes_when_the_newest_section_is_released(repo: Path) -> None:
    write_changelog(repo, f"{OLD} (2026-12-07)", "0.0.1 (unreleased)")  # an old undated section does not count
    result = release(repo, "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_when_the_unreleased_section_names_another_version(repo: Path) -> None:
    write_changelog(repo, "200.0.0 (unreleased)", f"{OLD} (2026-12-07)")
    assert release(repo, TAG).returncode == 0  # bumped, but not to the number the section names
    result = release(repo, "--check")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "release.py: error: CHANGELOG.md: the newest section is 200.0.0 (unreleased),"
        f" but the version files carry {NEW}"
    ]


@pytest.mark.parametrize("tag", ["1.3.0", "v1.3", "v01.2.3", "v1.2.3-beta", "vfoo", "v1.2.3.4", "v1.02.3"])
def test_invalid_tags_are_refused(repo: Path, tag: str) -> None:
    before = {rel: read(repo, rel) for rel in FILES}
    for args in ([tag], ["--check", tag]):
        result = release(repo, *args)
        assert result.returncode == 2, args
        assert result.stderr.splitlines() == [
            f"release.py: error: invalid tag {tag!r}: expected vMAJOR.MINOR.PATCH, e.g. v1.3.0"
        ]
    assert {rel: read(repo, rel) for rel in FILES} == before


@pytest.mark.parametrize(
    ("rel", "content", "message"),
    [
        (PLUGIN, '{"name": "claude-mailbox", "version": "0.1.0",,}\n', "malformed JSON"),
        (PLUGIN, '{"name": "claude-mailbox"}\n', 'no top-level "version" key'),
        (MARKET, "not json\n", "malformed JSON"),
        (INIT, '"""No version here."""\n', 'expected one `__version__ = "..."` line, found 0'),
        (INIT, None, "file not found"),
    ],
)
def test_bad_files_give_one_line_naming_the_file(repo: Path, rel: str, content: str | None, message: str) -> None:
    if content is None:
        (repo / rel).unlink()
    else:
        (repo / rel).write_text(content)
    before = {r: read(repo, r) for r in FILES if (repo / r).exists()}
    for args in ([TAG], ["--check"]):
        result = release(repo, *args)
        assert result.returncode == 1, args
        [line] = result.stderr.splitlines()
        assert line.startswith(f"release.py: error: {rel}: {message}"), line
    # Nothing was written: every file is read and validated before any is stamped.
    assert {r: read(repo, r) for r in before} == before


def test_usage_errors_exit_2(repo: Path) -> None:
    assert release(repo).returncode == 2
    assert release(repo, TAG, "--from-git").returncode == 2


def test_the_real_repo_is_in_sync() -> None:
    # No --root: the default is release.py's own directory, i.e. this repo.
    result = subprocess.run([sys.executable, str(RELEASE), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_json_files_round_trip_byte_for_byte() -> None:
    # release.py rewrites JSON with indent 2 + newline; if someone hand-formats these files
    # differently, a release would reformat them. Catch that here rather than in a release diff.
    for rel in (PLUGIN, MARKET):
        text = read(REPO, rel).decode()
        assert json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n" == text, rel
