"""Shared test set-up: the cira_db plugin, a clean environment, the server in the header."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest
from psycopg.conninfo import conninfo_to_dict

from _faces import FACES, Awaiting, LoopThread
from _proxy import (
    VIA_PGBOUNCER,
    AppTarget,
    PgBouncer,
    PgBouncerUnavailableError,
    start_pgbouncer,
)
from cira_db import Database, JobRepository, JobResultRepository
from cira_db.aio import AsyncDatabase, AsyncJobRepository, AsyncJobResultRepository

# Imported for types only: a runtime import here would come before pytest_plugins
# and defeat assertion rewriting of the plugin (PytestAssertRewriteWarning).
if TYPE_CHECKING:
    from cira_db.testing import TestServer

pytest_plugins = ["cira_db.testing"]

# -- hypothesis: every example in a full run; fewer in CI's repeated passes -----------------
#
# CIRA_DB_TEST_HYPOTHESIS=repeat is set by .ci/run for the passes after the first full one
# (through pgbouncer, the focused ones): they look for what differs with the route, the server
# or the dependencies, not for new inputs, which the first pass (and every local run) explores
# with each test's full ``max_examples``. There every hypothesis test runs a fifth of its
# examples (at least 10), whether the count is the default or the test's own @settings.
HYPOTHESIS_ENV = "CIRA_DB_TEST_HYPOTHESIS"
HYPOTHESIS_PROFILES = {"full": 1, "repeat": 5}  # profile -> divisor of each test's max_examples
REPEAT_MIN_EXAMPLES = 10


def hypothesis_profile() -> str:
    """The profile ``CIRA_DB_TEST_HYPOTHESIS`` asks for ("full" when unset); refuses others."""
    name = os.environ.get(HYPOTHESIS_ENV, "").strip() or "full"
    if name not in HYPOTHESIS_PROFILES:
        raise pytest.UsageError(
            f"{HYPOTHESIS_ENV}={name!r}: use one of {', '.join(HYPOTHESIS_PROFILES)}"
        )
    return name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    divisor = HYPOTHESIS_PROFILES[hypothesis_profile()]
    if divisor == 1:
        return
    done: set[int] = set()
    for item in items:
        obj: Any = getattr(item, "obj", None)
        test: Any = getattr(obj, "__func__", obj)  # a method's function
        current = getattr(test, "_hypothesis_internal_use_settings", None)
        if not getattr(test, "is_hypothesis_test", False) or current is None:
            continue
        if id(test) in done:  # parametrized: one function object for several items
            continue
        done.add(id(test))
        fewer = max(REPEAT_MIN_EXAMPLES, current.max_examples // divisor)
        if fewer < current.max_examples:
            # @given reads this attribute on each call, so the test runs with these settings.
            test._hypothesis_internal_use_settings = hypothesis.settings(
                current, max_examples=fewer
            )


def pytest_report_header(config: pytest.Config) -> list[str]:
    url = os.environ.get("CIRA_DB_TEST_URL")
    version = os.environ.get("CIRA_DB_TEST_PG_VERSION") or "16"
    where = "CIRA_DB_TEST_URL" if url else f"testcontainers or embedded PostgreSQL {version}"
    via = ", repository tests through pgbouncer (TLS)" if VIA_PGBOUNCER else ""
    profile = hypothesis_profile()
    examples = (
        "each test's full max_examples"
        if profile == "full"
        else f"max_examples / {HYPOTHESIS_PROFILES[profile]}, at least {REPEAT_MIN_EXAMPLES}"
    )
    return [f"cira_db test server: {where}{via}", f"hypothesis: {profile} ({examples})"]


@pytest.fixture(autouse=True)
def _clean_cira_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CIRA_DB_* setting leaks in from the shell or from one test into another."""
    for name in list(os.environ):
        # The test server's own settings (CIRA_DB_TEST_*) stay: the plugin reads them.
        if name.startswith("CIRA_DB_") and not name.startswith("CIRA_DB_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)


# -- pgbouncer: the local RDS Proxy stand-in (transaction pooling, client TLS) --------------


@pytest.fixture(scope="session")
def pgbouncer(cira_db_server: TestServer) -> Iterator[PgBouncer]:
    """pgbouncer in transaction mode with required client TLS, in front of the test server.

    Clients reach it with ``pgbouncer.url(dbname)`` (``sslmode=verify-full`` and
    the session's throwaway CA, host ``localhost``). Skips when pgbouncer is
    not installed.
    """
    try:
        bouncer = start_pgbouncer(cira_db_server.admin_url, default_pool_size=5)
    except PgBouncerUnavailableError as exc:
        if VIA_PGBOUNCER:
            pytest.fail(f"CIRA_DB_TEST_VIA_PGBOUNCER=1 but {exc}")
        pytest.skip(str(exc))
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def app_target(request: pytest.FixtureRequest, cira_db_url: str) -> AppTarget:
    """Where this test's application connections go (see `AppTarget`).

    Direct to ``cira_db_url``; with ``CIRA_DB_TEST_VIA_PGBOUNCER=1`` through
    pgbouncer (``verify-full``, ``via_proxy=True``), migrations direct
    (``migration_url``). Tests that stand for production code (repositories,
    workers in threads and processes, the documented examples) use this rather
    than ``cira_db_url``, so the proxy pass covers them.
    """
    if not VIA_PGBOUNCER:
        return AppTarget(url=cira_db_url, migration_url=cira_db_url, via_proxy=False)
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    return AppTarget(url=bouncer.url(dbname), migration_url=cira_db_url, via_proxy=True)


@pytest.fixture
def cira_db(app_target: AppTarget) -> Iterator[Database]:
    """An open `Database` on this test's fresh database, the `app_target` way."""
    with app_target.database() as db:
        yield db


# -- the two faces: one set of repository scenarios, run sync and async --------------------


@pytest.fixture(scope="session")
def aio_loop() -> Iterator[LoopThread]:
    """An event loop in a background thread, on which the async face's calls run."""
    loop = LoopThread()
    try:
        yield loop
    finally:
        loop.stop()


@pytest.fixture
def aio_db(
    request: pytest.FixtureRequest, cira_db: Database, aio_loop: LoopThread
) -> Iterator[AsyncDatabase]:
    """An open `AsyncDatabase` on the same database (and route) as ``cira_db``, on ``aio_loop``."""
    settings = cira_db.settings
    db = AsyncDatabase(settings=settings)
    aio_loop.run(db.open())
    try:
        yield db
    finally:
        aio_loop.run(db.close())


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest) -> str:
    """Which face of the repositories a scenario runs on: "sync" or "async"."""
    return str(request.param)


@pytest.fixture
def jobs(request: pytest.FixtureRequest, face: str, cira_db: Database) -> JobRepository:
    """A `JobRepository` on this test's database, or (face "async") an `AsyncJobRepository`
    whose calls are awaited on a background loop, so the same scenario checks both."""
    if face == "sync":
        return JobRepository(cira_db)
    loop: LoopThread = request.getfixturevalue("aio_loop")
    db: AsyncDatabase = request.getfixturevalue("aio_db")
    return Awaiting(AsyncJobRepository(db), loop)  # type: ignore[return-value]


@pytest.fixture
def results(request: pytest.FixtureRequest, face: str, cira_db: Database) -> JobResultRepository:
    """A `JobResultRepository` on this test's database, sync or async like ``jobs``."""
    if face == "sync":
        return JobResultRepository(cira_db)
    loop: LoopThread = request.getfixturevalue("aio_loop")
    db: AsyncDatabase = request.getfixturevalue("aio_db")
    return Awaiting(AsyncJobResultRepository(db), loop)  # type: ignore[return-value]
