"""The test suite's own rules (issue 19.9): tiers registered and applied, helpers from the harness."""

from __future__ import annotations

import re
import tomllib

import pytest

import tiers
from harness import REPO


def test_every_tier_is_a_registered_marker() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    registered = {line.split(":", 1)[0] for line in pyproject["tool"]["pytest"]["ini_options"]["markers"]}
    assert set(tiers.TIERS) <= registered, registered


def test_a_test_without_processes_is_in_the_in_process_tier(request: pytest.FixtureRequest) -> None:
    marks = {tier for tier in tiers.TIERS if request.node.get_closest_marker(tier)}
    assert marks == {"inprocess"}, marks


def test_nothing_imports_from_conftest() -> None:
    """Helpers live in tests/harness.py (or a kit module); conftest.py holds only fixtures and hooks."""
    sources = [*(REPO / "tests").glob("*.py"), *(REPO / "bench").glob("*.py")]
    assert len(sources) > 10, sources
    importing = [
        path.name
        for path in sources
        if re.search(r"^\s*(from conftest import|import conftest)\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert importing == [], importing
