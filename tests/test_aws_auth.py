"""Secrets Manager and IAM credentials (cira_db._aws_auth) with a real server.

AWS itself is not reachable here: boto3 clients are real, with botocore's
Stubber answering Secrets Manager, and IAM tokens are signed locally (no
network) with fake credentials. The PostgreSQL side is real: a private
embedded server with scram-sha-256 authentication for the test role.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.stub import Stubber

from cira_db import Database, _aws_auth
from cira_db._embedded import start_embedded
from cira_db.errors import ConfigurationError, DatabaseError, DatabaseUnavailableError
from cira_db.migrations import Migrator

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cira-db-AbCdEf"


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake/secret/key/for/signing/only/000000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(_aws_auth, "_MIN_REFRESH_INTERVAL", 0.0)


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
    fake_aws: None, scram_server: tuple[str, str]
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
            assert db.run(
                "read", lambda c: c.execute("SELECT current_user").fetchone(), idempotent=True
            ) == ("rotating",)
            with db.connection() as conn:
                assert conn.execute("SELECT pg_backend_pid()").fetchone() != old_pid
        stub.assert_no_pending_responses()


def test_unpooled_connect_also_recovers_from_a_rotation(
    fake_aws: None, scram_server: tuple[str, str]
) -> None:
    admin_url, socket_dir = scram_server
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("ALTER ROLE rotating PASSWORD 'second-Pa55'")
    client = secrets_client()
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(socket_dir, "first-Pa55"))
        stub.add_response("get_secret_value", secret_response(socket_dir, "second-Pa55"))
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_wrong_password_is_a_clear_error_without_the_password(
    fake_aws: None, scram_server: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, socket_dir = scram_server
    client = secrets_client()
    caplog.set_level(logging.DEBUG)
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(socket_dir, "wrong-Pa55word"))
        stub.add_response("get_secret_value", secret_response(socket_dir, "wrong-Pa55word"))
        db = Database(secret_arn=ARN, secrets_client=client, pool=False)
        with pytest.raises(DatabaseError, match="authentication failed") as info, db.connection():
            pass
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
