"""The mutation check's guard list (tools/mutate.py): well formed, and pointing at today's code.

The check itself (a pytest run per mutant) runs in CI as ``make mutate``; these
tests keep the list honest in every suite run: a guard whose text moved fails
here at once, naming the guard.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cira_db_mutate", ROOT / "tools" / "mutate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mutate = _load_tool()
GUARDS = mutate.load_guards()


def test_the_issue_14_guards_are_all_listed() -> None:
    names = {guard.name for guard in GUARDS}
    for needed in (
        "claim-skip-locked",
        "claim-for-client-skip-locked",
        "reaper-skip-locked",
        "retention-skip-locked",
        "extend-lease-attempt-fence",
        "complete-attempt-fence",
        "fail-attempt-fence",
        "migrator-advisory-lock",
        "cursor-signature",
    ):
        assert needed in names


@pytest.mark.parametrize("guard", GUARDS, ids=lambda guard: guard.name)
def test_each_guard_removes_exactly_one_piece_of_todays_code(guard: Any, tmp_path: Path) -> None:
    src = mutate.copy_package(tmp_path)
    target = src / "cira_db" / guard.file
    before = target.read_text(encoding="utf-8")
    mutate.mutate(guard, src / "cira_db")
    after = target.read_text(encoding="utf-8")
    assert after != before
    assert after.count(guard.replacement) >= 1


@pytest.mark.parametrize("guard", GUARDS, ids=lambda guard: guard.name)
def test_each_guard_names_tests_that_exist(guard: Any) -> None:
    for node in guard.tests:
        path, _, name = node.partition("::")
        function = name.partition("[")[0]
        assert (ROOT / path).is_file(), node
        assert f"def {function}(" in (ROOT / path).read_text(encoding="utf-8"), node


def test_a_guard_whose_text_is_gone_fails_loudly(tmp_path: Path) -> None:
    src = mutate.copy_package(tmp_path)
    moved = mutate.Guard(
        name="moved", file="sql/jobs.sql", text="NO SUCH TEXT", replacement="", tests=("t",), why=""
    )
    with pytest.raises(mutate.GuardError, match=r"'moved': its text occurs 0 times"):
        mutate.mutate(moved, src / "cira_db")


def test_a_guard_whose_text_is_ambiguous_fails_loudly(tmp_path: Path) -> None:
    src = mutate.copy_package(tmp_path)
    twice = mutate.Guard(
        name="twice",
        file="sql/jobs.sql",
        text="FOR UPDATE SKIP LOCKED",
        replacement="",
        tests=("t",),
        why="",
    )
    with pytest.raises(mutate.GuardError, match=r"'twice': its text occurs \d+ times"):
        mutate.mutate(twice, src / "cira_db")


def test_a_malformed_guard_list_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "guards.toml"
    bad.write_text('[[guard]]\nname = "x"\nfile = "a"\ntext = "b"\n', encoding="utf-8")
    with pytest.raises(mutate.GuardError, match=r"guard 'x' lacks"):
        mutate.load_guards(bad)
    bad.write_text(
        '[[guard]]\nname = "x"\nfile = "a"\ntext = "b"\nreplacement = "c"\ntests = []\nwhy = ""\n',
        encoding="utf-8",
    )
    with pytest.raises(mutate.GuardError, match=r"guard 'x' names no test"):
        mutate.load_guards(bad)


def test_docs_testing_lists_every_guard() -> None:
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    section = text[text.index("## For contributors: the mutation check") :]
    assert [guard.name for guard in GUARDS if f"`{guard.name}`" not in section] == []


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _named_queries(text: str) -> dict[str, str]:
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize(
    "guard", [g for g in GUARDS if g.file.endswith(".sql")], ids=lambda guard: guard.name
)
def test_a_sql_mutant_still_binds_every_parameter(guard: Any, tmp_path: Path) -> None:
    """A mutant that drops a query's only use of a parameter fails the library's own
    parameter check (a TypeError) before any SQL runs, so its test would "catch" it
    without ever running the weakened statement. Keep the placeholder in the
    replacement (``AND (%(client_id)s::text IS NULL OR TRUE)``)."""
    src = mutate.copy_package(tmp_path)
    target = src / "cira_db" / guard.file
    before = _named_queries(target.read_text(encoding="utf-8"))
    mutate.mutate(guard, src / "cira_db")
    after = _named_queries(target.read_text(encoding="utf-8"))
    for name, sql in before.items():
        assert set(_PLACEHOLDER.findall(after[name])) == set(_PLACEHOLDER.findall(sql)), name
