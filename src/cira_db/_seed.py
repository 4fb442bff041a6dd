"""Development and test data: realistic jobs and results, reproducible, loaded with COPY.

``seed(db, jobs=10_000, clients=3, seed=7)`` writes the same rows every time
for the same arguments (ids, timestamps, JSON and all), from
``random.Random(seed)`` and a fixed time anchor. The mix looks like a
working service: mostly completed jobs with results (JSON, confidence,
tokens), some failed ones with an error, a few processing under a lease and
a recent queue. Client ids come from a small fixed set (`MOCK_CLIENT_IDS`)
and are spread unevenly, the first client busiest.

Everything is written in one transaction with COPY (all or nothing), into a
migrated database (`DatabaseError` saying to migrate first, otherwise).
Seeding the same ``seed`` twice into one database fails with
`ConflictError`, since the ids are the same.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import Any, Final
from uuid import UUID

import psycopg

from cira_db._models import JobStatus
from cira_db._repositories._base import Executor, Runner
from cira_db._repositories._ids import uuid7_at
from cira_db._sql import query
from cira_db._validation import check_aware_datetime, check_limit
from cira_db.errors import ConflictError, DatabaseError, ValidationError

__all__ = ["DEFAULT_ANCHOR", "MOCK_CLIENT_IDS", "SeedSummary", "client_ids", "seed"]

_COPY_JOBS: Final = query("jobs.sql", "copy_jobs")
_COPY_JOB_RESULTS: Final = query("job_results.sql", "copy_job_results")

MOCK_CLIENT_IDS: Final = (
    "client-a",
    "client-b",
    "client-c",
    "test-client-1",
    "test-client-2",
    "demo-client",
)
"""The mock client ids of the origin story's seed data, in seeding order."""

DEFAULT_ANCHOR: Final = datetime(2025, 1, 1, tzinfo=UTC)
"""The default "now" of seeded data: fixed, so a seed reproduces exactly."""

JOBS_MAX: Final = 10_000_000
CLIENTS_MAX: Final = 1000
_CHUNK: Final = 5000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# Share of each status, in the order they are drawn.
_STATUS_SHARES: Final = (
    (JobStatus.COMPLETED, 0.72),
    (JobStatus.FAILED, 0.08),
    (JobStatus.PROCESSING, 0.04),
    (JobStatus.QUEUED, 0.16),
)
_MICROSECOND: Final = timedelta(microseconds=1)
_HISTORY: Final = 30 * 24 * 3600 * 1_000_000  # finished jobs: the last 30 days
_QUEUE_AGE: Final = 2 * 3600 * 1_000_000  # the queue: the last 2 hours
_LEASED_AGE: Final = 10 * 60 * 1_000_000  # jobs being processed: the last 10 minutes
_LEASE: Final = timedelta(minutes=15)
_DOCUMENT_TYPES: Final = ("invoice", "receipt", "purchase_order", "bank_statement", "contract")
_VENDORS: Final = (
    "Acme Corp",
    "Globex GmbH",
    "Initech Ltd",
    "Umbrella SA",
    "Stark Industries",
    "Wayne Enterprises",
    "Hooli Inc",
)
_CURRENCIES: Final = ("EUR", "USD", "GBP", "CHF")
_ITEMS: Final = (
    "Consulting hours",
    "Licence fee",
    "Hardware",
    "Travel expenses",
    "Support plan",
    "Shipping",
    "Office supplies",
)
_COUNTRIES: Final = ("DE", "FR", "GB", "US")
_LANGUAGES: Final = ("en", "de", "fr")
_ERRORS: Final = (
    "unreadable PDF: no text layer and OCR confidence below 0.3",
    "download failed: HTTP 404",
    "download failed: HTTP 403 (pre-signed URL expired)",
    "password-protected PDF",
    "extraction timed out after 300 s",
    "file is not a PDF (content type text/html)",
)


@dataclass(frozen=True, slots=True)
class SeedSummary:
    """What `seed` wrote."""

    jobs: int
    results: int
    clients: tuple[str, ...]
    by_status: Mapping[JobStatus, int]


def client_ids(count: int) -> tuple[str, ...]:
    """The first ``count`` mock client ids; beyond the fixed six, ``client-007``..."""
    fixed = MOCK_CLIENT_IDS[:count]
    extra = tuple(f"client-{n:03d}" for n in range(len(MOCK_CLIENT_IDS) + 1, count + 1))
    return fixed + extra


def seed(
    executor: Executor,
    *,
    jobs: int = 1000,
    clients: int = 3,
    seed: int = 0,
    anchor: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SeedSummary:
    """Write ``jobs`` generated jobs for ``clients`` mock clients; reproducible per ``seed``.

    ``anchor`` is the "now" of the data (default `DEFAULT_ANCHOR`, fixed):
    finished jobs are spread over the 30 days before it, the queue and the
    leases sit just before it. Pass ``datetime.now(UTC)`` for data that
    looks current (leases then still run). ``progress(done, total)`` is
    called after every chunk of 5,000 jobs. One transaction (a savepoint
    on a caller's connection that is in one already).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 0 <= jobs <= JOBS_MAX:
        raise ValidationError("jobs", f"must be an int from 0 to {JOBS_MAX}")
    check_limit(clients, "clients", CLIENTS_MAX)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValidationError("seed", "must be an int")
    now = DEFAULT_ANCHOR if anchor is None else check_aware_datetime(anchor, "anchor")
    names = client_ids(clients)
    rng = random.Random(seed)  # noqa: S311 - reproducible sample data, not security
    maker = _Maker(rng, now, names)
    by_status = dict.fromkeys(JobStatus, 0)
    results = 0
    run = Runner(executor)
    try:
        with run.transaction("seed jobs") as conn, conn.cursor() as cur:
            done = 0
            while done < jobs:
                count = min(_CHUNK, jobs - done)
                result_rows: list[tuple[Any, ...]] = []
                # Rows are drawn while COPY streams them: the server indexes
                # one part while Python draws the next.
                with cur.copy(_COPY_JOBS.sql) as copy:
                    for number in range(done, done + count):
                        status, row, result = maker.job(number)
                        copy.write_row(row)
                        by_status[status] += 1
                        if result is not None:
                            result_rows.append(result)
                with cur.copy(_COPY_JOB_RESULTS.sql) as copy:
                    for row in result_rows:
                        copy.write_row(row)
                results += len(result_rows)
                done += count
                if progress is not None:
                    progress(done, jobs)
    except ConflictError:
        raise ConflictError(
            f"seed {seed}: these rows exist already in this database; "
            "use another seed or a fresh database"
        ) from None
    except DatabaseError as exc:
        if not isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
            raise
        raise DatabaseError(
            "seed: the database has no jobs tables yet; migrate it first "
            "(`cira-db migrate`, or `Migrator(db).apply()`), then seed"
        ) from exc.__cause__
    if progress is not None and jobs == 0:
        progress(0, 0)
    return SeedSummary(jobs=jobs, results=results, clients=names, by_status=by_status)


class _Maker:
    """Draws one job (and result) at a time; times are kept as integer microseconds."""

    def __init__(self, rng: random.Random, now: datetime, names: tuple[str, ...]) -> None:
        self._rng = rng
        self._random = rng.random
        self._now = (now - _EPOCH) // _MICROSECOND
        self._names = names
        # Uneven clients: the first is the busiest (weights 1, 1/2, 1/3, ...).
        self._cumulative = list(accumulate(1.0 / (rank + 1) for rank in range(len(names))))

    def _int(self, low: int, high: int) -> int:
        return low + int(self._random() * (high - low + 1))

    def _pick(self, choices: tuple[str, ...]) -> str:
        return choices[int(self._random() * len(choices))]

    def _seconds(self, low: float, high: float) -> int:
        return int((low + (high - low) * self._random()) * 1_000_000)

    def job(self, number: int) -> tuple[JobStatus, tuple[Any, ...], tuple[Any, ...] | None]:
        """Job ``number``: its status, its row, and its result row when completed."""
        random = self._random
        client = self._rng.choices(self._names, cum_weights=self._cumulative)[0]
        draw = random()
        status = JobStatus.QUEUED
        for candidate, share in _STATUS_SHARES:
            if draw < share:
                status = candidate
                break
            draw -= share
        if status is JobStatus.QUEUED:
            created = self._now - self._int(0, _QUEUE_AGE)
        elif status is JobStatus.PROCESSING:
            created = self._now - self._int(0, _LEASED_AGE)
        else:
            created = self._now - self._int(0, _HISTORY)
        created_at = _EPOCH + timedelta(microseconds=created)
        job_id = uuid7_at(created // 1000, self._rng.getrandbits(74))
        document = self._pick(_DOCUMENT_TYPES)
        day = created_at.date()
        pdf_url = (
            f"https://cira-uploads.s3.amazonaws.com/{client}/"
            f"{day.year}/{day.month:02d}/{day.day:02d}/{document}-{number:07d}.pdf"
        )
        updated_at = created_at
        completed_at = error_message = lease_expires_at = None
        attempts = 0
        result = None
        if status is JobStatus.COMPLETED:
            attempts = 1 if random() < 0.9 else 2
            finished = created + self._seconds(3.0, 240.0)
            completed_at = updated_at = _EPOCH + timedelta(microseconds=finished)
            result = self._result(job_id, document, finished, completed_at)
        elif status is JobStatus.FAILED:
            attempts = self._int(1, 3)
            updated_at = _EPOCH + timedelta(microseconds=created + self._seconds(3.0, 240.0))
            error_message = self._pick(_ERRORS)
        elif status is JobStatus.PROCESSING:
            attempts = 1 if random() < 0.85 else 2
            claimed = min(self._now, created + self._seconds(0.5, 30.0))
            updated_at = _EPOCH + timedelta(microseconds=claimed)
            lease_expires_at = updated_at + _LEASE
        row = (
            job_id,
            client,
            status.value,
            pdf_url,
            created_at,
            updated_at,
            completed_at,
            error_message,
            attempts,
            lease_expires_at,
        )
        return status, row, result

    def _result(
        self, job_id: UUID, document: str, finished: int, completed_at: datetime
    ) -> tuple[Any, ...]:
        pick, number = self._pick, self._int
        pages = number(1, 12)
        tokens = pages * number(600, 1800) + number(150, 400)
        confidence = Decimal(min(100, max(35, round(self._rng.gauss(88.0, 8.0))))) / 100
        items: list[dict[str, Any]] = []
        total = 0
        for _ in range(number(1, 5)):
            quantity = number(1, 20)
            cents = number(500, 90_000)
            total += quantity * cents
            items.append(
                {"description": pick(_ITEMS), "quantity": quantity, "unit_price": cents / 100}
            )
        issued = (completed_at - timedelta(days=number(0, 45))).date()
        data = {
            "document_type": document,
            "reference": f"{document[:3].upper()}-{number(10_000, 99_999)}",
            "issue_date": issued.isoformat(),
            "vendor": {"name": pick(_VENDORS), "country": pick(_COUNTRIES)},
            "currency": pick(_CURRENCIES),
            "total": total / 100,
            "line_items": items,
            "pages": pages,
            "language": pick(_LANGUAGES),
        }
        result_id = uuid7_at(finished // 1000, self._rng.getrandbits(74))
        return (result_id, job_id, json.dumps(data), confidence, tokens, completed_at)
