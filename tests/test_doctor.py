"""cira-db check (cira_db._doctor) against real servers."""

from __future__ import annotations

import io
import time

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from _proxy import PgBouncer, PgBouncerUnavailableError, start_pgbouncer
from cira_db import Database
from cira_db._cli import main
from cira_db._doctor import backend_switches, run_checks
from cira_db.migrations import load_migrations
from cira_db.testing import TestServer

PACKAGED = load_migrations()


def check(url: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--url", url, "check"], out=out)
    return code, out.getvalue()


def test_healthy_database_passes_every_check(cira_db_url: str) -> None:
    code, output = check(cira_db_url)
    assert code == 0, output
    names = [line.split()[1] for line in output.splitlines()]
    assert names == ["target", "reach", "server", "tls", "pooler", "latency", "pool", "migrations"]
    assert f"up to date ({len(PACKAGED)} applied)" in output
    assert "PostgreSQL 1" in output
    assert "FAIL" not in output


def test_pending_migrations_fail_the_check(
    cira_db_empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = check(cira_db_empty_url)
    assert code == 1
    pending = f"{len(PACKAGED)} pending: {', '.join(f'{m.version:04d}_{m.name}' for m in PACKAGED)}"
    assert f"FAIL migrations  {pending}" in output
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cira-db: error: migrations: {pending}"]


def test_unreachable_server_fails_at_reach_and_hides_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, output = check("postgresql://app:Sup3r-s3cret@127.0.0.1:1/cira?connect_timeout=2")
    err = capsys.readouterr().err
    assert code == 1
    assert "FAIL reach" in output
    assert "Sup3r-s3cret" not in output + err
    assert "app@127.0.0.1:1/cira" in output


def test_findings_report_pool_settings(cira_db_url: str) -> None:
    db = Database(cira_db_url, pool_max_size=7, pool_timeout=3)
    findings = {f.name: f for f in run_checks(db)}
    assert "max 7" in findings["pool"].detail
    assert "wait 3 s" in findings["pool"].detail
    assert findings["pooler"].ok
    assert "switching backends not observed" in findings["pooler"].detail


def test_check_through_pgbouncer_sees_tls_and_the_pooler(
    pgbouncer: PgBouncer, cira_db_url: str
) -> None:
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    db = Database(pgbouncer.url(dbname), via_proxy=True, migration_url=cira_db_url)
    findings = {f.name: f for f in run_checks(db, samples=3)}
    assert findings["tls"].ok
    assert "verified" in findings["tls"].detail
    assert "TLSv1." in findings["tls"].detail  # protocol as the client negotiated it
    assert findings["pooler"].ok
    assert findings["pooler"].detail == (
        "configured=yes, switching backends observed, prepared statements off"
    )
    assert findings["migrations"].ok


def test_check_fails_on_prepared_statements_behind_an_undeclared_pooler(
    pgbouncer: PgBouncer,
    cira_db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings that fail about half of all calls under load must not pass the check."""
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    db = Database(pgbouncer.url(dbname), migration_url=cira_db_url, prepare_statements=True)
    findings = {f.name: f for f in run_checks(db, samples=3)}
    assert not findings["pooler"].ok
    assert "a transaction pooler answers" in findings["pooler"].detail
    assert "CIRA_DB_VIA_PROXY=true" in findings["pooler"].detail
    # The same through the command line, where a user meets it: exit 1, the reason on stderr.
    monkeypatch.setenv("CIRA_DB_PREPARE_STATEMENTS", "true")
    code, output = check(pgbouncer.url(dbname))
    err = capsys.readouterr().err
    assert code == 1, output
    assert "FAIL pooler" in output
    assert err.startswith("cira-db: error: pooler: a transaction pooler answers")


def test_undeclared_pooler_with_prepared_statements_off_passes_and_says_to_declare_it(
    pgbouncer: PgBouncer, cira_db_url: str
) -> None:
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    db = Database(pgbouncer.url(dbname), migration_url=cira_db_url, prepare_statements=False)
    finding = {f.name: f for f in run_checks(db, samples=1)}["pooler"]
    assert finding.ok
    assert "configured=no, switching backends observed" in finding.detail
    assert "declare it with CIRA_DB_VIA_PROXY=true" in finding.detail


def test_both_probes_see_pgbouncer_and_neither_sees_a_direct_connection(
    pgbouncer: PgBouncer, cira_db_url: str
) -> None:
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    through = Database(pgbouncer.url(dbname), via_proxy=True, pool=False)
    with through.connect_direct() as first, through.connect_direct() as second:
        assert backend_switches(first, second) == (True, True)
    direct = Database(cira_db_url, pool=False)
    with direct.connect_direct() as first, direct.connect_direct() as second:
        assert backend_switches(first, second) == (False, False)


def test_held_probe_counts_a_pooler_with_one_server_session(
    cira_db_server: TestServer, cira_db_url: str
) -> None:
    """With one server session, the held probe's query waits: that wait is the evidence."""
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    try:
        bouncer = start_pgbouncer(cira_db_server.admin_url, default_pool_size=1)
    except PgBouncerUnavailableError as exc:
        pytest.skip(str(exc))
    try:
        db = Database(bouncer.url(dbname), via_proxy=True, pool=False)
        with db.connect_direct() as first, db.connect_direct() as second:
            started = time.monotonic()
            assert backend_switches(first, second, wait=0.5) == (True, True)
            assert time.monotonic() - started >= 0.5  # the held probe did wait
    finally:
        bouncer.stop()


def test_service_configuration_through_the_proxy_only_passes(
    pgbouncer: PgBouncer, cira_db_url: str
) -> None:
    """A service knows only the proxy endpoint: the history is read through it."""
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    db = Database(pgbouncer.url(dbname), via_proxy=True)
    findings = {f.name: f for f in run_checks(db, samples=2)}
    assert findings["migrations"].ok, findings["migrations"].detail
    assert findings["migrations"].detail == f"up to date ({len(PACKAGED)} applied)"
    assert all(f.ok for f in findings.values()), findings


def test_local_tls_without_verification_is_not_a_failure(
    pgbouncer: PgBouncer, cira_db_url: str
) -> None:
    dbname = str(conninfo_to_dict(cira_db_url)["dbname"])
    url = pgbouncer.url(dbname).replace("sslmode=verify-full", "sslmode=require")
    findings = {f.name: f for f in run_checks(Database(url, via_proxy=True), samples=2)}
    assert findings["tls"].ok
    assert "not verified (local, sslmode=require)" in findings["tls"].detail


def test_wrong_database_name_is_named_at_reach_without_debug(
    cira_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "database unavailable (OperationalError, no SQLSTATE)": libpq's reason."""
    code, output = check(make_conninfo(cira_db_url, dbname="cira_no_such_db"))
    err = capsys.readouterr().err
    assert code == 1
    assert "FAIL reach       connect to the database: the connection was refused" in output
    assert 'database "cira_no_such_db" does not exist' in output
    assert "check the database name" in output
    assert err.startswith("cira-db: error: reach: ")
    assert 'database "cira_no_such_db" does not exist' in err
