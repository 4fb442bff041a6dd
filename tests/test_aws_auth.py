"""Secrets Manager and IAM credentials (cira_db._aws_auth) with a real server.

AWS itself is not reachable here: boto3 clients are real, with botocore's
Stubber answering Secrets Manager, or, where cira_db makes the client itself,
a tiny local HTTP server speaking the Secrets Manager protocol (reached via
``AWS_ENDPOINT_URL_SECRETS_MANAGER``). IAM tokens are signed locally (no
network) with fake credentials. The PostgreSQL side is real: a private
embedded server with scram-sha-256 authentication for the test role. The
secret re-fetch limit runs with its real 5-second interval on a clock the
tests advance.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.stub import Stubber

from cira_db import Database, _aws_auth
from cira_db._embedded import start_embedded
from cira_db.errors import AuthenticationError, ConfigurationError, DatabaseUnavailableError
from cira_db.migrations import Migrator

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cira-db-AbCdEf"


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake/secret/key/for/signing/only/000000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


class Clock:
    """A monotonic clock the test moves forward by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The secret re-fetch limit's clock, under the test's control (the interval stays 5 s)."""
    fake = Clock()
    monkeypatch.setattr(_aws_auth, "_monotonic", fake)
    return fake


@pytest.fixture
def scram_server() -> Iterator[tuple[str, str]]:
    """A private embedded server where role `rotating` needs a scram password."""
    directory = Path(tempfile.mkdtemp(prefix="cira-scram-"))
    server = start_embedded(directory)
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE ROLE rotating LOGIN PASSWORD 'first-Pa55'")
            hba = directory / "pg_hba.conf"
            hba.write_text("local all rotating scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)
        yield server.url, str(directory)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def secret_response(socket_dir: str, password: str) -> dict[str, Any]:
    secret = {
        "engine": "postgres",
        "username": "rotating",
        "password": password,
        "host": socket_dir,
        "port": "5432",
        "dbname": "postgres",
    }
    return {
        "ARN": ARN,
        "Name": "cira-db",
        "VersionId": str(uuid.uuid4()),
        "SecretString": json.dumps(secret),
        "VersionStages": ["AWSCURRENT"],
        "CreatedDate": 1700000000,
    }


def secrets_client() -> Any:
    return boto3.client("secretsmanager", region_name="eu-west-1")


def test_secret_supplies_credentials_and_is_fetched_once(
    fake_aws: None, scram_server: tuple[str, str]
) -> None:
    _, socket_dir = scram_server
    client = secrets_client()
    with Stubber(client) as stub:
        stub.add_response(
            "get_secret_value", secret_response(socket_dir, "first-Pa55"), {"SecretId": ARN}
        )
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        for _ in range(3):
            with db.connection() as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("rotating",)
        stub.assert_no_pending_responses()  # one fetch served three connections


def test_rotated_secret_is_fetched_again_after_authentication_fails(
    fake_aws: None, clock: Clock, scram_server: tuple[str, str]
) -> None:
    admin_url, socket_dir = scram_server
    client = secrets_client()
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(socket_dir, "first-Pa55"))
        stub.add_response("get_secret_value", secret_response(socket_dir, "second-Pa55"))
        with Database(
            secret_arn=ARN, secrets_client=client, pool_min_size=1, pool_max_size=1
        ) as db:
            with db.connection() as conn:
                old_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            # rotation: the password changes and the old session goes away
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute("ALTER ROLE rotating PASSWORD 'second-Pa55'")
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = 'rotating'"
                )
            clock.advance(_aws_auth._MIN_REFRESH_INTERVAL)
            assert db.run(
                "read", lambda c: c.execute("SELECT current_user").fetchone(), idempotent=True
            ) == ("rotating",)
            with db.connection() as conn:
                assert conn.execute("SELECT pg_backend_pid()").fetchone() != old_pid
        stub.assert_no_pending_responses()


def test_unpooled_connect_also_recovers_from_a_rotation(
    fake_aws: None, clock: Clock, scram_server: tuple[str, str]
) -> None:
    admin_url, socket_dir = scram_server
    client = secrets_client()
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(socket_dir, "first-Pa55"))
        stub.add_response("get_secret_value", secret_response(socket_dir, "second-Pa55"))
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        with db.connection() as conn:  # fetched once, cached
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("ALTER ROLE rotating PASSWORD 'second-Pa55'")
        clock.advance(5.0)
        with db.connection() as conn:  # refused, re-fetched, connected
            assert conn.execute("SELECT 1").fetchone() == (1,)
        stub.assert_no_pending_responses()


def test_wrong_password_is_a_clear_error_without_the_password(
    fake_aws: None, scram_server: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, socket_dir = scram_server
    client = secrets_client()
    caplog.set_level(logging.DEBUG)
    with Stubber(client) as stub:
        # fetched once: the refusal comes right after the fetch, too soon to fetch again
        stub.add_response("get_secret_value", secret_response(socket_dir, "wrong-Pa55word"))
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        with (
            pytest.raises(AuthenticationError, match="authentication failed") as info,
            db.connection(),
        ):
            pass
        stub.assert_no_pending_responses()
    message = str(info.value)
    assert "authentication failed" in message
    assert "wrong-Pa55word" not in message
    assert "wrong-Pa55word" not in repr(db)
    assert all("wrong-Pa55word" not in r.getMessage() for r in caplog.records)


def test_secret_without_credentials_is_a_configuration_error(fake_aws: None) -> None:
    client = secrets_client()
    with Stubber(client) as stub:
        response = secret_response("/tmp", "x")
        response["SecretString"] = json.dumps({"host": "db.internal"})
        stub.add_response("get_secret_value", response)
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        with pytest.raises(ConfigurationError, match="no string 'username' and 'password'"):
            db.connect_direct()


def test_unreadable_secret_is_database_unavailable(fake_aws: None) -> None:
    client = secrets_client()
    with Stubber(client) as stub:
        stub.add_client_error("get_secret_value", "AccessDeniedException", "denied")
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        with pytest.raises(DatabaseUnavailableError, match="could not read the database secret"):
            db.connect_direct()


def test_secret_host_is_the_direct_endpoint_for_migrations(fake_aws: None) -> None:
    """Behind RDS Proxy the secret's host (the instance) serves the migrator."""
    db = Database(
        host="cira.proxy-abc123.eu-west-1.rds.amazonaws.com",
        secret_arn=ARN,
        secrets_client=secrets_client(),
        pool=False,
    )
    secret = {
        "username": "app",
        "password": "pw",
        "host": "cira.abc123.eu-west-1.rds.amazonaws.com",
    }
    settings = db.settings
    assert settings.behind_proxy()
    service = settings.conninfo_dict(secret=secret)
    direct = settings.conninfo_dict(secret=secret, for_migrations=True)
    assert service["host"] == "cira.proxy-abc123.eu-west-1.rds.amazonaws.com"
    assert direct["host"] == "cira.abc123.eu-west-1.rds.amazonaws.com"
    assert service["sslmode"] == direct["sslmode"] == "verify-full"


def test_iam_token_is_made_per_connection_and_never_shown(fake_aws: None) -> None:
    rds = boto3.client("rds", region_name="eu-west-1")
    db = Database(
        host="cira.proxy-abc123.eu-west-1.rds.amazonaws.com",
        user="app_iam",
        dbname="cira",
        iam_auth=True,
        rds_client=rds,
        pool=False,
    )
    first = db._connect_kwargs()
    time.sleep(1.1)  # tokens carry a timestamp with one-second resolution
    second = db._connect_kwargs()
    for kwargs in (first, second):
        token = kwargs["password"]
        assert token.startswith("cira.proxy-abc123.eu-west-1.rds.amazonaws.com:5432/?")
        assert "Action=connect" in token
        assert "DBUser=app_iam" in token
        assert token not in repr(db)
        assert token not in db.settings.describe()
        assert kwargs["sslmode"] == "verify-full"
        assert kwargs["prepare_threshold"] is None  # an RDS Proxy host
    assert first["password"] != second["password"]


def test_iam_auth_refuses_plain_text_and_a_password() -> None:
    with pytest.raises(ConfigurationError, match="IAM authentication needs TLS"):
        Database(
            host="127.0.0.1", user="app", iam_auth=True, sslmode="disable", pool=False
        )._connect_kwargs()
    with pytest.raises(ConfigurationError, match="CIRA_DB_IAM_AUTH and CIRA_DB_PASSWORD"):
        Database(host="db.example.com", user="app", iam_auth=True, password="pw")


def test_migrator_with_proxy_host_and_secret_uses_the_secret_host(
    fake_aws: None, scram_server: tuple[str, str]
) -> None:
    _, socket_dir = scram_server
    client = secrets_client()
    with Stubber(client) as stub:
        for _ in range(2):
            stub.add_response("get_secret_value", secret_response(socket_dir, "first-Pa55"))
        db = Database(
            host="cira.proxy-abc123.eu-west-1.rds.amazonaws.com",
            secret_arn=ARN,
            secrets_client=client,
            pool=False,
        )
        assert db.settings.behind_proxy()
        statuses = Migrator(db).status()  # reached the instance (the secret's host)
    assert [s.version for s in statuses] == [m.version for m in Migrator(db).migrations]
    assert all(s.applied_at is None for s in statuses)


def test_migrator_needs_a_host_in_the_secret_behind_a_proxy(fake_aws: None) -> None:
    client = secrets_client()
    with Stubber(client) as stub:
        response = secret_response("/tmp", "pw")
        response["SecretString"] = json.dumps({"username": "app", "password": "pw"})
        stub.add_response("get_secret_value", response)
        db = Database(
            host="cira.proxy-abc123.eu-west-1.rds.amazonaws.com",
            secret_arn=ARN,
            secrets_client=client,
            pool=False,
        )
        with pytest.raises(ConfigurationError, match="has no 'host'; set CIRA_DB_MIGRATION_URL"):
            Migrator(db).status()


# -- the re-fetch limit, with its real interval --------------------------------------------------


def test_secret_is_fetched_again_at_most_every_five_seconds(fake_aws: None, clock: Clock) -> None:
    assert _aws_auth._MIN_REFRESH_INTERVAL == 5.0  # what docs/connections.md promises
    client = secrets_client()
    with Stubber(client) as stub:
        for password in ("one-Pa55", "two-Pa55", "three-Pa55"):
            stub.add_response("get_secret_value", secret_response("/tmp", password))
        provider = _aws_auth.SecretProvider(ARN, client=client)
        assert provider.get()["password"] == "one-Pa55"
        assert provider.refresh() is False  # just fetched
        clock.advance(4.9)
        assert provider.refresh() is False
        assert provider.get()["password"] == "one-Pa55"
        clock.advance(0.1)
        assert provider.refresh() is True
        assert provider.get()["password"] == "two-Pa55"
        assert provider.refresh() is False  # the interval starts again at each fetch
        clock.advance(5.0)
        assert provider.refresh() is True
        stub.assert_no_pending_responses()
    assert "Pa55" not in repr(provider)


def test_a_wrong_password_does_not_turn_into_a_fetch_storm(
    fake_aws: None, clock: Clock, scram_server: tuple[str, str]
) -> None:
    _, socket_dir = scram_server
    client = secrets_client()
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(socket_dir, "wrong-Pa55"))
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        for _ in range(5):  # five failing calls within 5 seconds: one fetch
            with pytest.raises(AuthenticationError, match="authentication failed"), db.connection():
                pass
            clock.advance(0.5)
        stub.assert_no_pending_responses()
        stub.add_response("get_secret_value", secret_response(socket_dir, "first-Pa55"))
        clock.advance(5.0)
        with db.connection() as conn:  # the rotated secret is picked up
            assert conn.execute("SELECT current_user").fetchone() == ("rotating",)
        stub.assert_no_pending_responses()


# -- clients cira_db makes itself: boto3, region, boto3 missing ---------------------------------


class FakeSecretsManager:
    """A local HTTP endpoint answering GetSecretValue, recording each request."""

    def __init__(self, secret: dict[str, Any]) -> None:
        self.secret = secret
        self.requests: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append({**dict(self.headers), "SecretId": body.get("SecretId")})
                payload = json.dumps(
                    {"ARN": ARN, "Name": "cira-db", "SecretString": json.dumps(owner.secret)}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def regions(self) -> list[str]:
        """The region of each request's signature (its credential scope)."""
        return [r["Authorization"].split("Credential=")[1].split("/")[2] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def secrets_endpoint(
    fake_aws: None, monkeypatch: pytest.MonkeyPatch, scram_server: tuple[str, str]
) -> Iterator[FakeSecretsManager]:
    _, socket_dir = scram_server
    secret = json.loads(secret_response(socket_dir, "first-Pa55")["SecretString"])
    endpoint = FakeSecretsManager(secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    try:
        yield endpoint
    finally:
        endpoint.close()


@pytest.mark.parametrize(
    ("setting", "aws_region", "aws_default_region", "expected"),
    [
        ("ap-south-1", "eu-west-1", "us-east-2", "ap-south-1"),  # CIRA_DB_AWS_REGION first
        (None, "eu-west-1", "us-east-2", "eu-west-1"),  # then AWS_REGION (Lambda sets it)
        (None, None, "us-east-2", "us-east-2"),  # then AWS_DEFAULT_REGION
    ],
)
def test_boto3_client_is_made_for_the_resolved_region(
    secrets_endpoint: FakeSecretsManager,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
    aws_region: str | None,
    aws_default_region: str | None,
    expected: str,
) -> None:
    for name, value in (("AWS_REGION", aws_region), ("AWS_DEFAULT_REGION", aws_default_region)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    if setting is not None:
        monkeypatch.setenv("CIRA_DB_AWS_REGION", setting)
    monkeypatch.setenv("CIRA_DB_SECRET_ARN", ARN)
    db = Database.from_env(pool=False)  # no client given: cira_db makes one with boto3
    with db.connection() as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("rotating",)
    with db.connection():
        pass
    assert secrets_endpoint.regions() == [expected]  # one request, signed for that region
    assert secrets_endpoint.requests[0]["SecretId"] == ARN
    assert secrets_endpoint.requests[0]["X-Amz-Target"] == "secretsmanager.GetSecretValue"


@pytest.mark.parametrize(
    ("setting", "aws_region", "aws_default_region", "expected"),
    [
        ("ap-south-1", "eu-west-1", None, "ap-south-1"),
        (None, "eu-west-1", "us-east-2", "eu-west-1"),
        (None, None, "us-east-2", "us-east-2"),
    ],
)
def test_iam_token_client_is_made_for_the_resolved_region(
    fake_aws: None,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
    aws_region: str | None,
    aws_default_region: str | None,
    expected: str,
) -> None:
    for name, value in (("AWS_REGION", aws_region), ("AWS_DEFAULT_REGION", aws_default_region)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    db = Database(
        host="cira.proxy-abc123.eu-west-1.rds.amazonaws.com",
        user="app_iam",
        iam_auth=True,
        aws_region=setting,
        pool=False,
    )
    token = db._connect_kwargs()["password"]
    assert f"%2F{expected}%2Frds-db%2Faws4_request" in token


def test_boto3_missing_is_a_configuration_error_saying_what_to_install(
    fake_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'cira-db\[aws\]'") as info:
        Database(secret_arn=ARN, pool=False).connect_direct()
    assert "CIRA_DB_SECRET_ARN needs boto3" in str(info.value)
    iam = Database(host="db.example.com", user="app", iam_auth=True, pool=False)
    with pytest.raises(ConfigurationError, match="CIRA_DB_IAM_AUTH needs boto3"):
        iam.connect_direct()


# -- what a secret may hold ---------------------------------------------------------------------


def error_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        item = todo.pop()
        if item is not None and id(item) not in seen:
            seen.add(id(item))
            yield item
            todo += [item.__cause__, item.__context__]


def assert_secret_nowhere(error: BaseException, secret: str) -> None:
    for item in error_chain(error):
        assert secret not in str(item)
        assert secret not in repr(item)
        assert all(secret not in repr(v) for v in vars(item).values())


@pytest.mark.parametrize(
    "secret_string",
    [
        "username=app password=plain-Pa55-text",
        "{'username': 'app', 'password': 'plain-Pa55-text'}",
        '["app", "plain-Pa55-text"]',
    ],
)
def test_a_secret_string_that_is_not_a_json_object_is_refused_without_its_text(
    fake_aws: None, secret_string: str
) -> None:
    client = secrets_client()
    with Stubber(client) as stub:
        response = secret_response("/tmp", "x")
        response["SecretString"] = secret_string
        stub.add_response("get_secret_value", response)
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        with pytest.raises(ConfigurationError, match="is not a JSON object") as info:
            db.connect_direct()
    assert_secret_nowhere(info.value, "plain-Pa55-text")


@pytest.mark.parametrize("port", ["abc", "54x32", "0", "65536", "", " ", True, 1.5, "²"])
def test_a_bad_port_in_the_secret_is_a_configuration_error_without_the_value(
    fake_aws: None, port: Any
) -> None:
    client = secrets_client()
    with Stubber(client) as stub:
        response = secret_response("/tmp", "port-Pa55")
        secret = json.loads(response["SecretString"])
        secret.update(host="db.internal.example.com", port=port)
        response["SecretString"] = json.dumps(secret)
        stub.add_response("get_secret_value", response)
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        if port == "":  # no port given: the default applies
            assert db.connection_plan().port == "5432"
            return
        with pytest.raises(ConfigurationError, match="invalid 'port'") as info:
            db.connect_direct()
    assert_secret_nowhere(info.value, "port-Pa55")
    if isinstance(port, str) and port.strip():
        assert_secret_nowhere(info.value, repr(port))
