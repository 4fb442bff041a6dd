"""CI's own set-up: the hypothesis profiles of tests/conftest.py and the lists in .ci/suites.sh."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import conftest

ROOT = Path(__file__).resolve().parents[1]


def _counted() -> tuple[Counter[str], list[Any]]:
    """Three hypothesis tests that count their examples: own count 100, default, own count 20."""
    calls: Counter[str] = Counter()

    @hypothesis_settings(max_examples=100, database=None)
    @given(st.integers())
    def own(x: int) -> None:
        calls["own"] += 1

    @given(st.integers())
    def default(x: int) -> None:
        calls["default"] += 1

    @hypothesis_settings(max_examples=20, database=None)
    @given(st.integers())
    def small(x: int) -> None:
        calls["small"] += 1

    return calls, [own, default, small]


def _collect_and_run(tests: list[Any]) -> None:
    # ``own`` twice, as a parametrized test is: one function object for two items
    items: Any = [SimpleNamespace(obj=test) for test in (tests[0], *tests)]
    conftest.pytest_collection_modifyitems(config=None, items=items)  # type: ignore[arg-type]
    for test in tests:
        test()


def test_the_full_profile_keeps_each_tests_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(conftest.HYPOTHESIS_ENV, raising=False)
    calls, tests = _counted()
    _collect_and_run(tests)
    default = hypothesis_settings().max_examples  # the loaded profile's
    assert calls == {"own": 100, "default": default, "small": 20}


def test_the_repeat_profile_runs_a_fifth_of_each_tests_examples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(conftest.HYPOTHESIS_ENV, "repeat")
    calls, tests = _counted()
    _collect_and_run(tests)
    default = hypothesis_settings().max_examples  # the loaded profile's
    # divided once, not once per item; never below the floor
    assert calls == {"own": 20, "default": max(10, default // 5), "small": 10}


def test_an_unknown_profile_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(conftest.HYPOTHESIS_ENV, "fast")
    with pytest.raises(pytest.UsageError, match="CIRA_DB_TEST_HYPOTHESIS='fast'"):
        conftest.hypothesis_profile()


def test_every_test_file_ci_names_exists() -> None:
    """A file missing from a focused list would fail CI only half an hour in."""
    scripts = [ROOT / ".ci" / name for name in ("run", "suites.sh", "containers.sh", "examples.sh")]
    named = {
        name for script in scripts for name in re.findall(r"tests/[\w/]+\.py", script.read_text())
    }
    assert "tests/test_jobs_repository.py" in named
    assert {name for name in named if not (ROOT / name).is_file()} == set()


def test_the_repeated_passes_run_the_lists_of_suites_sh() -> None:
    """.ci/run and .ci/containers.sh read their lists from one file, and use them."""
    run = (ROOT / ".ci" / "run").read_text()
    containers = (ROOT / ".ci" / "containers.sh").read_text()
    assert "source .ci/suites.sh" in run
    assert "source .ci/suites.sh" in containers
    for name in ("FOCUSED", "SERVER", "OPTIONAL"):
        assert f'"${{{name}[@]}}"' in run, name
    assert '"${CONTAINER[@]}"' in containers
