"""Rows and values returned by the repositories: frozen, slotted dataclasses."""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Generic, Literal, NamedTuple, TypeAlias, TypeVar
from uuid import UUID

__all__ = [
    "CompletedAndClaimed",
    "Completion",
    "Failure",
    "ItemOutcome",
    "Job",
    "JobResult",
    "JobStatus",
    "OutcomeKind",
    "Page",
    "QueueStats",
    "Usage",
]

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


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The health of the queue (of one client, or of all), read in one statement.

    ``by_status``: how many jobs are in each status, every `JobStatus`
    present. ``oldest_due_age``: how long the queued job that has waited
    longest for a worker has been waiting since it became due (its
    ``run_after``, or its creation when it has none); None when no queued job
    is due. ``oldest_queued_age``: the age (since creation) of the oldest
    queued job, due or scheduled; None when nothing is queued. ``scheduled``:
    queued jobs whose ``run_after`` is still in the future. ``expired_leases``:
    processing jobs whose lease ran out (`release_expired` has not taken them
    back yet). ``measured_at``: the database's ``now()`` the figures are of.
    ``client_id`` is the client they cover, None for every client.
    """

    client_id: str | None
    by_status: dict[JobStatus, int]
    oldest_due_age: timedelta | None
    oldest_queued_age: timedelta | None
    scheduled: int
    expired_leases: int
    measured_at: datetime


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# -- batches (complete_many, fail_many, extend_leases) ---------------------------------


@dataclass(frozen=True, slots=True)
class Completion:
    """One item of `JobRepository.complete_many`: a claimed job's result.

    ``attempt`` is the ``attempts`` of the worker's claim
    (``attempt=claimed.attempts``): a job claimed again since is refused.
    The values are validated by ``complete_many`` (errors name the item, for
    example ``items[3].confidence_score``).
    """

    job_id: UUID | str
    extracted_data: dict[str, Any]
    confidence_score: float | Decimal | int
    tokens_used: int
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """One item of `JobRepository.fail_many`: why a claimed job failed.

    With ``retry_in`` the job goes back to the queue, to be claimed no
    earlier than ``now() + retry_in``; without it, it fails for good.
    ``attempt`` fences a stale claim as in `Completion`.
    """

    job_id: UUID | str
    error_message: str
    attempt: int | None = None
    retry_in: timedelta | None = None


OutcomeKind: TypeAlias = Literal["done", "cancelled", "not_found", "wrong_state", "claimed_again"]
"""What a batch call did with one item (see `ItemOutcome`)."""


@dataclass(frozen=True, slots=True)
class ItemOutcome(Generic[T]):
    """What a batch call (``complete_many``, ``fail_many``, ``extend_leases``) did with one item.

    ``outcome`` is one of:

    * ``"done"``: the item was applied; ``value`` is the stored `JobResult`
      (``complete_many``) or the changed `Job`.
    * ``"cancelled"``: the job's cancel was requested and it is now
      cancelled (``fail_many``, ``extend_leases`` move it there; ``value`` is
      the cancelled `Job` when this call moved it), or, for
      ``complete_many``, it was cancelled already and nothing was written.
    * ``"not_found"``: no such job (or another client's, given ``client_id``).
    * ``"wrong_state"``: the job is not processing (``status`` says what it is).
    * ``"claimed_again"``: the job was claimed again after the item's
      ``attempt``; the stale worker's item changed nothing.

    ``index`` is the item's position in the call's input; ``status`` and
    ``attempts`` are the job's as the statement found them (None when not found).
    """

    index: int
    job_id: UUID
    outcome: OutcomeKind
    value: T | None
    status: JobStatus | None
    attempts: int | None

    @property
    def ok(self) -> bool:
        """True when the item was applied as asked (``outcome == "done"``)."""
        return self.outcome == "done"


class CompletedAndClaimed(NamedTuple):
    """What `JobRepository.complete_and_claim` did: the batch it completed, the batch it claimed.

    ``outcomes`` holds one `ItemOutcome` per completed item, in input order,
    as `JobRepository.complete_many` reports them; ``claimed`` the newly
    claimed jobs in claim order, as `JobRepository.claim_batch` returns them
    (empty when nothing was due). Unpacks as ``outcomes, claimed = ...``.
    """

    outcomes: list[ItemOutcome[JobResult]]
    claimed: list[Job]
