"""Logs, spans and pool statistics of repository calls (cira_db._observe), on both faces."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from _faces import LoopThread
from cira_db import Database, JobRepository, JobResultRepository, PoolStats
from cira_db._observe import FIELD, _Otel, query_summary
from cira_db.aio import AsyncDatabase, AsyncJobRepository
from cira_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    NotFoundError,
    ValidationError,
)
from cira_db.migrations import Migrator

SIGNED = "https://bucket.s3.amazonaws.com/in/doc.pdf?X-Amz-Signature=deadbeefsecret&X-Amz-Security-Token=tok123"
EXTRACTED = {"invoice_total": "secret-figure-4711"}


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # everything, third parties included
    return caplog


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """cira_db's records about calls (not the pool's own life: it grows in the background)."""
    return [r for r in caplog.records if r.name.startswith("cira_db") and r.name != "cira_db.pool"]


def dump(record: logging.LogRecord) -> str:
    return json.dumps(record.__dict__, default=str) + record.getMessage()


def calls(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [getattr(r, FIELD) for r in caplog.records if r.name == "cira_db.calls"]


# -- logs ---------------------------------------------------------------------------------


def test_a_call_is_logged_at_debug_with_its_fields(
    jobs: JobRepository, logs: pytest.LogCaptureFixture
) -> None:
    job = jobs.create(client_id="acme", pdf_url="https://example.com/a.pdf")
    logs.clear()
    jobs.get(job.id, client_id="acme")
    (record,) = [r for r in logs.records if r.name == "cira_db.calls"]
    assert record.levelno == logging.DEBUG
    fields = getattr(record, FIELD)
    assert fields["operation"] == "read a job"
    assert fields["method"] == "get"
    assert fields["rows"] == 1
    assert fields["client_id"] == "acme"
    assert fields["job_id"] == str(job.id)
    assert (fields["attempt"], fields["retries"], fields["statements"]) == (1, 0, 1)
    assert fields["outcome"] == "ok"
    assert 0 < fields["duration_ms"] < 10_000


@pytest.mark.parametrize(("count", "returning"), [(3, "jobs"), (1200, "jobs"), (1200, "ids")])
def test_create_many_counts_the_rows_it_wrote(
    jobs: JobRepository, logs: pytest.LogCaptureFixture, count: int, returning: Any
) -> None:
    # The statement answers with one summary row (now(), run_after) or a COPY
    # count; the record counts the jobs written, on the array and COPY paths.
    urls = [f"https://example.com/{n}.pdf" for n in range(count)]
    logs.clear()
    jobs.create_many(client_id="acme", pdf_urls=urls, returning=returning)
    (fields,) = calls(logs)
    assert fields["method"] == "create_many"
    assert fields["rows"] == count


def test_secrets_and_client_data_never_appear(
    jobs: JobRepository, results: JobResultRepository, logs: pytest.LogCaptureFixture
) -> None:
    job = jobs.create(client_id="acme", pdf_url=SIGNED)
    jobs.claim_next(client_id="acme", lease=timedelta(minutes=5))
    jobs.complete(job.id, extracted_data=EXTRACTED, confidence_score=0.9, tokens_used=3)
    results.get_for_job(job.id, client_id="acme")
    text = "\n".join(dump(r) for r in logs.records)
    assert "complete" in text  # the calls were logged
    for secret in ("deadbeefsecret", "tok123", "X-Amz", "secret-figure-4711", "invoice_total"):
        assert secret not in text


def test_a_not_found_error_is_one_debug_record(
    jobs: JobRepository, logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(NotFoundError):
        jobs.get(uuid.uuid4(), client_id="acme")
    (record,) = ours(logs)
    assert record.levelno == logging.DEBUG
    fields = getattr(record, FIELD)
    assert (fields["outcome"], fields["error"]) == ("error", "NotFoundError")


def test_a_validation_error_is_one_debug_record_without_a_statement(
    jobs: JobRepository, logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValidationError):
        jobs.create(client_id="acme", pdf_url="not a url")
    (record,) = ours(logs)
    assert record.levelno == logging.DEBUG
    fields = getattr(record, FIELD)
    assert (fields["error"], fields["field"], fields["statements"]) == (
        "ValidationError",
        "pdf_url",
        0,
    )


UNREACHABLE = "postgresql://app:hunter2pw@127.0.0.1:9/nowhere"


@pytest.mark.parametrize("face", ["sync", "async"])
def test_unavailable_after_retries_is_one_warning(
    face: str, logs: pytest.LogCaptureFixture, aio_loop: LoopThread
) -> None:
    overrides: dict[str, Any] = {"retry_backoff": 0, "connect_timeout": 1, "sslmode": "disable"}
    if face == "sync":
        db = Database(UNREACHABLE, pool=False, **overrides)
        with pytest.raises(DatabaseUnavailableError):
            JobRepository(db).find(uuid.uuid4(), client_id="acme")
    else:
        adb = AsyncDatabase(UNREACHABLE, pool=False, **overrides)
        with pytest.raises(DatabaseUnavailableError):
            aio_loop.run(AsyncJobRepository(adb).find(uuid.uuid4(), client_id="acme"))
    loud = [r for r in ours(logs) if r.levelno >= logging.WARNING]
    assert [r.name for r in loud] == ["cira_db.calls"]
    fields = getattr(loud[0], FIELD)
    assert (fields["error"], fields["retries"], fields["attempt"]) == (
        "DatabaseUnavailableError",
        2,
        3,
    )
    assert len([r for r in ours(logs) if r.name == "cira_db.retry"]) == 2
    assert all(r.levelno == logging.INFO for r in ours(logs) if r.name == "cira_db.retry")
    assert "hunter2pw" not in "\n".join(dump(r) for r in logs.records)
    stats = db.stats() if face == "sync" else adb.stats()
    assert (stats.open, stats.retries) == (False, 2)


def test_a_slow_call_is_a_warning(cira_db: Database, logs: pytest.LogCaptureFixture) -> None:
    with Database(settings=cira_db.settings.model_copy(update={"slow_call_ms": 1})) as db:
        jobs = JobRepository(db)
        with db.connection() as locker, locker.transaction():
            locker.execute("SELECT pg_sleep(0)")
            job = jobs.create(client_id="acme", pdf_url="https://example.com/a.pdf")
        logs.clear()
        with db.transaction() as conn:
            conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            import threading

            done = threading.Event()

            def read() -> None:
                jobs.find(job.id, client_id="acme")
                done.set()

            reader = threading.Thread(target=read)
            reader.start()
            assert not done.wait(0.05)  # the read waits for the lock
        reader.join(10)
    (record,) = [r for r in logs.records if r.name == "cira_db.calls"]
    assert record.levelno == logging.WARNING
    fields = getattr(record, FIELD)
    assert fields["slow"] is True
    assert fields["duration_ms"] >= 50


def test_slow_call_warning_can_be_turned_off(
    cira_db: Database, logs: pytest.LogCaptureFixture
) -> None:
    logs.set_level(logging.INFO)
    with Database(settings=cira_db.settings.model_copy(update={"slow_call_ms": 0})) as db:
        JobRepository(db).find(uuid.uuid4(), client_id="acme")
    assert ours(logs) == []


def test_iam_token_signature_never_reaches_the_logs(
    logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    boto3 = pytest.importorskip("boto3")
    from cira_db._aws_auth import iam_token

    client = boto3.client(
        "rds",
        region_name="eu-west-1",
        aws_access_key_id="AKIAEXAMPLEKEY",
        aws_secret_access_key="secretkeyvalue",
        aws_session_token="sessiontokenvalue",
    )
    token = iam_token(
        host="db.example.com", port=5432, user="app", region="eu-west-1", client=client
    )
    signature = token.split("X-Amz-Signature=")[1]
    text = "\n".join(dump(r) for r in logs.records)
    for secret in (signature, "sessiontokenvalue", "secretkeyvalue"):
        assert secret not in text
    # botocore's other logging still works after the token is made
    logging.getLogger("botocore.auth").debug("after the token")
    assert "after the token" in logs.text


# -- spans --------------------------------------------------------------------------------


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_Otel, "trace", trace)
    monkeypatch.setattr(_Otel, "context", context)
    monkeypatch.setattr(_Otel, "tracer", provider.get_tracer("cira_db"))
    yield exporter
    exporter.clear()


def test_a_span_per_call_with_database_attributes(
    jobs: JobRepository, spans: InMemorySpanExporter
) -> None:
    job = jobs.create(client_id="acme", pdf_url=SIGNED)
    with pytest.raises(NotFoundError):
        jobs.get(uuid.uuid4(), client_id="acme")
    create, get = spans.get_finished_spans()
    assert create.name == "INSERT jobs"
    assert create.kind == trace.SpanKind.CLIENT
    attributes = dict(create.attributes or {})
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["db.operation.name"] == "INSERT"
    assert attributes["db.collection.name"] == "jobs"
    assert attributes["db.query.summary"] == "INSERT jobs"
    assert attributes["cira_db.operation"] == "create a job"
    assert attributes["server.address"]
    assert isinstance(attributes["server.port"], int)
    assert "error.type" not in attributes
    text = json.dumps({k: str(v) for s in (create, get) for k, v in (s.attributes or {}).items()})
    assert str(job.id) not in text
    assert "acme" not in text
    assert "X-Amz" not in text
    assert get.name == "SELECT jobs"
    assert get.status.status_code == trace.StatusCode.ERROR
    assert dict(get.attributes or {})["error.type"] == "cira_db.errors.NotFoundError"


def test_the_span_is_a_child_of_the_callers_span(
    cira_db: Database, aio_loop: LoopThread, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("app", tracer_provider=_provider_of(spans))
    with tracer.start_as_current_span("handler") as parent:
        JobRepository(cira_db).find(uuid.uuid4(), client_id="acme")

    async def handler() -> None:
        adb = AsyncDatabase(settings=cira_db.settings)
        async with adb:
            with tracer.start_as_current_span("async handler"):
                await AsyncJobRepository(adb).find(uuid.uuid4(), client_id="acme")

    aio_loop.run(handler())
    finished = {s.name + str(i): s for i, s in enumerate(spans.get_finished_spans())}
    child, _, async_child, async_parent = finished.values()
    assert child.parent is not None
    assert child.parent.span_id == parent.get_span_context().span_id
    assert async_child.parent is not None
    assert async_child.parent.span_id == async_parent.context.span_id


def _provider_of(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_no_span_and_no_import_without_an_sdk(cira_db: Database) -> None:
    _Otel.tracer = None
    JobRepository(cira_db).find(uuid.uuid4(), client_id="acme")
    # opentelemetry-api is installed here but no SDK is set: no tracer was resolved
    assert _Otel.tracer is None


def test_a_span_per_migration_step(cira_db_empty_url: str, spans: InMemorySpanExporter) -> None:
    applied = Migrator(Database(cira_db_empty_url, pool=False)).apply()
    names = [s.name for s in spans.get_finished_spans()]
    assert names == [f"migrate {m.version:04d}_{m.name}.sql" for m in applied]


def test_query_summary_names_the_write_not_the_lock() -> None:
    assert query_summary("SELECT * FROM jobs WHERE id = 1 FOR UPDATE") == ("SELECT", "jobs")
    assert query_summary(
        "WITH c AS (SELECT id FROM jobs FOR UPDATE SKIP LOCKED) UPDATE jobs SET x = 1 FROM c"
    ) == ("UPDATE", "jobs")
    assert query_summary("WITH t AS (DELETE FROM jobs RETURNING id) SELECT count(*) FROM t") == (
        "DELETE",
        "jobs",
    )


# -- metrics ------------------------------------------------------------------------------


def test_stats_snapshot_of_the_pool(cira_db: Database, aio_loop: LoopThread) -> None:
    JobRepository(cira_db).find(uuid.uuid4(), client_id="acme")
    stats = cira_db.stats()
    assert isinstance(stats, PoolStats)
    assert stats.open
    assert stats.size >= 1
    assert stats.connections_made >= 1
    assert stats.requests >= 1
    assert stats.idle + stats.in_use == stats.size
    with cira_db.connection():
        assert cira_db.stats().in_use >= 1
        assert cira_db.stats().idle < cira_db.stats().size
    assert f"idle {cira_db.stats().idle}" in cira_db.stats().describe()

    async def async_stats() -> PoolStats:
        async with AsyncDatabase(settings=cira_db.settings) as adb:
            await AsyncJobRepository(adb).find(uuid.uuid4(), client_id="acme")
            return adb.stats()

    astats = aio_loop.run(async_stats())
    assert astats.open
    assert astats.connections_made >= 1
    assert astats.requests >= 1
    closed = Database(settings=cira_db.settings).stats()
    assert (closed.open, closed.size, closed.retries) == (False, 0, 0)


def test_pool_events_are_logged_without_the_password(
    cira_db: Database, logs: pytest.LogCaptureFixture, aio_loop: LoopThread
) -> None:
    # A server with password auth (a container) needs its own; one that trusts takes any.
    secret = cira_db._connect_kwargs().get("password") or "pw-sekrit"
    settings = cira_db.settings.model_copy(update={"password": SecretStr(secret)})
    with Database(settings=settings) as db:
        assert db._connect_kwargs()["password"] == secret  # the password is in use
        JobRepository(db).find(uuid.uuid4(), client_id="acme")

    async def async_open() -> None:
        async with AsyncDatabase(settings=settings):
            pass

    aio_loop.run(async_open())
    events = [getattr(r, FIELD)["event"] for r in logs.records if r.name == "cira_db.pool"]
    assert events.count("pool_opened") == 2
    assert events.count("pool_closed") == 2
    assert "connected" in events
    opened = [r for r in logs.records if getattr(r, FIELD, {}).get("event") == "pool_opened"]
    assert {getattr(r, FIELD)["pool"] for r in opened} == {"cira_db", "cira_db.aio"}
    assert all(r.levelno == logging.INFO for r in opened)
    if len(secret) >= 8:  # a short server password ("test") also spells user and db names
        assert secret not in "\n".join(dump(r) for r in logs.records)


def test_a_configuration_error_is_one_error_record(
    cira_db: Database, logs: pytest.LogCaptureFixture
) -> None:
    closed = Database(settings=cira_db.settings)  # never opened
    with pytest.raises(ConfigurationError):
        JobRepository(closed).find(uuid.uuid4(), client_id="acme")
    (record,) = ours(logs)
    assert record.levelno == logging.ERROR
    assert getattr(record, FIELD)["error"] == "ConfigurationError"


def test_calls_on_a_callers_connection_are_observed(
    cira_db: Database, logs: pytest.LogCaptureFixture, spans: InMemorySpanExporter
) -> None:
    with cira_db.transaction() as conn:
        JobRepository(conn).create(client_id="acme", pdf_url="https://example.com/a.pdf")
        JobRepository(conn).count_by_status(client_id="acme")
    assert [c["method"] for c in calls(logs)] == ["create", "count_by_status"]
    assert calls(logs)[0]["rows"] == 1
    create, count = spans.get_finished_spans()
    assert create.name == "INSERT jobs"
    assert count.name == "SELECT jobs"
    port = dict(create.attributes or {})["server.port"]
    assert isinstance(port, int)
    assert port > 0


def test_a_failing_pool_connection_is_one_loud_record_across_loggers(
    cira_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """psycopg_pool's own WARNING for a cira_db pool's failed connection is not a second record."""
    from psycopg.conninfo import make_conninfo

    from cira_db.errors import ConfigurationError

    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigurationError):
        Database(make_conninfo(cira_db_url, dbname="no_such_database"), pool_timeout=30).open()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in loud if r.name.startswith("psycopg")] == []
    other = logging.getLogger("psycopg.pool")
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        other.warning("error connecting in %r: %s", "someone-elses-pool", "refused")
    assert any("someone-elses-pool" in r.getMessage() for r in caplog.records)
