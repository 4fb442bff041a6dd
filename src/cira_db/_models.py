"""Rows and values returned by the repositories: frozen, slotted dataclasses."""

from __future__ import annotations

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


STATUS_BY_LABEL: Final[Mapping[str, JobStatus]] = MappingProxyType(
    {status.value: status for status in JobStatus}
)
"""Each ``job_status`` label -> its `JobStatus`: the one mapping, for rows and for arguments."""


@dataclass(frozen=True, slots=True)
class Job:
    """One PDF to process, as stored in ``jobs``."""

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


@dataclass(frozen=True, slots=True)
class JobResult:
    """What the extraction produced for one job, as stored in ``job_results``."""

    id: UUID
    job_id: UUID
    extracted_data: dict[str, Any]
    confidence_score: Decimal
    tokens_used: int
    created_at: datetime


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
