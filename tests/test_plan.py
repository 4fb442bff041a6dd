"""The connection plan (cira_db._plan): target, locality, TLS, credentials, purpose.

Most checks need no server: the plan is decided before a connection is made.
Where a claim is about what libpq or PostgreSQL will do, a real connection
checks it. The security checks go through the public surface (`Database`,
`DatabaseSettings`) so that they hold whichever module implements the rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cira_db import Database, DatabaseSettings
from cira_db._plan import ConnectionPlan, is_local_host, plan_connection
from cira_db.errors import ConfigurationError

SECRET = "Zq7-s3cr3t-PW-8841"
REMOTE = "db.example.com"
REMOTE_IP = "192.0.2.10"  # TEST-NET-1: never routed
PROXY = "name.proxy-abc123.us-east-1.rds.amazonaws.com"
LIBPQ_VARIABLES = (
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGSSLMODE",
    "PGSSLROOTCERT",
)


@pytest.fixture(autouse=True)
def _no_libpq_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """libpq variables from the shell (or a ~/.pg_service.conf) must not decide these tests."""
    for name in LIBPQ_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def tls(url: str, **settings: Any) -> str | None:
    """The sslmode the plan sends for ``url`` (None: libpq's default, for local targets)."""
    return DatabaseSettings.load(url=url, **settings).conninfo_dict().get("sslmode")


def chain(error: BaseException) -> Iterator[BaseException]:
    """The error and everything linked to it as cause or context."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__]


def assert_not_anywhere(error: BaseException, secret: str) -> None:
    for item in chain(error):
        assert secret not in str(item), type(item)
        assert secret not in repr(item), type(item)
        assert all(secret not in repr(arg) for arg in item.args)
        assert all(secret not in repr(value) for value in vars(item).values())


def write_service(path: Path, name: str, **options: str) -> Path:
    lines = ["# a libpq service file", "[other]", f"host={REMOTE}", f"[{name}]"]
    lines += [f"{key}={value}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- locality: every host and hostaddr libpq will use ----------------------------------------


def test_pghostaddr_to_a_remote_address_behind_a_local_host_name_needs_verify_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reported hole: libpq connects to PGHOSTADDR even when the URL names localhost."""
    assert tls("postgresql://app@localhost/cira") is None
    monkeypatch.setenv("PGHOSTADDR", REMOTE_IP)
    assert tls("postgresql://app@localhost/cira") == "verify-full"
    with pytest.raises(ConfigurationError, match="sslmode=disable does not verify"):
        tls("postgresql://app@localhost/cira", sslmode="disable")


def test_pghostaddr_is_what_libpq_really_connects_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq takes PGHOSTADDR even with a host in the URL (so the plan must too).

    Uses the machine's PostgreSQL on 127.0.0.1:5432 (the test rig's embedded
    server listens on a Unix socket only).
    """
    monkeypatch.setenv("PGHOSTADDR", "127.0.0.1")
    url = "postgresql://postgres@no-such-host.invalid:5432/postgres?sslmode=disable"
    try:
        conn = psycopg.connect(url, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if "no-such-host" in str(exc) or "resolve" in str(exc):
            raise  # libpq looked the name up: PGHOSTADDR was not used
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 here ({type(exc).__name__})")
    with conn:
        assert conn.info.hostaddr == "127.0.0.1"


def test_loopback_pghostaddr_keeps_a_local_target_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOSTADDR", "127.0.0.1")
    assert tls("postgresql://app@localhost/cira") is None
    # ...but a loopback address does not make a remote host name local
    assert tls(f"postgresql://app@{REMOTE}/cira") == "verify-full"


def test_pghost_is_used_only_when_the_url_has_no_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", REMOTE)
    assert tls("postgresql:///cira") == "verify-full"
    assert tls("postgresql://app@localhost/cira") is None
    monkeypatch.setenv("PGHOST", "localhost,/tmp")
    assert tls("postgresql:///cira") is None
    monkeypatch.setenv("PGHOST", f"localhost,{REMOTE}")
    assert tls("postgresql:///cira") == "verify-full"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app@localhost/cira?hostaddr={REMOTE_IP}",
        f"postgresql://app@localhost,localhost/cira?hostaddr=127.0.0.1,{REMOTE_IP}",
        f"postgresql://app@localhost,{REMOTE}/cira",
        f"postgresql://app@/cira?host=/tmp,{REMOTE}",
        f"host=localhost hostaddr={REMOTE_IP} dbname=cira",
        f"hostaddr={REMOTE_IP} dbname=cira",
    ],
)
def test_any_remote_host_or_hostaddr_in_the_url_needs_verify_full(url: str) -> None:
    assert tls(url) == "verify-full"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@localhost,127.0.0.1/cira?hostaddr=127.0.0.1,",
        "postgresql://app@localhost/cira?hostaddr=::1",
        "host=/tmp,localhost dbname=cira",
    ],
)
def test_all_local_hosts_and_hostaddrs_stay_local(url: str) -> None:
    assert tls(url) is None


def test_service_in_the_url_is_resolved_from_pgservicefile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = write_service(tmp_path / "services.conf", "prod", host=REMOTE, dbname="cira")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    assert tls("postgresql:///?service=prod") == "verify-full"
    plan = plan_connection(DatabaseSettings.load(url="postgresql:///?service=prod"))
    assert plan.hosts == (REMOTE,)
    assert plan.describe().endswith("service=prod")
    # the URL's own host wins over the service's (libpq's order)
    assert tls("postgresql://app@localhost/?service=prod") is None


def test_pgservice_is_resolved_like_a_service_in_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = write_service(tmp_path / "services.conf", "prod", hostaddr=REMOTE_IP)
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGSERVICE", "prod")
    assert tls("postgresql://app@localhost/cira") == "verify-full"
    local = write_service(tmp_path / "local.conf", "prod", host="/var/run/postgresql")
    monkeypatch.setenv("PGSERVICEFILE", str(local))
    assert tls("postgresql:///cira") is None


def test_service_file_wins_over_pghost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    services = write_service(tmp_path / "services.conf", "prod", host=REMOTE)
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGHOST", "localhost")
    assert tls("postgresql:///cira?service=prod") == "verify-full"


def test_home_service_file_and_pgsysconfdir_are_read_in_libpq_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    system = tmp_path / "etc"
    system.mkdir()
    write_service(system / "pg_service.conf", "prod", host=REMOTE)
    monkeypatch.setenv("PGSYSCONFDIR", str(system))
    assert tls("postgresql:///cira?service=prod") == "verify-full"
    # the user's ~/.pg_service.conf is read first, and ends the search
    write_service(home / ".pg_service.conf", "prod", host="localhost")
    assert tls("postgresql:///cira?service=prod") is None


def test_a_service_that_cannot_be_found_is_refused_not_guessed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="PGSYSCONFDIR") as info:
        tls("postgresql://app@localhost/cira?service=prod")
    assert "service= in the URL" in str(info.value)
    monkeypatch.setenv("PGSERVICE", "prod")
    monkeypatch.setenv("PGSERVICEFILE", str(write_service(tmp_path / "s.conf", "staging")))
    with pytest.raises(ConfigurationError, match="PGSERVICE") as info:
        tls("postgresql://app@localhost/cira")
    assert "s.conf" in str(info.value)


def test_service_file_errors_name_the_line_not_its_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = tmp_path / "s.conf"
    services.write_text(f"[prod]\nhost={REMOTE}\npassword {SECRET}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    with pytest.raises(ConfigurationError, match="line 3") as info:
        tls("postgresql:///cira?service=prod")
    assert_not_anywhere(info.value, SECRET)


def test_a_service_from_a_file_really_connects(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cira_db_url: str
) -> None:
    """The plan reads a service file the way libpq does: the same file connects."""
    params = psycopg.conninfo.conninfo_to_dict(cira_db_url)
    options = {k: str(v) for k, v in params.items() if k in ("host", "port", "user", "dbname")}
    monkeypatch.setenv("PGSERVICEFILE", str(write_service(tmp_path / "s.conf", "t", **options)))
    password = params.get("password")
    db = Database("postgresql:///?service=t", password=password and str(password), pool=False)
    plan = db.connection_plan()
    assert plan.service == "t"
    assert plan.hosts == (options.get("host", ""),)
    assert plan.is_local  # the test server is on this machine
    with db.connection() as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (options.get("dbname"),)


@pytest.mark.parametrize(
    ("host", "local"),
    [
        (None, True),
        ("", True),
        ("/tmp", True),
        ("@abstract", True),
        ("localhost", True),
        ("127.0.0.2", True),
        ("[::1]", True),
        ("localhost,/tmp", True),
        (REMOTE, False),
        ("10.0.0.1", False),
        ("localhost," + REMOTE, False),
    ],
)
def test_is_local_host(host: str | None, local: bool) -> None:
    assert is_local_host(host) is local


def test_pgsslrootcert_is_respected_for_verify_full(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://app@{REMOTE}/cira"
    assert DatabaseSettings.load(url=url).conninfo_dict()["sslrootcert"].endswith(".pem")
    monkeypatch.setenv("PGSSLROOTCERT", "/etc/ssl/rds-global-bundle.pem")
    assert "sslrootcert" not in DatabaseSettings.load(url=url).conninfo_dict()


# -- what the plan exposes ---------------------------------------------------------------------


def test_plan_facts_hold_no_secret_and_describe_the_target() -> None:
    settings = DatabaseSettings.load(url=f"postgresql://app:{SECRET}@{PROXY}:5432/cira")
    plan = plan_connection(settings)
    assert isinstance(plan, ConnectionPlan)
    assert plan.purpose == "app"
    assert (plan.hosts, plan.port, plan.user, plan.dbname) == ((PROXY,), "5432", "app", "cira")
    assert plan.sslmode == "verify-full"
    assert plan.is_local is False
    assert plan.behind_proxy is True
    assert plan.prepare_threshold is None
    assert plan.describe() == f"app@{PROXY}:5432/cira sslmode=verify-full"
    assert SECRET not in repr(plan)
    assert SECRET not in plan.describe()
    assert plan.conninfo()["password"] == SECRET
    kwargs = plan.connect_kwargs()
    assert kwargs["autocommit"] is True
    assert kwargs["prepare_threshold"] is None


def test_describe_shows_a_hostaddr_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOSTADDR", REMOTE_IP)
    described = DatabaseSettings.load(url="postgresql://app@localhost/cira").describe()
    assert described == f"app@localhost:5432/cira sslmode=verify-full hostaddr={REMOTE_IP}"


def test_database_exposes_its_plan(cira_db_url: str) -> None:
    db = Database(cira_db_url, pool=False)
    plan = db.connection_plan()
    assert plan.purpose == "app"
    assert plan.is_local
    assert plan.describe() in repr(db)
    with db.connection() as conn:
        assert conn.info.dbname == plan.dbname


# -- purpose: the migrator's direct connection -------------------------------------------------


def test_migrations_through_a_pooler_are_refused_by_connect_direct() -> None:
    db = Database(f"postgresql://app:{SECRET}@{PROXY}/cira", pool=False)
    with pytest.raises(ConfigurationError, match="CIRA_DB_MIGRATION_URL") as info:
        db.connect_direct(for_migrations=True)
    assert "CIRA_DB_URL points at a transaction pooler" in str(info.value)
    db = Database(host="127.0.0.1", via_proxy=True, pool=False)
    with pytest.raises(ConfigurationError, match="CIRA_DB_HOST points at a transaction pooler"):
        db.connect_direct(for_migrations=True)


def test_migrations_use_the_migration_url_directly() -> None:
    settings = DatabaseSettings.load(
        url=f"postgresql://app:{SECRET}@{PROXY}/cira",
        migration_url=f"postgresql://admin:{SECRET}@cira.abc123.us-east-1.rds.amazonaws.com/cira",
        statement_timeout="30s",
    )
    with pytest.raises(ConfigurationError, match="CIRA_DB_STATEMENT_TIMEOUT"):
        plan_connection(settings, "app")
    plan = plan_connection(settings, "migrations")
    assert plan.purpose == "migrations"
    assert plan.behind_proxy is False
    assert plan.user == "admin"
    assert plan.prepare_threshold is None
    assert "options" not in plan.conninfo()  # migrations set their own timeouts


def test_a_migration_url_at_a_proxy_is_refused() -> None:
    settings = DatabaseSettings.load(
        url=f"postgresql://app@{PROXY}/cira", migration_url=f"postgresql://admin@{PROXY}/cira"
    )
    with pytest.raises(ConfigurationError, match="MIGRATION_URL points at an RDS Proxy"):
        plan_connection(settings, "migrations")


# -- what may not pass a proxy -----------------------------------------------------------------


def test_statement_timeout_behind_a_proxy_is_refused_with_the_role_setting() -> None:
    db = Database(f"postgresql://app:{SECRET}@{PROXY}/cira", statement_timeout="30s", pool=False)
    with pytest.raises(ConfigurationError, match="CIRA_DB_STATEMENT_TIMEOUT") as info:
        db.connect_direct()
    assert "ALTER ROLE" in str(info.value)
    assert_not_anywhere(info.value, SECRET)
    # direct connections send it as a startup option, after any of the URL's own
    direct = DatabaseSettings.load(
        url="postgresql://app@localhost/cira?options=-c%20lock_timeout%3D5s",
        statement_timeout="30s",
    ).conninfo_dict()
    assert direct["options"] == "-c lock_timeout=5s -c statement_timeout=30s"


def test_options_in_the_url_behind_a_proxy_are_refused() -> None:
    url = f"postgresql://app:{SECRET}@{PROXY}/cira?options=-c%20search_path%3Dx"
    with pytest.raises(ConfigurationError, match="options=") as info:
        Database(url, pool=False).connect_direct()
    assert "command-line options not supported" in str(info.value)
    assert "ALTER ROLE" in str(info.value)
    # the same URL through a declared direct connection is fine
    assert DatabaseSettings.load(url=url, via_proxy=False).conninfo_dict()["options"]


# -- secrets stay secret -------------------------------------------------------------------------


def test_an_unescaped_at_in_the_password_does_not_show_its_tail() -> None:
    password = "p@ssTail-77xq"
    tail = "ssTail-77xq"
    for url in (
        f"postgresql://app:{password}@{REMOTE}/cira",
        f"postgresql://app:{password}@{REMOTE}",
        f"postgres://app:{password}@{REMOTE}:5432/cira?sslmode=verify-full",
    ):
        db = Database(url, pool=False)
        assert tail not in repr(db)
        with pytest.raises(ConfigurationError, match="%40") as info:
            db.settings.describe()
        assert_not_anywhere(info.value, tail)
        with pytest.raises(ConfigurationError) as info:
            db.connect_direct()
        assert_not_anywhere(info.value, tail)


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    before=st.text(alphabet="abcXYZ019-_.", min_size=1, max_size=8),
    after=st.text(alphabet="abcXYZ019-_.", min_size=4, max_size=12),
)
def test_no_password_with_an_at_shows_up_in_repr_or_describe(before: str, after: str) -> None:
    url = f"postgresql://app:{before}@{after}@{REMOTE}/cira"
    db = Database(url, pool=False)
    assert after not in repr(db)
    try:
        described = db.settings.describe()
    except ConfigurationError as exc:
        assert_not_anywhere(exc, after)
    else:  # pragma: no cover - the URL is always refused
        assert after not in described


@pytest.mark.parametrize("bad", ["%zz", "%0", "%00", "%", "%g1"])
def test_a_percent_encoding_error_keeps_no_trace_of_the_password(bad: str) -> None:
    password = f"pw-{bad}-Secret42"
    url = f"postgresql://app:{password}@{REMOTE}/cira"
    for attempt in (
        lambda: DatabaseSettings.load(url=url).conninfo_dict(),
        lambda: DatabaseSettings.load(url=url).describe(),
        lambda: Database(url, pool=False).connect_direct(),
        lambda: Database(url).open(),
    ):
        with pytest.raises(ConfigurationError, match="CIRA_DB_URL") as info:
            attempt()
        assert_not_anywhere(info.value, password)
        assert_not_anywhere(info.value, "Secret42")
    assert "Secret42" not in repr(Database(url))


def test_a_bad_conninfo_string_keeps_no_trace_of_the_password() -> None:
    url = f"host={REMOTE} password=two words{SECRET}"
    with pytest.raises(ConfigurationError, match="CIRA_DB_URL") as info:
        DatabaseSettings.load(url=url).conninfo_dict()
    assert_not_anywhere(info.value, SECRET)


# -- bad URL parameters fail before any connection ----------------------------------------------


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(alphabet="abcxyz-+. 1.5e", min_size=1, max_size=6))
@example(value="abc")
@example(value="1.5")
@example(value="-1")
@example(value="10s")
def test_a_bad_connect_timeout_in_the_url_is_a_configuration_error(value: str) -> None:
    if value.strip().isdigit():
        return
    url = f"postgresql://app:{SECRET}@{REMOTE_IP}/cira?connect_timeout={quote(value)}"
    db = Database(url, pool=False)
    with pytest.raises(ConfigurationError, match="connect_timeout") as info:
        db.connect_direct()
    assert_not_anywhere(info.value, SECRET)


def test_a_bad_sslmode_in_the_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="invalid sslmode"):
        tls("postgresql://app@localhost/cira?sslmode=verify_full")


@pytest.mark.parametrize("port", ["²", "٣٣", "abc", "0", "70000"])
def test_a_bad_port_in_the_url_never_quotes_it(port: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid port") as info:
        tls(f"postgresql://app@{REMOTE}:{port}/cira")
    assert_not_anywhere(info.value, port)


def test_iam_auth_needs_one_host_and_a_user_before_any_token_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError, match="needs one host name"):
        plan_connection(
            DatabaseSettings.load(url=f"postgresql://app@{REMOTE},{PROXY}/cira", iam_auth=True)
        )
    with pytest.raises(ConfigurationError, match="needs a user"):
        plan_connection(DatabaseSettings.load(host=REMOTE, iam_auth=True))
    monkeypatch.setenv("PGUSER", "app_iam")  # libpq's user counts
    plan = plan_connection(DatabaseSettings.load(host=REMOTE, iam_auth=True))
    assert (plan.hosts, plan.user, plan.sslmode) == ((REMOTE,), "app_iam", "verify-full")


# -- a cut network ends calls instead of hanging them -----------------------------------


def test_every_connection_gets_keepalives_and_a_tcp_user_timeout() -> None:
    params = plan_connection(DatabaseSettings(url="postgresql://u@db.example.com/d"), "app")
    kwargs = params.conninfo()
    assert kwargs["keepalives"] == "1"
    assert kwargs["keepalives_idle"] == "30"
    assert kwargs["tcp_user_timeout"] == "10000"


def test_the_urls_own_tcp_settings_win_and_zero_leaves_the_kernel_default() -> None:
    url = "postgresql://u@db.example.com/d?keepalives_idle=5&tcp_user_timeout=2500"
    kwargs = plan_connection(DatabaseSettings(url=url), "app").conninfo()
    assert (kwargs["keepalives_idle"], kwargs["tcp_user_timeout"]) == ("5", "2500")
    plain = plan_connection(
        DatabaseSettings(url="postgresql://u@db.example.com/d", tcp_user_timeout=0), "app"
    ).conninfo()
    assert "tcp_user_timeout" not in plain


def test_tcp_settings_are_accepted_by_a_real_server(cira_db_url: str) -> None:
    with Database(cira_db_url, pool=False, tcp_user_timeout=3000) as db, db.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
