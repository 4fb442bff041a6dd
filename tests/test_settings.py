"""Connection settings: sources, TLS defaults, proxy and Lambda detection, secrecy.

No database is needed: everything here is decided before a connection is made
(one test asks a real server which timeouts it accepts).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from cira_db import Database, DatabaseSettings
from cira_db.errors import CiraDbError, ConfigurationError

SECRET = "Zq7-s3cr3t-PW-8841"
REMOTE = "db.example.com"
PROXY = "name.proxy-abc123.us-east-1.rds.amazonaws.com"
CUSTOM_PROXY = "x.endpoint.proxy-abc.eu-west-1.rds.amazonaws.com"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
WEAK_MODES = ("disable", "allow", "prefer", "require", "verify-ca")


def remote_url(host: str = REMOTE, query: str = "") -> str:
    return f"postgresql://app:{SECRET}@{host}:5432/cira{query}"


def config_error(**kwargs: Any) -> ConfigurationError:
    """The ConfigurationError raised by loading ``kwargs`` and deriving the conninfo."""
    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings.load(**kwargs).conninfo_dict()
    return info.value


# -- sources: URL or host parts -------------------------------------------------------


def test_url_is_parsed_into_connection_parameters() -> None:
    params = DatabaseSettings.load(url=remote_url()).conninfo_dict()
    assert params["host"] == REMOTE
    assert params["port"] == "5432"
    assert params["dbname"] == "cira"
    assert params["user"] == "app"
    assert params["password"] == SECRET
    assert params["application_name"] == "cira_db"
    assert params["connect_timeout"] == "10"


def test_host_parts_build_the_connection_parameters() -> None:
    settings = DatabaseSettings.load(
        host=REMOTE, port=6543, dbname="cira", user="app", password=SECRET
    )
    params = settings.conninfo_dict()
    assert params["host"] == REMOTE
    assert params["port"] == "6543"
    assert params["dbname"] == "cira"
    assert params["user"] == "app"
    assert params["password"] == SECRET


def test_separate_fields_override_the_url_parts() -> None:
    params = DatabaseSettings.load(
        url="postgresql://someone@localhost/first", dbname="second", user="app", password=SECRET
    ).conninfo_dict()
    assert (params["dbname"], params["user"], params["password"]) == ("second", "app", SECRET)


def test_url_and_host_together_are_refused_naming_both_variables() -> None:
    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings.load(url=remote_url(), host=REMOTE)
    message = str(info.value)
    assert "CIRA_DB_URL" in message
    assert "CIRA_DB_HOST" in message
    assert SECRET not in message


def test_url_and_host_from_the_environment_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRA_DB_URL", remote_url())
    monkeypatch.setenv("CIRA_DB_HOST", REMOTE)
    with pytest.raises(ConfigurationError, match=r"CIRA_DB_URL.*CIRA_DB_HOST") as info:
        DatabaseSettings.load()
    assert SECRET not in str(info.value)


def test_nothing_configured_says_which_variable_to_set() -> None:
    error = config_error()
    assert "CIRA_DB_URL" in str(error)
    assert "CIRA_DB_HOST" in str(error)


def test_empty_url_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRA_DB_URL", "")
    with pytest.raises(ConfigurationError, match="CIRA_DB_URL"):
        DatabaseSettings.load().conninfo_dict()


def test_nothing_configured_database_fails_on_use_not_on_construction() -> None:
    db = Database.from_env(pool=False)
    assert "incomplete settings" in repr(db)
    with pytest.raises(ConfigurationError, match="CIRA_DB_URL"):
        db.connect_direct()


def test_invalid_url_is_a_configuration_error_without_the_password() -> None:
    error = config_error(url=f"postgresql://app:{SECRET}@{REMOTE}/cira?no_such_option=1")
    assert "CIRA_DB_URL" in str(error)
    assert SECRET not in str(error)
    assert error.__cause__ is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRA_DB_HOST", REMOTE)
    monkeypatch.setenv("CIRA_DB_PORT", "6432")
    monkeypatch.setenv("CIRA_DB_DBNAME", "cira")
    monkeypatch.setenv("CIRA_DB_USER", "app")
    monkeypatch.setenv("CIRA_DB_PASSWORD", SECRET)
    monkeypatch.setenv("CIRA_DB_SSLROOTCERT", "/opt/certs/rds.pem")
    monkeypatch.setenv("CIRA_DB_POOL_MAX_SIZE", "7")
    monkeypatch.setenv("CIRA_DB_CONNECT_TIMEOUT", "3")
    settings = DatabaseSettings.load()
    params = settings.conninfo_dict()
    assert params["host"] == REMOTE
    assert params["port"] == "6432"
    assert params["dbname"] == "cira"
    assert params["user"] == "app"
    assert params["password"] == SECRET
    assert params["sslrootcert"] == "/opt/certs/rds.pem"
    assert params["connect_timeout"] == "3"
    assert settings.pool_sizes() == (1, 7)


def test_url_environment_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRA_DB_URL", remote_url())
    db = Database.from_env(pool=False)
    assert db.settings.conninfo_dict()["host"] == REMOTE
    assert "app@db.example.com:5432/cira" in repr(db)


def test_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRA_DB_HOST", "env.example.com")
    monkeypatch.setenv("CIRA_DB_PORT", "1111")
    settings = DatabaseSettings.load(host=REMOTE, port=2222)
    assert settings.conninfo_dict()["host"] == REMOTE
    assert settings.conninfo_dict()["port"] == "2222"


def test_database_refuses_settings_and_url_together() -> None:
    settings = DatabaseSettings.load(url=remote_url())
    with pytest.raises(ConfigurationError, match="not both"):
        Database(remote_url(), settings=settings)


def test_unopened_pooled_database_refuses_connections() -> None:
    db = Database(remote_url())
    assert not db.is_open
    with pytest.raises(ConfigurationError, match="not open"), db.connection():
        pass  # pragma: no cover - never reached


# -- TLS -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        remote_url(),
        remote_url("10.0.0.12"),
        remote_url("[2001:db8::1]"),
        "postgresql://app@localhost,db.example.com/cira",
    ],
)
def test_remote_hosts_default_to_verify_full(url: str) -> None:
    assert DatabaseSettings.load(url=url).conninfo_dict()["sslmode"] == "verify-full"


def test_remote_host_parts_default_to_verify_full() -> None:
    assert DatabaseSettings.load(host=REMOTE).conninfo_dict()["sslmode"] == "verify-full"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@localhost/cira",
        "postgresql://app@LOCALHOST./cira",
        "postgresql://app@127.0.0.1/cira",
        "postgresql://app@127.0.0.53/cira",
        "postgresql://app@[::1]/cira",
        "postgresql:///cira",
        "postgresql:///cira?host=/var/run/postgresql",
        "host=/tmp dbname=cira",
        "postgresql://app@localhost,127.0.0.1/cira",
    ],
)
def test_local_hosts_and_sockets_keep_libpq_default(url: str) -> None:
    assert "sslmode" not in DatabaseSettings.load(url=url).conninfo_dict()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "/var/run/postgresql"])
def test_local_host_parts_keep_libpq_default(host: str) -> None:
    assert "sslmode" not in DatabaseSettings.load(host=host).conninfo_dict()


@pytest.mark.parametrize("mode", WEAK_MODES)
def test_weaker_sslmode_for_a_remote_host_is_refused(mode: str) -> None:
    error = config_error(url=remote_url(), sslmode=mode)
    assert f"sslmode={mode}" in str(error)
    assert "CIRA_DB_ALLOW_UNVERIFIED_TLS" in str(error)
    assert SECRET not in str(error)


@pytest.mark.parametrize("mode", WEAK_MODES)
def test_weaker_sslmode_in_the_url_of_a_remote_host_is_refused(mode: str) -> None:
    error = config_error(url=remote_url(query=f"?sslmode={mode}"))
    assert f"sslmode={mode}" in str(error)
    assert SECRET not in str(error)


@pytest.mark.parametrize("mode", WEAK_MODES)
def test_weaker_sslmode_is_allowed_when_asked_for(mode: str) -> None:
    params = DatabaseSettings.load(
        url=remote_url(), sslmode=mode, allow_unverified_tls=True
    ).conninfo_dict()
    assert params["sslmode"] == mode


def test_weaker_sslmode_allowed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRA_DB_URL", remote_url())
    monkeypatch.setenv("CIRA_DB_SSLMODE", "require")
    with pytest.raises(ConfigurationError):
        DatabaseSettings.load().conninfo_dict()
    monkeypatch.setenv("CIRA_DB_ALLOW_UNVERIFIED_TLS", "true")
    assert DatabaseSettings.load().conninfo_dict()["sslmode"] == "require"


@pytest.mark.parametrize("mode", SSL_MODES)
def test_any_sslmode_is_accepted_for_a_local_host(mode: str) -> None:
    params = DatabaseSettings.load(url="postgresql://app@localhost/cira", sslmode=mode)
    assert params.conninfo_dict()["sslmode"] == mode


def test_explicit_verify_full_and_root_certificate_are_passed_on() -> None:
    params = DatabaseSettings.load(
        url=remote_url(), sslmode="verify-full", sslrootcert="/certs/global-bundle.pem"
    ).conninfo_dict()
    assert params["sslmode"] == "verify-full"
    assert params["sslrootcert"] == "/certs/global-bundle.pem"


def test_describe_names_the_target_and_tls_mode_only() -> None:
    described = DatabaseSettings.load(url=remote_url()).describe()
    assert described == "app@db.example.com:5432/cira sslmode=verify-full"


# -- RDS Proxy and Lambda ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        PROXY,
        CUSTOM_PROXY,
        "NAME.PROXY-ABC123.US-EAST-1.RDS.AMAZONAWS.COM",
        PROXY + ".",
        "name.proxy-abc123.cn-north-1.rds.amazonaws.com.cn",
    ],
)
def test_rds_proxy_endpoints_are_detected(host: str) -> None:
    settings = DatabaseSettings.load(url=remote_url(host))
    assert settings.behind_proxy() is True
    assert settings.prepare_threshold() is None


@pytest.mark.parametrize(
    "host",
    [
        "mydb.abc123xyz.us-east-1.rds.amazonaws.com",
        "mycluster.cluster-abc123xyz.us-east-1.rds.amazonaws.com",
        "mycluster.cluster-ro-abc123xyz.us-east-1.rds.amazonaws.com",
        "name.proxy-abc123.us-east-1.rds.amazonaws.com.example.org",
        "proxy-abc123.us-east-1.rds.amazonaws.com",
        REMOTE,
        "localhost",
    ],
)
def test_instance_cluster_and_other_hosts_are_not_proxies(host: str) -> None:
    settings = DatabaseSettings.load(url=remote_url(host))
    assert settings.behind_proxy() is False
    assert settings.prepare_threshold() == 5


def test_proxy_detection_can_be_overridden() -> None:
    assert DatabaseSettings.load(url=remote_url(PROXY), via_proxy=False).behind_proxy() is False
    forced = DatabaseSettings.load(url=remote_url(), via_proxy=True)
    assert forced.behind_proxy() is True
    assert forced.prepare_threshold() is None


def test_prepared_statements_can_be_forced_either_way() -> None:
    assert DatabaseSettings.load(url=remote_url(PROXY), prepare_statements=True).prepare_threshold()
    assert (
        DatabaseSettings.load(url=remote_url(), prepare_statements=False).prepare_threshold()
        is None
    )


def test_lambda_disables_prepared_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DatabaseSettings.load(url=remote_url())
    assert settings.prepare_threshold() == 5
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "cira-api")
    assert settings.prepare_threshold() is None


def test_pool_sizes_outside_lambda() -> None:
    assert DatabaseSettings.load(url=remote_url()).pool_sizes() == (1, 4)


def test_pool_sizes_inside_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "cira-api")
    assert DatabaseSettings.load(url=remote_url()).pool_sizes() == (0, 1)


def test_explicit_pool_sizes_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "cira-api")
    assert DatabaseSettings.load(url=remote_url(), pool_max_size=3).pool_sizes() == (0, 3)
    assert DatabaseSettings.load(pool_min_size=2, pool_max_size=5).pool_sizes() == (2, 5)
    # An explicit max below the default min never yields min > max.
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    assert DatabaseSettings.load(pool_min_size=0, pool_max_size=1).pool_sizes() == (0, 1)


def test_pool_min_above_max_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="CIRA_DB_POOL_MIN_SIZE"):
        DatabaseSettings.load(pool_min_size=5, pool_max_size=2)


# -- secrets ---------------------------------------------------------------------------------


def test_secrets_are_not_in_repr_or_str_of_settings() -> None:
    for settings in (
        DatabaseSettings.load(url=remote_url()),
        DatabaseSettings.load(host=REMOTE, user="app", password=SECRET),
        DatabaseSettings.load(url=remote_url(PROXY), migration_url=remote_url()),
    ):
        assert SECRET not in repr(settings)
        assert SECRET not in str(settings)
        assert SECRET not in settings.describe()
        assert SECRET not in settings.describe(for_migrations=True)
        assert SECRET not in repr(settings.model_dump())
        assert SECRET not in settings.model_dump_json()


def test_secrets_are_not_in_repr_or_str_of_database() -> None:
    for db in (
        Database(remote_url()),
        Database(host=REMOTE, user="app", password=SECRET, pool=False),
        Database(remote_url(), sslmode="require"),  # unusable settings still repr safely
    ):
        assert SECRET not in repr(db)
        assert SECRET not in str(db)
    assert "app@db.example.com" in repr(Database(remote_url()))


def test_settings_are_frozen_and_say_so_without_the_value() -> None:
    settings = DatabaseSettings.load(url=remote_url())
    with pytest.raises(ConfigurationError, match="frozen") as info:
        settings.password = SECRET  # type: ignore[misc,assignment]
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError, match="frozen"):
        del settings.host
    assert settings.password is None
    copy = settings.model_copy(update={"pool_max_size": 2})
    assert (copy.pool_max_size, settings.pool_max_size) == (2, None)


def test_unknown_argument_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="CIRA_DB_NO_SUCH_FIELD"):
        DatabaseSettings.load(url=remote_url(), no_such_field=SECRET)


# -- bad input, generated --------------------------------------------------------------------

_settings = hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
_env_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=30,
)


def _assert_safe(error: CiraDbError) -> None:
    assert isinstance(error, ConfigurationError)
    assert SECRET not in str(error)
    assert not isinstance(error.__cause__, PydanticValidationError)


@_settings
@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_port_out_of_range_is_a_configuration_error(port: int) -> None:
    with pytest.raises(ConfigurationError, match="CIRA_DB_PORT") as info:
        DatabaseSettings.load(host=REMOTE, password=SECRET, port=port)
    _assert_safe(info.value)


@_settings
@given(mode=st.text(max_size=20).filter(lambda m: m not in SSL_MODES))
@example(mode="VERIFY-FULL")
@example(mode="verify_full")
def test_garbage_sslmode_is_a_configuration_error(mode: str) -> None:
    with pytest.raises(ConfigurationError, match="CIRA_DB_SSLMODE") as info:
        DatabaseSettings.load(url=remote_url(), sslmode=mode)
    _assert_safe(info.value)


@_settings
@given(
    name=st.sampled_from(
        ["PORT", "SSLMODE", "POOL_MIN_SIZE", "POOL_MAX_SIZE", "CONNECT_TIMEOUT", "POOL_TIMEOUT"]
    ),
    value=_env_text,
)
@example(name="PORT", value="70000")
@example(name="PORT", value="0")
@example(name="PORT", value="54 32")
@example(name="SSLMODE", value="verify-fool")
@example(name="POOL_TIMEOUT", value="-1")
def test_environment_values_load_or_give_a_configuration_error(name: str, value: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIRA_DB_PASSWORD", SECRET)
        mp.setenv("CIRA_DB_HOST", REMOTE)
        mp.setenv(f"CIRA_DB_{name}", value)
        try:
            settings = DatabaseSettings.load()
        except ConfigurationError as exc:
            error: ConfigurationError | None = exc
        else:
            error = None
    if error is not None:
        _assert_safe(error)
        assert f"CIRA_DB_{name}" in str(error)
        return
    # Accepted values are valid ones.
    assert 1 <= settings.port <= 65535
    assert settings.sslmode is None or settings.sslmode in SSL_MODES
    minimum, maximum = settings.pool_sizes()
    assert 0 <= minimum <= maximum
    assert maximum >= 1
    assert settings.connect_timeout >= 1
    assert settings.pool_timeout > 0


@_settings
@given(tail=st.text(max_size=40).filter(lambda t: "\x00" not in t))
@example(tail="h:5432/db?sslmode=bogus")
@example(tail="h/db?bogus=1")
@example(tail="h/db?sslmode=require")
@example(tail="[::1/db")
@example(tail="%zz/db")
def test_any_url_gives_parameters_or_a_safe_configuration_error(tail: str) -> None:
    url = f"postgresql://app:{SECRET}@{tail}"
    try:
        settings = DatabaseSettings.load(url=url)
        params = settings.conninfo_dict()
        described = settings.describe()
    except CiraDbError as exc:
        _assert_safe(exc)
        return
    assert params["password"] == SECRET
    assert SECRET not in described
    assert SECRET not in repr(settings)


def test_pghost_decides_the_tls_default_when_no_host_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGHOST", "db.example.com")
    params = DatabaseSettings.load(url="postgresql:///cira").conninfo_dict()
    assert params["sslmode"] == "verify-full"
    monkeypatch.setenv("PGHOST", "/var/run/postgresql")
    assert "sslmode" not in DatabaseSettings.load(url="postgresql:///cira").conninfo_dict()


def test_remote_hostaddr_behind_a_local_name_still_needs_verify_full() -> None:
    params = DatabaseSettings.load(
        url="postgresql://app@localhost/cira?hostaddr=192.0.2.10"
    ).conninfo_dict()
    assert params["sslmode"] == "verify-full"


def test_explicit_url_ignores_target_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRA_DB_DBNAME", "prod")
    monkeypatch.setenv("CIRA_DB_USER", "admin")
    monkeypatch.setenv("CIRA_DB_PASSWORD", "prod-Secret")
    monkeypatch.setenv("CIRA_DB_MIGRATION_URL", "postgresql://admin@10.0.0.9/prod")
    settings = DatabaseSettings.load(url="postgresql://app@localhost/cira_test")
    for for_migrations in (False, True):
        params = settings.conninfo_dict(for_migrations=for_migrations)
        assert (params["dbname"], params["user"]) == ("cira_test", "app")
        assert "password" not in params
    # without an explicit URL the variables are the configuration
    monkeypatch.setenv("CIRA_DB_HOST", "localhost")
    assert DatabaseSettings.load().conninfo_dict()["dbname"] == "prod"


# -- the constructor validates like load() ----------------------------------------------------

_not_an_int = st.text(max_size=12).filter(lambda t: not t.strip().lstrip("+-").isdigit())


@_settings
@given(port=_not_an_int)
@example(port="x")
@example(port="5432x")
@example(port="")
def test_constructor_with_a_bad_port_names_the_variable(port: str) -> None:
    with pytest.raises(ConfigurationError, match="CIRA_DB_PORT") as info:
        DatabaseSettings(url=remote_url(), port=port)
    _assert_safe(info.value)
    assert info.value.__context__ is None  # no pydantic error (with its input) rides along
    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings(url=remote_url(), port=f"Qz9{port}")
    assert "Qz9" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_max_size", "many"),
        ("connect_timeout", 0),
        ("sslmode", "verify_full"),
        ("retry_attempts", 99),
        ("iam_auth", "perhaps"),
    ],
)
def test_constructor_refuses_bad_values_as_configuration_errors(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"CIRA_DB_{field.upper()}") as info:
        DatabaseSettings(url=remote_url(), **{field: value})
    assert not isinstance(info.value.__context__, PydanticValidationError)
    assert SECRET not in str(info.value)


def test_constructor_refuses_unknown_fields_and_secret_echo() -> None:
    with pytest.raises(ConfigurationError, match="CIRA_DB_PASSWD") as info:
        DatabaseSettings(url=remote_url(), passwd=SECRET)  # type: ignore[call-arg]
    assert SECRET not in str(info.value)
    assert info.value.__context__ is None


def test_constructor_reads_no_environment_but_load_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRA_DB_POOL_MAX_SIZE", "9")
    monkeypatch.setenv("cira_db_pool_timeout", "3")  # any case, as before
    monkeypatch.setenv("CIRA_DB_APPLICATION_NAME", "")  # empty: unset
    monkeypatch.setenv("CIRA_DB_TEST_SOMETHING_ELSE", "ignored")
    assert DatabaseSettings(url=remote_url()).pool_max_size is None
    loaded = DatabaseSettings.load(url=remote_url())
    assert (loaded.pool_max_size, loaded.pool_timeout) == (9, 3.0)
    assert loaded.application_name == "cira_db"
    assert DatabaseSettings.load(url=remote_url(), pool_max_size=2).pool_max_size == 2


# -- timeouts PostgreSQL can hold ---------------------------------------------------------------

TIMEOUT_FIELDS = ("statement_timeout", "migration_lock_timeout", "migration_statement_timeout")
UNIT_MS = {"": 1, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}
MAX_MS = 2_147_483_647


@_settings
@given(
    field=st.sampled_from(TIMEOUT_FIELDS),
    unit=st.sampled_from(sorted(UNIT_MS)),
    number=st.integers(min_value=0, max_value=10**22),
)
@example(field="statement_timeout", unit="h", number=99999999999999999999)
@example(field="statement_timeout", unit="ms", number=MAX_MS + 1)
@example(field="migration_lock_timeout", unit="min", number=35792)
@example(field="migration_statement_timeout", unit="s", number=2147484)
def test_timeouts_beyond_postgresql_range_are_refused(field: str, unit: str, number: int) -> None:
    value = f"{number}{unit}"
    if number * UNIT_MS[unit] <= MAX_MS:
        assert getattr(DatabaseSettings(url=remote_url(), **{field: value}), field) == value
        return
    variable = f"CIRA_DB_{field.upper()}"
    with pytest.raises(ConfigurationError, match=variable) as info:
        DatabaseSettings.load(url=remote_url(), **{field: value})
    assert "2147483647 ms" in str(info.value)


@pytest.mark.parametrize("value", ["30 s", "1.5s", "10d", "-1", "1e3", "", "30S"])
@pytest.mark.parametrize("field", TIMEOUT_FIELDS)
def test_timeouts_must_be_a_number_and_unit(field: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"CIRA_DB_{field.upper()}"):
        DatabaseSettings(url=remote_url(), **{field: value})


@pytest.mark.parametrize(
    "value",
    ["0", "2147483647", "2147483647ms", "2147483s", "35791min", "596h", "2147483648", "597h"],
)
def test_the_timeout_limit_is_the_one_postgresql_applies(cira_db_url: str, value: str) -> None:
    """The settings accept exactly what a real server accepts for statement_timeout."""
    try:
        DatabaseSettings(url=remote_url(), statement_timeout=value)
    except ConfigurationError:
        accepted = False
    else:
        accepted = True
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", [value])
        except psycopg.errors.InvalidParameterValue:
            server_accepts = False
        else:
            server_accepts = True
    assert accepted is server_accepts


# -- cold start ---------------------------------------------------------------------------------


def test_import_loads_no_settings_framework_and_no_aws() -> None:
    code = (
        "import sys, cira_db\n"
        "from cira_db import DatabaseSettings\n"
        "DatabaseSettings.load(url='postgresql://app@db.example.com/cira').describe()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic_settings', 'dotenv', 'boto3', 'botocore'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_a_cold_start_loads_no_pydantic_until_the_settings_model_is_asked_for() -> None:
    """Import, settings from the environment and the plan: pydantic stays out until named."""
    code = (
        "import os, sys\n"
        "os.environ.update(CIRA_DB_URL='postgresql://app:pw@db.example.com/cira',"
        " CIRA_DB_POOL_MAX_SIZE='2', CIRA_DB_IAM_AUTH='false', CIRA_DB_SSLMODE='verify-full')\n"
        "from cira_db import Database\n"
        "db = Database.from_env()\n"
        "db.connection_plan()\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0].startswith('pydantic'))\n"
        "settings = db.settings\n"
        "assert type(settings).__name__ == 'DatabaseSettings', type(settings)\n"
        "assert settings.pool_max_size == 2 and settings.url is not None\n"
        "assert 'pydantic' in sys.modules\n"
        "print(','.join(before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_an_async_cold_start_loads_no_pydantic_until_the_settings_model_is_asked_for() -> None:
    """The same for `cira_db.aio`: import, `AsyncDatabase` from the environment and from a
    URL, its repr and plan; pydantic stays out until `AsyncDatabase.settings` is named."""
    code = (
        "import asyncio, os, sys\n"
        "os.environ.update(CIRA_DB_URL='postgresql://app:pw@db.example.com/cira',"
        " CIRA_DB_POOL_MAX_SIZE='2', CIRA_DB_IAM_AUTH='false', CIRA_DB_SSLMODE='verify-full')\n"
        "from cira_db.aio import AsyncDatabase, AsyncJobRepository, AsyncJobResultRepository\n"
        "db = AsyncDatabase.from_env()\n"
        "other = AsyncDatabase('postgresql://app:pw@db.example.com/cira', pool_timeout='2.5')\n"
        "assert 'db.example.com' in repr(db) + repr(other)\n"
        "asyncio.run(db.connection_plan())\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0].startswith('pydantic'))\n"
        "settings = db.settings\n"
        "assert type(settings).__name__ == 'DatabaseSettings', type(settings)\n"
        "assert settings.pool_max_size == 2 and settings.url is not None\n"
        "assert other.settings.pool_timeout == 2.5\n"
        "assert 'pydantic' in sys.modules\n"
        "print(','.join(before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_cold_start_to_the_first_call_loads_no_pydantic(
    cira_db_url: str, face: str, traced: bool
) -> None:
    """A Lambda cold start of either face, on a real server: import, settings from the
    environment, open the pool, one repository call; pydantic is never imported, not
    even by the call's span (which names the server from the database's settings)."""
    if traced:
        pytest.importorskip("opentelemetry.sdk.trace")  # not in the lowest-dependency venv
    tracing = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "trace.set_tracer_provider(TracerProvider())\n"
    )
    sync = (
        "from cira_db import Database, JobRepository\n"
        "with Database.from_env() as db:\n"
        "    assert JobRepository(db).find(str(uuid.uuid4()), client_id='cold') is None\n"
    )
    aio = (
        "import asyncio\n"
        "from cira_db.aio import AsyncDatabase, AsyncJobRepository\n"
        "async def main() -> None:\n"
        "    async with AsyncDatabase.from_env() as db:\n"
        "        job = await AsyncJobRepository(db).find(str(uuid.uuid4()), client_id='cold')\n"
        "        assert job is None\n"
        "asyncio.run(main())\n"
    )
    code = (
        "import os, sys, uuid\n"
        "os.environ.update(CIRA_DB_URL=sys.argv[1], AWS_LAMBDA_FUNCTION_NAME='cold-start')\n"
        + (tracing if traced else "")
        + (sync if face == "sync" else aio)
        + "print(','.join(sorted(m for m in sys.modules if m.startswith('pydantic'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, cira_db_url], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""


# Values a CIRA_DB_* variable or an argument may hold: plain ones the light path
# takes, and ones it must leave to pydantic (spaces, signs, other spellings, types).
_CANDIDATES = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "2",
            "5",
            "10",
            "65535",
            "65536",
            "0.5",
            "1.5",
            "007",
            " 5",
            "5 ",
            "+5",
            "-1",
            "1_000",
            "1e3",
            "nan",
            "inf",
            "true",
            "false",
            "True",
            "yes",
            "off",
            "",
            "30s",
            "15min",
            "597h",
            "2147483648",
            "x",
            "require",
            "verify-full",
            "VERIFY-FULL",
            "prefer",
            "postgresql://app@db.example.com/cira",
            "db.example.com",
            "app\n",
        ]
    ),
    st.integers(min_value=-2, max_value=70_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=5),
)


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from(sorted(DatabaseSettings.model_fields)), _CANDIDATES, max_size=4
    )
)
def test_the_light_path_agrees_with_the_pydantic_model(values: dict[str, Any]) -> None:
    """`load_settings` is `DatabaseSettings.load`: the light path takes only what pydantic
    takes, with the same values, and leaves the rest (and every refusal) to pydantic."""
    from cira_db._settings import Settings, load_settings

    try:
        model: DatabaseSettings | None = DatabaseSettings.load(**values)
    except ConfigurationError:
        model = None
    try:
        loaded = load_settings(**values)
    except ConfigurationError:
        assert model is None
        return
    assert model is not None
    if isinstance(loaded, Settings):
        for name in DatabaseSettings.model_fields:
            light, strict = getattr(loaded, name), getattr(model, name)
            if hasattr(strict, "get_secret_value"):
                light, strict = light.get_secret_value(), strict.get_secret_value()
            assert (type(light), light) == (type(strict), strict), name
        assert loaded.as_model() == model
        assert _described(loaded) == _described(model)


@hypothesis_settings(max_examples=150, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from(sorted(DatabaseSettings.model_fields)), _CANDIDATES, max_size=4
    )
)
def test_async_database_settles_settings_as_database_does(values: dict[str, Any]) -> None:
    """`AsyncDatabase` builds its settings the sync way: the same refusals, word for word,
    and the same settings (light or pydantic) when the values are accepted."""
    from cira_db.aio import AsyncDatabase

    def built(make: Any) -> Any:
        try:
            return make(**values)
        except ConfigurationError as exc:
            return f"refused: {exc}"

    for sync, aio in (
        (built(Database), built(AsyncDatabase)),
        (built(Database.from_env), built(AsyncDatabase.from_env)),
    ):
        if isinstance(sync, str) or isinstance(aio, str):
            assert aio == sync
            continue
        assert type(aio._settings) is type(sync._settings)
        assert aio.settings == sync.settings
        assert repr(aio).replace("AsyncDatabase", "Database") == repr(sync)


def _described(settings: Any) -> str:
    try:
        return str(settings.describe())
    except ConfigurationError as exc:
        return f"refused: {exc}"


def test_the_light_field_table_matches_the_model() -> None:
    """Names, defaults and numeric bounds of `cira_db._settings.FIELDS` are the model's."""
    from cira_db._settings import FIELDS

    assert list(FIELDS) == list(DatabaseSettings.model_fields)
    for name, field in DatabaseSettings.model_fields.items():
        _kind, default, low, high, open_low = FIELDS[name]
        assert default == field.default, name
        bounds = {
            attr: getattr(m, attr)
            for m in field.metadata
            for attr in ("gt", "ge", "le", "lt")
            if hasattr(m, attr)
        }
        assert (low, high) == (bounds.get("gt", bounds.get("ge")), bounds.get("le")), name
        assert open_low == ("gt" in bounds), name
        assert "lt" not in bounds, name


def test_settings_from_the_environment_are_the_pydantic_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", remote_url())
    monkeypatch.setenv("CIRA_DB_POOL_TIMEOUT", "2.5")
    monkeypatch.setenv("CIRA_DB_VIA_PROXY", "true")
    db = Database.from_env(pool=False)
    assert db.settings == DatabaseSettings.load()
    assert db.settings is db.settings
    assert db.settings.pool_timeout == 2.5
    assert SECRET not in repr(db) + repr(db.settings) + repr(db._settings)
