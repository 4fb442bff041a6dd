"""examples/: the Lambda API handler, its SAM template, and the worker, run for real.

(examples/downstream is its own project; .ci/examples.sh runs its tests.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cira_db import Database, JobRepository, JobStatus, __version__

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EVENTS = Path(__file__).parent / "fixtures" / "events"


# -- examples/lambda -----------------------------------------------------------------


@pytest.fixture
def app(cira_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/lambda/app/app.py, imported fresh (its Database opens at import, as in INIT)."""
    monkeypatch.setenv("CIRA_DB_URL", cira_db_url)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "cira-api")
    spec = importlib.util.spec_from_file_location("example_app", EXAMPLES / "lambda/app/app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        module.DB.close()


def _rest(method: str, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / "rest_api_key.json").read_text())
    return event | {"httpMethod": method} | extra


def _call(app: ModuleType, event: dict[str, Any]) -> tuple[int, Any]:
    response = app.handler(event, None)
    assert response["headers"] == {"content-type": "application/json"}
    return response["statusCode"], json.loads(response["body"])


def test_lambda_example_creates_lists_and_gets_jobs(app: ModuleType) -> None:
    body = json.dumps({"pdf_url": "https://example.com/a.pdf"})
    status, created = _call(app, _rest("POST", body=body))
    assert status == 201
    assert created["client_id"] == "q1w2e3r4t5"
    status, page = _call(app, _rest("GET", queryStringParameters={"limit": "5"}))
    assert (status, [j["id"] for j in page["items"]], page["next_cursor"]) == (
        200,
        [created["id"]],
        None,
    )
    get = _rest("GET", pathParameters={"job_id": created["id"]})
    assert _call(app, get) == (200, {"job": created, "result": None})


def test_lambda_example_retried_create_with_a_job_id_is_one_job(app: ModuleType) -> None:
    body = json.dumps({"pdf_url": "https://example.com/a.pdf", "job_id": str(_uuid())})
    first = _call(app, _rest("POST", body=body))
    assert _call(app, _rest("POST", body=body)) == first
    assert len(_call(app, _rest("GET"))[1]["items"]) == 1


def _uuid() -> Any:
    import uuid

    return uuid.uuid4()


@pytest.mark.parametrize(
    ("event", "status", "field"),
    [
        ({"httpMethod": "POST", "body": "{not json"}, 400, "body"),
        ({"httpMethod": "POST", "body": "[]"}, 400, "body"),
        ({"httpMethod": "POST", "body": "{}"}, 400, "pdf_url"),
        (
            {"httpMethod": "POST", "body": json.dumps({"pdf_url": "file:///etc/passwd"})},
            400,
            "pdf_url",
        ),
        ({"httpMethod": "GET", "queryStringParameters": {"limit": "-1"}}, 400, "limit"),
        ({"httpMethod": "GET", "queryStringParameters": {"cursor": "forged"}}, 400, "cursor"),
        ({"httpMethod": "GET", "pathParameters": {"job_id": "nope"}}, 400, "job_id"),
        ({"httpMethod": "DELETE"}, 405, None),
    ],
)
def test_lambda_example_answers_bad_requests_with_json(
    app: ModuleType, event: dict[str, Any], status: int, field: str | None
) -> None:
    got_status, body = _call(app, _rest("GET") | event)
    assert got_status == status
    assert body.get("field") == field
    assert "error" in body


def test_lambda_example_hides_other_clients_jobs_and_needs_a_client(app: ModuleType) -> None:
    body = json.dumps({"pdf_url": "https://example.com/a.pdf"})
    _, created = _call(app, _rest("POST", body=body))
    other: dict[str, Any] = json.loads((EVENTS / "rest_lambda_authorizer.json").read_text())
    other |= {"httpMethod": "GET", "pathParameters": {"job_id": created["id"]}}
    assert _call(app, other) == (404, {"error": "not found"})
    anonymous: dict[str, Any] = json.loads((EVENTS / "rest_no_identity.json").read_text())
    status, answer = _call(app, anonymous | {"httpMethod": "GET"})
    assert (status, answer["field"]) == (400, "event")


def test_sam_template_points_at_files_that_exist() -> None:
    template = (EXAMPLES / "lambda" / "template.yaml").read_text()
    layer = re.search(r"ContentUri: \.\./\.\./dist/layers/(\S+\.zip)", template)
    assert layer is not None
    assert layer.group(1) == f"cira-db-{__version__}-python3.12-arm64.zip"
    assert "Runtime: python3.12" in template
    assert "Architectures: [arm64]" in template
    assert "Handler: app.handler" in template
    assert (EXAMPLES / "lambda" / "app" / "app.py").is_file()
    assert "Handler: cira_db.aws.migrate_handler" in template
    assert "CIRA_DB_IAM_AUTH" in template
    assert "rds-db:connect" in template


# -- examples/worker -------------------------------------------------------------------


def _start_worker(url: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / "worker" / "worker.py")],
        env={**os.environ, "CIRA_DB_URL": url, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _stop(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=20)
    assert worker.returncode == 0, output
    assert "worker stopped" in output
    return output


@pytest.mark.slow
def test_worker_completes_fails_and_keeps_a_slow_lease(cira_db_url: str) -> None:
    with Database(cira_db_url) as db:
        jobs = JobRepository(db)
        fast = [jobs.create(client_id="c", pdf_url=f"https://e.com/{i}.pdf") for i in range(3)]
        slow = jobs.create(client_id="c", pdf_url="https://e.com/slow.pdf")
        bad = jobs.create(client_id="c", pdf_url="https://e.com/bad.pdf")
        worker = _start_worker(cira_db_url, WORKER_LEASE_SECONDS="1.5", WORKER_SLOW_SECONDS="4")
        try:
            _wait_for(lambda: jobs.get(slow.id, client_id="c").status == JobStatus.PROCESSING)
            for _ in range(30):  # four seconds of work on a 1.5 s lease: heartbeats keep it
                assert jobs.release_expired() == []
                time.sleep(0.15)

            def drained() -> bool:
                counts = jobs.count_by_status(client_id="c")
                return counts.get(JobStatus.COMPLETED, 0) + counts.get(JobStatus.FAILED, 0) == 5

            _wait_for(drained)
        finally:
            _stop(worker)
        for job in [*fast, slow]:
            done = jobs.get(job.id, client_id="c")
            assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)
        failed = jobs.get(bad.id, client_id="c")
        assert failed.status == JobStatus.FAILED
        assert failed.error_message == "ValueError: not a PDF"


@pytest.mark.slow
def test_worker_stops_on_sigterm_and_hands_back_unstarted_jobs(cira_db_url: str) -> None:
    with Database(cira_db_url) as db:
        jobs = JobRepository(db)
        slow = [jobs.create(client_id="c", pdf_url=f"https://e.com/slow{i}.pdf") for i in range(3)]
        worker = _start_worker(cira_db_url, WORKER_SLOW_SECONDS="3")
        _wait_for(lambda: jobs.get(slow[0].id, client_id="c").status == JobStatus.PROCESSING)
        # Claimed is not started: a stop between the claim and the first job hands every
        # job back. Halfway through the first job's 3 s, it is in hand on a loaded machine too.
        time.sleep(1.5)
        _stop(worker)
        states = [jobs.get(job.id, client_id="c").status for job in slow]
        assert states == [JobStatus.COMPLETED, JobStatus.QUEUED, JobStatus.QUEUED]
