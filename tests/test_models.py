"""cira_db._models: the JSON form of jobs and results (`to_json_dict`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from cira_db import Job, JobRepository, JobResult, JobStatus


def _roundtrip(data: dict[str, object]) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(json.dumps(data))  # no default=: must be plain JSON
    return loaded


def test_job_json_hides_worker_fields_unless_internal(jobs: JobRepository) -> None:
    job = jobs.create(client_id="client-a", pdf_url="https://example.com/a.pdf")
    public = _roundtrip(job.to_json_dict())
    assert public == {
        "id": str(job.id),
        "client_id": "client-a",
        "status": "queued",
        "pdf_url": "https://example.com/a.pdf",
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "completed_at": None,
        "error_message": None,
        "priority": 0,
        "run_after": None,
        "progress": None,
        "cancel_requested_at": None,
    }
    assert datetime.fromisoformat(str(public["created_at"])) == job.created_at
    assert str(public["created_at"]).endswith("+00:00")
    claimed = jobs.claim_next(lease=timedelta(minutes=5), client_id="client-a")
    assert claimed is not None
    internal = _roundtrip(claimed.to_json_dict(internal=True))
    assert internal["attempts"] == 1
    assert claimed.lease_expires_at is not None
    assert datetime.fromisoformat(str(internal["lease_expires_at"])) == claimed.lease_expires_at
    assert internal["status"] == "processing"


def test_result_json_is_plain_and_exact(jobs: JobRepository) -> None:
    job = jobs.create(client_id="client-a", pdf_url="https://example.com/a.pdf")
    claimed = jobs.claim_next(lease=timedelta(minutes=5), client_id="client-a")
    assert claimed is not None
    data = {"title": "Report", "pages": [1, 2], "total": 12.5, "nested": {"ok": True}}
    result = jobs.complete(
        job.id, extracted_data=data, confidence_score=Decimal("0.95"), tokens_used=42
    )
    out = _roundtrip(result.to_json_dict())
    assert out == {
        "id": str(result.id),
        "job_id": str(job.id),
        "extracted_data": data,
        "confidence_score": 0.95,
        "tokens_used": 42,
        "created_at": result.created_at.isoformat(),
    }
    assert UUID(str(out["id"])) == result.id


def test_every_two_place_confidence_is_written_exactly() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    for hundredths in range(101):
        score = Decimal(hundredths) / 100
        result = JobResult(UUID(int=1), UUID(int=2), {}, score, 0, now)
        text = json.dumps(result.to_json_dict()["confidence_score"])
        assert Decimal(text) == score


def test_json_dict_does_not_share_the_result_document() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    result = JobResult(UUID(int=1), UUID(int=2), {"a": [1]}, Decimal("0.5"), 1, now)
    result.to_json_dict()["extracted_data"]["a"].append(2)
    assert result.extracted_data == {"a": [1]}
    job = Job(UUID(int=3), "c", JobStatus.FAILED, "https://e/x.pdf", now, now, now, "boom", 3, None)
    assert job.to_json_dict(internal=True)["lease_expires_at"] is None
