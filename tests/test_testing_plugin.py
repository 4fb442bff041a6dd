"""The pytest plugin, used the way a downstream project uses it (a pytest run inside pytest)."""

from __future__ import annotations

import os

import pytest

from cira_db.errors import ConfigurationError
from cira_db.testing import TestServer
from cira_db.testing._server import ENV_PG_VERSION, embedded_version

pytest_plugins = ["pytester"]

DOWNSTREAM_CONFTEST = """
pytest_plugins = ["cira_db.testing"]
"""

DOWNSTREAM_TESTS = """
import psycopg
from cira_db import Database
from cira_db.migrations import Migrator


def _count_then_insert(conn, client_id):
    before = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    conn.execute(
        "INSERT INTO jobs (client_id, pdf_url) VALUES (%s, %s)",
        (client_id, "https://example.com/" + client_id + ".pdf"),
    )
    after = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    return before, after


def test_first_writes_a_row(cira_db: Database) -> None:
    with cira_db.connection() as conn:
        assert _count_then_insert(conn, "client-a") == (0, 1)


def test_second_sees_an_empty_table(cira_db_url: str) -> None:
    assert all(s.applied for s in Migrator(cira_db_url).status())
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        assert _count_then_insert(conn, "client-b") == (0, 1)


def test_factories(cira_db_factory) -> None:
    from cira_db import JobStatus

    job, result = cira_db_factory.completed_job(client_id="client-c", tokens_used=5)
    assert job.status is JobStatus.COMPLETED and result.tokens_used == 5
    assert cira_db_factory.job(status="failed").status is JobStatus.FAILED
    counts = cira_db_factory.jobs.count_by_status(client_id="client-a")
    assert counts[JobStatus.FAILED] == 1 and sum(counts.values()) == 1
"""


@pytest.fixture
def downstream(
    pytester: pytest.Pytester, cira_db_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """A throwaway project whose tests reuse this session's server via CIRA_DB_TEST_URL."""
    pytester.makepyfile(test_downstream=DOWNSTREAM_TESTS)
    # runpytest_subprocess inherits os.environ; monkeypatch restores it afterwards.
    monkeypatch.setenv("CIRA_DB_TEST_URL", cira_db_server.admin_url)
    return pytester


def test_plugin_gives_each_test_its_own_migrated_database(downstream: pytest.Pytester) -> None:
    downstream.makeconftest(DOWNSTREAM_CONFTEST)
    result = downstream.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=3)


def test_plugin_is_not_registered_without_pytest_plugins(downstream: pytest.Pytester) -> None:
    result = downstream.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*fixture 'cira_db*' not found*"])


def test_the_embedded_version_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PG_VERSION, "17")
    with pytest.raises(ConfigurationError, match=r"CIRA_DB_TEST_PG_VERSION must be one of 16, 18"):
        embedded_version()
    monkeypatch.setenv(ENV_PG_VERSION, "18")
    assert embedded_version() == 18
    monkeypatch.delenv(ENV_PG_VERSION)
    assert embedded_version() is None


def test_the_server_is_the_one_asked_for(cira_db_server: TestServer) -> None:
    major = int(cira_db_server.version().split(".")[0].split()[0])
    if cira_db_server.kind.startswith("embedded"):
        asked = int(os.environ.get(ENV_PG_VERSION) or "16")
        assert cira_db_server.kind.startswith(f"embedded PostgreSQL {asked} (")
        assert major == asked
    else:
        assert major >= 15  # the oldest supported server (README, "Supported versions")


def _async_section_blocks() -> list[str]:
    """The ```python blocks of docs/testing.md's "Async tests" section, in order."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "testing.md").read_text("utf-8")
    section = text.split("\n## Async tests\n", 1)[1].split("\n## ", 1)[0]
    return [part.split("\n```", 1)[0] for part in section.split("```python no-run\n")[1:]]


def test_the_async_fixture_example_of_the_docs_runs(downstream: pytest.Pytester) -> None:
    conftest, tests = _async_section_blocks()
    assert "anyio_backend" in conftest
    assert "cira_db_async" in tests
    downstream.makeconftest(conftest)
    downstream.makepyfile(test_async_service=tests)
    result = downstream.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "error", "test_async_service.py"
    )
    result.assert_outcomes(passed=1)
