"""The test tiers (issue 19.9), applied as markers by conftest's `pytest_collection_modifyitems`:

- `claude_code`: drives the real Claude Code CLI (the module's marker, or a test that reaches
  `claude_code.require_claude`, e.g. through the `claude_bin` fixture);
- `postgres`: needs the PostgreSQL server (tests/test_postgres.py, the pg fixtures, the store
  contract's "postgres" parameter);
- `process`: starts a process: a daemon (the `daemon`/`server` fixtures, `start_daemon`, `Daemon`),
  the CLI (`run_cli`), a hook script or any other subprocess;
- `inprocess`: everything else: in-process fixtures (`app_server`, `app_module_server`) or none.

A test's tier is read from what it uses, not from where it is: the test function, every fixture
it uses that is defined under tests/, and the helpers under tests/ those call (by name, a few
levels deep) are searched for the calls that start a process. Where that cannot see it (the
package itself starts the process, e.g. autostart), the module is listed in PROCESS_MODULES.

The fast loop (`scripts/check --fast`) runs `-m inprocess`.
"""

from __future__ import annotations

import inspect
import re
import types
from functools import cache
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("inprocess", "process", "claude_code", "postgres")

# Source text that starts a process: a daemon, the CLI, a hook script, any subprocess, or the
# package's own daemon starters (claude_mailbox.autostart) called for real.
_STARTS_PROCESS = re.compile(
    r"\b(start_daemon|Daemon\(|run_cli|subprocess\.|Popen\b|sys\.executable|os\.fork|multiprocessing"
    r"|start_detached\(|ensure_running\(|autostart\.restart\()"
)
_DRIVES_CLAUDE = re.compile(r"\b(require_claude|claude_binary)\b")
PG_FIXTURES = frozenset({"pg_server", "pg_url", "pg"})
POSTGRES_MODULES = frozenset({"test_postgres"})
# Modules whose tests start processes where the search cannot see it (the package starts them).
PROCESS_MODULES = frozenset[str]()


def _under_tests(obj: Any) -> bool:
    try:
        source_file = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return source_file is not None and Path(source_file).resolve().parent == TESTS


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions, lambdas, comprehensions
            names |= _code_names(const)
    return names


@cache
def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _reached(func: Any, depth: int = 4) -> list[Any]:
    """`func` and the functions and classes under tests/ it names, `depth` levels deep."""
    seen: dict[int, Any] = {}
    todo = [(inspect.unwrap(func), depth)]
    while todo:
        obj, left = todo.pop()
        if id(obj) in seen or not _under_tests(obj):
            continue
        seen[id(obj)] = obj
        code = getattr(obj, "__code__", None)
        if left == 0 or code is None:
            continue
        scope = obj.__globals__
        for name in _code_names(code):
            value = scope.get(name)
            if isinstance(value, types.ModuleType):  # a kit module: the names used on it
                todo += [(getattr(value, attr), left - 1) for attr in _code_names(code) if hasattr(value, attr)]
            elif inspect.isfunction(value) or inspect.isclass(value):
                todo.append((value, left - 1))
    return list(seen.values())


def _searched(item: pytest.Function) -> list[Any]:
    """The test function and the functions of the fixtures it uses (the effective definition of each)."""
    funcs = [item.function]
    for name in item.fixturenames:
        defs = item._fixtureinfo.name2fixturedefs.get(name)
        if defs:
            funcs.append(defs[-1].func)
    return [reached for func in funcs for reached in _reached(func)]


def tier(item: pytest.Function) -> str:
    module = item.module.__name__ if item.module is not None else ""
    searched = _searched(item)
    if item.get_closest_marker("claude_code") or any(_DRIVES_CLAUDE.search(_source(obj)) for obj in searched):
        return "claude_code"
    callspec = getattr(item, "callspec", None)
    if (
        module in POSTGRES_MODULES
        or PG_FIXTURES & set(item.fixturenames)
        or (callspec is not None and callspec.params.get("store") == "postgres")  # tests/test_store.py
    ):
        return "postgres"
    if module in PROCESS_MODULES or any(_STARTS_PROCESS.search(_source(obj)) for obj in searched):
        return "process"
    return "inprocess"


def apply(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function):
            item.add_marker(tier(item))
