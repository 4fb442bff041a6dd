"""Rows and values returned by the repositories: frozen, slotted dataclasses."""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar
from uuid import UUID

__all__ = ["Job", "JobResult", "JobStatus", "Page", "Usage"]

T = TypeVar("T")


class JobStatus(enum.StrEnum):
    """A job's place in its life; the values are the ``job_status`` enum's labels."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


STATUS_BY_LABEL: Final[Mapping[str, JobStatus]] = MappingProxyType(
    {status.value: status for status in JobStatus}
)
"""Each ``job_status`` label -> its `JobStatus`: the one mapping, for rows and for arguments."""


@dataclass(frozen=True, slots=True)
class Job:
    """One PDF to process, as stored in ``jobs``.

    ``priority`` (-100..100, higher first), ``run_after`` (not claimed before
    then; None: at once), ``progress`` (a small JSON object a worker reports)
    and ``cancel_requested_at`` (a cancel was asked for while it was being
    processed) come from migration 0003; the calls that set them arrive with
    the queue features (docs/jobs.md).
    """

    id: UUID
    client_id: str
    status: JobStatus
    pdf_url: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    error_message: str | None
    attempts: int
    lease_expires_at: datetime | None
    run_after: datetime | None = None
    priority: int = 0
    progress: dict[str, Any] | None = None
    cancel_requested_at: datetime | None = None

    def to_json_dict(self, *, internal: bool = False) -> dict[str, Any]:
        """This job as a dict `json.dumps` accepts as it is, for an API response.

        UUIDs become strings, datetimes ISO 8601 strings with their UTC offset
        (``"2026-01-02T03:04:05.123456+00:00"``), the status its label. The
        worker's bookkeeping (``attempts``, ``lease_expires_at``) is left out
        unless ``internal`` is true.
        """
        data: dict[str, Any] = {
            "id": str(self.id),
            "client_id": self.client_id,
            "status": self.status.value,
            "pdf_url": self.pdf_url,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "completed_at": _iso(self.completed_at),
            "error_message": self.error_message,
            "priority": self.priority,
            "run_after": _iso(self.run_after),
            "progress": copy.deepcopy(self.progress),
            "cancel_requested_at": _iso(self.cancel_requested_at),
        }
        if internal:
            data["attempts"] = self.attempts
            data["lease_expires_at"] = _iso(self.lease_expires_at)
        return data


@dataclass(frozen=True, slots=True)
class JobResult:
    """What the extraction produced for one job, as stored in ``job_results``."""

    id: UUID
    job_id: UUID
    extracted_data: dict[str, Any]
    confidence_score: Decimal
    tokens_used: int
    created_at: datetime

    def to_json_dict(self) -> dict[str, Any]:
        """This result as a dict `json.dumps` accepts as it is, for an API response.

        UUIDs become strings, ``created_at`` an ISO 8601 string with its UTC
        offset, and ``confidence_score`` a JSON number: it has at most two
        decimal places, so the number written is exactly the stored one
        (``Decimal("0.95")`` -> ``0.95``). ``extracted_data`` is the stored
        JSON document itself (a copy).
        """
        return {
            "id": str(self.id),
            "job_id": str(self.job_id),
            "extracted_data": copy.deepcopy(self.extracted_data),
            "confidence_score": float(self.confidence_score),
            "tokens_used": self.tokens_used,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing.

    ``next_cursor`` is opaque; pass it back as ``cursor=`` for the next page.
    It is None on the last page.
    """

    items: Sequence[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Usage:
    """Cost tracking for one client over a time range."""

    jobs: int
    tokens_used: int
    mean_confidence: Decimal | None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
