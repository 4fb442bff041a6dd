"""Shared test set-up: the cira_db plugin, a clean environment, the server in the header."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["cira_db.testing"]


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("CIRA_DB_TEST_URL")
    where = "CIRA_DB_TEST_URL" if url else "testcontainers or embedded PostgreSQL 16"
    return f"cira_db test server: {where}"


@pytest.fixture(autouse=True)
def _clean_cira_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CIRA_DB_* setting leaks in from the shell or from one test into another."""
    for name in list(os.environ):
        if name.startswith("CIRA_DB_") and name != "CIRA_DB_TEST_URL":
            monkeypatch.delenv(name)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
