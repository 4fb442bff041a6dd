"""cira_db._errors_map: the one retry predicate and the one translation, on psycopg's errors."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

from cira_db._errors_map import (
    connect_failure_is_permanent,
    is_stale_plan,
    is_transient,
    libpq_reason,
    translate,
    wrap_errors,
)
from cira_db.errors import (
    AuthenticationError,
    CiraDbError,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
)

PREFIX = 'connection failed: connection to server at "10.0.0.5", port 5432 failed: '

# libpq's reason for a failed connection -> (may pass?, cira_db error class)
REASONS: dict[str, tuple[bool, type[CiraDbError]]] = {
    "Connection refused\n\tIs the server running on that host?": (True, DatabaseUnavailableError),
    "timeout expired": (True, DatabaseUnavailableError),
    "FATAL:  the database system is starting up": (True, DatabaseUnavailableError),
    "FATAL:  the database system is shutting down": (True, DatabaseUnavailableError),
    "FATAL:  sorry, too many clients already": (True, DatabaseUnavailableError),
    'FATAL:  too many connections for role "app"': (True, DatabaseUnavailableError),
    "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute": (
        True,
        DatabaseUnavailableError,
    ),
    "FATAL:  Timed-out waiting to acquire database connection": (True, DatabaseUnavailableError),
    "server closed the connection unexpectedly": (True, DatabaseUnavailableError),
    'FATAL:  database "app" does not exist': (False, ConfigurationError),
    'FATAL:  role "app" does not exist': (False, AuthenticationError),
    'FATAL:  password authentication failed for user "app"': (False, AuthenticationError),
    'FATAL:  PAM authentication failed for user "app"': (False, AuthenticationError),
    'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "app", database "app", no encryption': (
        False,
        AuthenticationError,
    ),
    'FATAL:  role "app" is not permitted to log in': (False, AuthenticationError),
    'FATAL:  invalid value for parameter "statement_timeout": "abc"': (False, ConfigurationError),
    'FATAL:  unrecognized configuration parameter "nope"': (False, ConfigurationError),
    'FATAL:  permission denied for database "app"': (False, ConfigurationError),
    "SSL error: certificate verify failed": (False, ConfigurationError),
    'server certificate for "x" does not match host name "y"': (False, ConfigurationError),
    "server does not support SSL, but SSL was required": (False, ConfigurationError),
    'invalid sslmode value: "verify"': (False, ConfigurationError),
}

# psycopg resolves host names itself, before libpq: its message has no libpq prefix.
DNS: dict[str, tuple[bool, type[CiraDbError]]] = {
    "failed to resolve host 'db.exmaple.com': [Errno -2] Name or service not known": (
        False,
        ConfigurationError,
    ),
    "failed to resolve host 'db.example.com': [Errno -3] Temporary failure in name resolution": (
        True,
        DatabaseUnavailableError,
    ),
}


@pytest.mark.parametrize("message", sorted(DNS))
def test_a_host_name_that_does_not_exist_will_not_pass_a_dns_hiccup_may(message: str) -> None:
    passes, expected = DNS[message]
    exc = psycopg.OperationalError(message)
    assert is_transient(exc) is passes
    assert type(translate(exc, "connect")) is expected


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_a_failed_connection_is_classified_by_libpq_s_reason(reason: str) -> None:
    passes, expected = REASONS[reason]
    exc = psycopg.OperationalError(PREFIX + reason)
    assert is_transient(exc) is passes
    assert connect_failure_is_permanent(exc) is not passes
    error = translate(exc, "connect")
    assert type(error) is expected
    first_line = " ".join(reason.split())
    assert first_line in str(error)  # libpq's reason, on one line
    assert "connection failed:" not in str(error)


def test_real_connect_failures_are_classified(cira_db_url: str) -> None:
    with pytest.raises(psycopg.OperationalError) as missing:
        psycopg.connect(make_conninfo(cira_db_url, dbname="cira_no_such_db"))
    assert not is_transient(missing.value)
    assert isinstance(translate(missing.value, "connect"), ConfigurationError)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect("postgresql://app@127.0.0.1:1/app", connect_timeout=1)
    assert is_transient(refused.value)
    assert isinstance(translate(refused.value, "connect"), DatabaseUnavailableError)


def test_errors_with_a_sqlstate_keep_their_rules() -> None:
    assert is_transient(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_transient(psycopg.errors.SerializationFailure("could not serialize"))
    assert not is_transient(psycopg.errors.UndefinedTable("relation does not exist"))
    assert not is_transient(psycopg.errors.InvalidPassword("password authentication failed"))
    error = translate(psycopg.errors.InvalidPassword("x"), "connect")
    assert isinstance(error, AuthenticationError)
    # "does not exist" at query time is the statement's problem, not the configuration's.
    undefined = translate(psycopg.errors.UndefinedTable("relation does not exist"), "read")
    assert type(undefined) is DatabaseError


def test_a_stale_prepared_statement_is_known_by_the_server_function_that_refuses_it(
    cira_db_url: str,
) -> None:
    select = "SELECT id, note FROM probe"
    with (
        psycopg.connect(cira_db_url, autocommit=True) as admin,
        psycopg.connect(cira_db_url, autocommit=True, prepare_threshold=0) as conn,
    ):
        admin.execute("CREATE TABLE probe (id int, note varchar(20))")
        conn.execute(select)  # prepared on its first run
        admin.execute("ALTER TABLE probe ALTER COLUMN note TYPE text")  # a migration elsewhere
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(select)
        with pytest.raises(psycopg.Error) as unsupported:
            conn.execute("SELECT count(*) FROM probe FOR UPDATE")
    stale = refused.value
    assert isinstance(stale, psycopg.errors.FeatureNotSupported)
    assert is_stale_plan(stale)
    assert is_transient(stale)  # a new connection plans the statement afresh
    error = translate(stale, "claim a job")
    assert isinstance(error, DatabaseUnavailableError)
    assert "no longer matches the schema" in str(error)
    assert "that statement did not run" in str(error)
    # The same SQLSTATE raised for anything else is a refusal like any other.
    other = unsupported.value
    assert isinstance(other, psycopg.errors.FeatureNotSupported)
    assert not is_stale_plan(other)
    assert not is_transient(other)
    assert type(translate(other, "read")) is DatabaseError


def test_a_pool_timeout_is_never_retried_and_names_a_cause_when_given() -> None:
    timeout = psycopg_pool.PoolTimeout("couldn't get a connection after 1.00 sec")
    assert not is_transient(timeout)
    assert "pool exhausted" in str(translate(timeout, "read"))
    try:
        raise timeout from psycopg.OperationalError(PREFIX + "Connection refused")
    except psycopg_pool.PoolTimeout as exc:
        error = translate(exc, "read")
    assert isinstance(error, DatabaseUnavailableError)
    assert "could be made" in str(error)
    assert "Connection refused" in str(error)
    assert not is_transient(psycopg_pool.PoolClosed("closed"))


def test_wrap_errors_translates_once_with_the_given_mapper() -> None:
    def mapper(exc: psycopg.Error, operation: str) -> CiraDbError:
        return DatabaseError(f"mapped {operation}")

    with pytest.raises(DatabaseError, match="mapped op") as info, wrap_errors("op", mapper):
        raise psycopg.errors.UndefinedTable("x")
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)
    with pytest.raises(ConfigurationError), wrap_errors("op"):
        raise ConfigurationError("passes through untouched")


secrets = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs")), min_size=1, max_size=30
).map(lambda s: "Zq9" + s)


@given(secrets)
def test_a_password_never_reaches_the_message(password: str) -> None:
    for text in (
        f"{PREFIX}FATAL: bad option in 'host=h password={password} user=u'",
        f"{PREFIX}could not connect to postgresql://app:{password}@h/db",
    ):
        assert password not in libpq_reason(psycopg.OperationalError(text))
        assert password not in str(translate(psycopg.OperationalError(text), "connect"))


@given(secrets.filter(lambda s: "%" not in s and "@" not in s and "/" not in s))
def test_an_unparsable_url_is_a_configuration_error_that_quotes_nothing(password: str) -> None:
    url = f"postgresql://app:{password}%zz@db.example.com/app"
    with pytest.raises(psycopg.ProgrammingError) as info:
        psycopg.connect(url)
    error = translate(info.value, "connect")
    assert isinstance(error, ConfigurationError)
    assert password not in str(error)
    assert "percent-encode" in str(error)


def test_an_unknown_connection_option_is_named() -> None:
    with pytest.raises(psycopg.ProgrammingError) as info:
        psycopg.connect("host=db.example.com cira_bogus=1")
    error = translate(info.value, "connect")
    assert isinstance(error, ConfigurationError)
    assert 'invalid connection option "cira_bogus"' in str(error)
