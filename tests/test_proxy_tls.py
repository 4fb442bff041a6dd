"""Through pgbouncer (the local RDS Proxy stand-in): TLS verification, pooling, migrations.

Everything runs against the real test server behind a real pgbouncer with
client TLS from a CA made for this session (fixture ``pgbouncer``). Neither
test server speaks TLS itself, so ``ssl_in_use`` proves the pooler is in the
path.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from _proxy import VIA_PGBOUNCER, PgBouncer, PgBouncerUnavailableError, make_ca, start_pgbouncer
from cira_db import Database
from cira_db.errors import (
    CiraDbError,
    ConfigurationError,
)
from cira_db.migrations import Migrator, load_migrations
from cira_db.testing import TestServer

PASSWORD = "pw-must-not-leak-7f3a"
THREADS = 8
ITERATIONS = 30
QUERY = "SELECT %s::int + 1"
PREPARED_CLASH = re.compile(r'prepared statement "[^"]+" (already exists|does not exist)')


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


@pytest.fixture(scope="module")
def small_pgbouncer(cira_db_server: TestServer) -> Iterator[PgBouncer]:
    """A second pgbouncer with only two server connections per database, for the load tests."""
    try:
        bouncer = start_pgbouncer(cira_db_server.admin_url, default_pool_size=2)
    except PgBouncerUnavailableError as exc:
        pytest.skip(str(exc))
    try:
        yield bouncer
    finally:
        bouncer.stop()


# -- verify-full through the pooler ----------------------------------------------------------


def test_verify_full_to_localhost_connects_with_tls(
    pgbouncer: PgBouncer, cira_db_server: TestServer, cira_db_url: str
) -> None:
    url = pgbouncer.url(dbname(cira_db_url))
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.info.port == pgbouncer.port
        row = conn.execute("SELECT current_database()").fetchone()
        assert row == (dbname(cira_db_url),)
    # The server itself has no TLS: the encrypted hop ends at pgbouncer.
    with psycopg.connect(cira_db_server.admin_url, autocommit=True, connect_timeout=5) as direct:
        assert not direct.pgconn.ssl_in_use


def test_database_via_proxy_runs_queries_through_pgbouncer(
    pgbouncer: PgBouncer, cira_db_url: str
) -> None:
    with Database(pgbouncer.url(dbname(cira_db_url)), via_proxy=True) as db:
        assert db.settings.behind_proxy()
        with db.connection() as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.prepare_threshold is None  # server-side prepares are off
            assert conn.execute("SELECT 1").fetchone() == (1,)
            # The fresh database is a copy of the migrated template.
            applied = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
            assert applied == (len(load_migrations()),)
        with db.transaction() as conn:
            conn.execute("CREATE TABLE proxy_probe (id int PRIMARY KEY, note text NOT NULL)")
            conn.execute("INSERT INTO proxy_probe VALUES (%s, %s)", (1, "through pgbouncer"))
        with db.connection() as conn:
            rows = conn.execute("SELECT id, note FROM proxy_probe").fetchall()
        assert rows == [(1, "through pgbouncer")]


def test_cira_db_fixture_goes_through_pgbouncer_only_when_asked(cira_db: Database) -> None:
    """CIRA_DB_TEST_VIA_PGBOUNCER=1 routes the suite's `cira_db` through the pooler."""
    assert cira_db.settings.behind_proxy() is VIA_PGBOUNCER
    assert (cira_db.settings.migration_url is not None) is VIA_PGBOUNCER
    with cira_db.connection() as conn:
        assert conn.pgconn.ssl_in_use is VIA_PGBOUNCER
        assert (conn.prepare_threshold is None) is VIA_PGBOUNCER


# -- what must be refused --------------------------------------------------------------------


def _wrong_ca(bouncer: PgBouncer, db: str, tmp: Path) -> str:
    other = make_ca(tmp, "other-ca")
    return bouncer.url(db, password=PASSWORD, sslrootcert=str(other.cert))


def _wrong_host(bouncer: PgBouncer, db: str, tmp: Path) -> str:
    # The name is not in the certificate; hostaddr keeps the connection on loopback.
    url = bouncer.url(db, password=PASSWORD)
    return url.replace("@localhost:", "@db.example.com:") + "&hostaddr=127.0.0.1"


def _plain_text(bouncer: PgBouncer, db: str, tmp: Path) -> str:
    return bouncer.url(db, password=PASSWORD, sslmode="disable")


REFUSALS: dict[str, tuple[Callable[[PgBouncer, str, Path], str], str]] = {
    "wrong-ca": (_wrong_ca, "certificate verify failed"),
    "wrong-host-name": (_wrong_host, 'does not match host name "db.example.com"'),
    "plain-text": (_plain_text, "SSL required"),
}


@pytest.fixture(params=sorted(REFUSALS))
def refused(
    request: pytest.FixtureRequest, pgbouncer: PgBouncer, tmp_path: Path
) -> tuple[str, str]:
    """(URL that pgbouncer or libpq must refuse, the reason libpq gives).

    The refusal comes before any database is chosen, so the server's admin
    database (which exists) is used rather than a fresh copy per test.
    """
    build, reason = REFUSALS[request.param]
    return build(pgbouncer, pgbouncer.admin_dbname, tmp_path), reason


def _assert_safe(error: CiraDbError, reason: str) -> None:
    # A refused certificate or plain text will not pass by waiting: a configuration error
    # with libpq's reason in the message, and nothing of the password or the URL.
    assert isinstance(error, ConfigurationError)
    assert reason in str(error)
    text = f"{error} {error!r}"
    assert PASSWORD not in text
    assert "sslrootcert" not in text  # no connection string echoed either


def test_refused_by_libpq_or_pgbouncer(refused: tuple[str, str]) -> None:
    url, reason = refused
    with pytest.raises(psycopg.OperationalError, match=re.escape(reason)):
        psycopg.connect(url)


def test_refusal_surfaces_as_a_library_error_without_the_password(
    refused: tuple[str, str],
) -> None:
    url, reason = refused
    db = Database(url, pool=False, via_proxy=True)
    with pytest.raises(CiraDbError) as caught, db.connection():
        pytest.fail("connected although the connection must be refused")
    _assert_safe(caught.value, reason)
    cause = caught.value.__cause__
    assert isinstance(cause, psycopg.OperationalError)
    assert reason in str(cause)


def test_refusal_when_opening_a_pool_is_a_library_error_without_the_password(
    refused: tuple[str, str],
) -> None:
    url, reason = refused
    db = Database(url, via_proxy=True, pool_timeout=30)
    started = time.monotonic()
    with pytest.raises(CiraDbError) as caught:
        db.open()
    assert time.monotonic() - started < 5  # at once, not after the 30 s pool timeout
    assert not db.is_open
    _assert_safe(caught.value, reason)


def test_refusal_after_a_lazy_open_fails_the_first_call_at_once(
    refused: tuple[str, str],
) -> None:
    url, reason = refused
    db = Database(url, via_proxy=True, pool_timeout=30)
    db.open(wait=False)
    try:
        started = time.monotonic()
        with pytest.raises(CiraDbError) as caught:
            db.run("read", lambda conn: conn.execute("SELECT 1"), idempotent=True)
        assert time.monotonic() - started < 5
    finally:
        db.close()
    _assert_safe(caught.value, reason)


# -- prepared statements behind a transaction pooler -----------------------------------------


def _hammer(connect: Callable[[], AbstractContextManager[psycopg.Connection[Any]]]) -> list[str]:
    """THREADS threads x ITERATIONS runs of the same parameterised query; the errors seen."""
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS, timeout=10)

    def worker(offset: int) -> None:
        start.wait()
        for i in range(ITERATIONS):
            try:
                with connect() as conn:
                    row = conn.execute(QUERY, (offset + i,)).fetchone()
                if row != (offset + i + 1,):
                    raise AssertionError(f"wrong answer {row!r}")
            except Exception as exc:  # every failure counts, whatever its type
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for future in [pool.submit(worker, n * 1000) for n in range(THREADS)]:
            future.result(timeout=60)
    return errors


def test_via_proxy_pool_survives_a_load_without_prepared_statement_errors(
    small_pgbouncer: PgBouncer, cira_db_empty_url: str
) -> None:
    url = small_pgbouncer.url(dbname(cira_db_empty_url))
    with Database(url, via_proxy=True, pool_min_size=4, pool_max_size=4) as db:
        with db.connection() as conn:
            assert conn.prepare_threshold is None
        errors = _hammer(db.connection)
    assert errors == []


def test_same_load_with_library_prepares_forced_on_fails(
    small_pgbouncer: PgBouncer, cira_db_empty_url: str
) -> None:
    """The control: only the prepare setting differs, and the load then breaks.

    Each of the 4 client connections is used about 60 times, so each prepares
    the query once; with only 2 server connections behind them, at least two of
    those prepares land where ``_pg3_0`` already exists.
    """
    url = small_pgbouncer.url(dbname(cira_db_empty_url))
    with Database(
        url, via_proxy=True, prepare_statements=True, pool_min_size=4, pool_max_size=4
    ) as db:
        errors = _hammer(db.connection)
    assert errors, "server-side prepares through a transaction pooler should have clashed"
    assert any(PREPARED_CLASH.search(e) for e in errors), errors[:3]


def test_raw_psycopg_with_prepare_threshold_zero_fails_under_the_same_load(
    small_pgbouncer: PgBouncer, cira_db_empty_url: str
) -> None:
    url = small_pgbouncer.url(dbname(cira_db_empty_url))
    connections = [
        psycopg.connect(url, autocommit=True, prepare_threshold=0) for _ in range(THREADS)
    ]
    try:
        handed: list[psycopg.Connection[Any]] = list(connections)
        local = threading.local()
        take = threading.Lock()

        def own_connection() -> AbstractContextManager[psycopg.Connection[Any]]:
            if not hasattr(local, "conn"):
                with take:
                    local.conn = handed.pop()
            conn: psycopg.Connection[Any] = local.conn
            return nullcontext(conn)

        errors = _hammer(own_connection)
    finally:
        for conn in connections:
            conn.close()
    assert errors, "prepared statements through a transaction pooler should have clashed"
    assert any(PREPARED_CLASH.search(e) for e in errors), errors[:3]


# -- the migrator and the pooler -------------------------------------------------------------


def test_migrator_refuses_the_pooler_url_without_a_direct_one(
    pgbouncer: PgBouncer, cira_db_empty_url: str
) -> None:
    db = Database(pgbouncer.url(dbname(cira_db_empty_url)), pool=False, via_proxy=True)
    with pytest.raises(ConfigurationError, match="CIRA_DB_MIGRATION_URL"):
        Migrator(db).apply()
    with pytest.raises(ConfigurationError, match="CIRA_DB_MIGRATION_URL"):
        Migrator(db).status()
    with psycopg.connect(cira_db_empty_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT to_regclass('schema_migrations') IS NULL").fetchone()
    assert row == (True,), "nothing may have been written"


def test_migrator_uses_the_direct_url_while_queries_use_the_pooler(
    pgbouncer: PgBouncer, cira_db_empty_url: str
) -> None:
    db = Database(
        pgbouncer.url(dbname(cira_db_empty_url)), via_proxy=True, migration_url=cira_db_empty_url
    )
    with db.connect_direct(for_migrations=True) as direct:
        assert not direct.pgconn.ssl_in_use  # not through pgbouncer
        assert direct.info.port != pgbouncer.port
    applied = Migrator(db, applied_by="test_proxy_tls").apply()
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    with db, db.connection() as conn:
        assert conn.pgconn.ssl_in_use
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in load_migrations()]
    assert all(s.applied and s.checksum_matches for s in Migrator(db).status())
