"""The batch calls' logic, written once: complete_many, fail_many, extend_leases.

Sans-I/O like ``_core_jobs.py``: each function checks every item (errors name
the item, ``items[3].confidence_score``) before any SQL, yields ONE `Call`
whose parameters are one array per field (``unnest`` in the statement: bound
values, never statement text, so a batch of 1000 is no longer a statement
than a batch of 1), and turns the rows it gets back (one per item, in input
order) into `ItemOutcome` values.

Items are independent by default: a stale item (not found, not processing,
claimed again) is reported and the others are applied. With ``atomic=True``
the statement changes nothing unless every item can be applied, and the call
raises (`NotFoundError` if the first refused item is not found, else
`InvalidTransitionError`), naming the first refused item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg.rows import tuple_row

from cira_db._models import (
    STATUS_BY_LABEL,
    CompletedAndClaimed,
    Completion,
    Failure,
    ItemOutcome,
    Job,
    JobResult,
    JobStatus,
    OutcomeKind,
)
from cira_db._repositories._base import (
    Call,
    Logic,
    RowFactory,
    make_result,
    model_builder,
    prefixed_builder,
)
from cira_db._repositories._core_jobs import JobLogic, _claim_order
from cira_db._repositories._ids import uuid7_batch
from cira_db._repositories._jsonb import stored_document
from cira_db._sql import query
from cira_db._validation import (
    LIMIT_MAX,
    check_confidence_score,
    check_error_message,
    check_job_id,
    check_lease,
    check_limit,
    check_optional_attempt,
    check_optional_client_id,
    check_retry_in,
    check_tokens_used,
)
from cira_db.errors import (
    DatabaseUnavailableError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)

__all__ = [
    "commits_each_statement",
    "complete_and_claim",
    "complete_many",
    "extend_leases",
    "fail_many",
]


_log = logging.getLogger("cira_db.calls")

_COMPLETE_JOBS: Final = query("jobs.sql", "complete_jobs")
_FAIL_JOBS: Final = query("jobs.sql", "fail_jobs")
_EXTEND_LEASES: Final = query("jobs.sql", "extend_leases")
_COMPLETE_AND_CLAIM: Final = query("jobs.sql", "complete_jobs_and_claim")
_COMPLETE_AND_CLAIM_FOR_CLIENT: Final = query("jobs.sql", "complete_jobs_and_claim_for_client")

BATCH_MAX: Final = LIMIT_MAX
"""At most this many items per batch call (as many as `claim_batch` hands out)."""

# A reply row: (n, outcome, current_attempts, the changed row or None).
_Reply = tuple[int, str | None, int | None, Any]


_REPLY_COLUMNS: Final = ("n", "outcome", "current_attempts")


def _batch_reply(names: tuple[str, ...]) -> Callable[[Sequence[Any]], _Reply]:
    """Rows of ``n``, ``outcome``, ``current_attempts`` then the job columns -> `_Reply`.

    The job is None where the item changed nothing (its columns are NULL).
    """
    if names[: len(_REPLY_COLUMNS)] != _REPLY_COLUMNS:
        raise TypeError(f"the first columns must be {list(_REPLY_COLUMNS)}, got {list(names)}")
    _, make = prefixed_builder(Job, names, _REPLY_COLUMNS)

    def build(values: Sequence[Any]) -> _Reply:
        return values[0], values[1], values[2], make(values)

    return build


# An item's outcome, as ``ItemOutcome(*values)`` makes it without its frozen __init__.
_make_item: Final[Callable[[Sequence[Any]], ItemOutcome[Any]]] = model_builder(
    ItemOutcome, ("index", "job_id", "outcome", "value", "status", "attempts")
)
_REPLY_ROWS: Final = RowFactory(_batch_reply)
# Bound to each statement: its builder is found once (`RowFactory.of`).
_FAIL_JOBS_ROWS: Final = _REPLY_ROWS.of(_FAIL_JOBS)
_EXTEND_LEASES_ROWS: Final = _REPLY_ROWS.of(_EXTEND_LEASES)


def _items(value: object, kind: type, field: str = "items") -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValidationError(
            field, f"must be a list of {kind.__name__}, not {type(value).__name__}"
        )
    if len(value) > BATCH_MAX:
        raise ValidationError(field, f"at most {BATCH_MAX} items per call")
    for index, item in enumerate(value):
        if not isinstance(item, kind):
            raise ValidationError(
                f"{field}[{index}]", f"must be a {kind.__name__}, not {type(item).__name__}"
            )
    return value


def _distinct(ids: list[UUID], field: str) -> None:
    if len(set(ids)) == len(ids):
        return
    seen: dict[UUID, int] = {}
    for index, job_id in enumerate(ids):
        first = seen.setdefault(job_id, index)
        if first != index:
            raise ValidationError(
                f"{field}[{index}]", f"job {job_id} is also {field}[{first}]; one item per job"
            )


def _at(index: int, error: ValidationError, field: str = "items") -> ValidationError:
    """``error`` about one field of an item, renamed ``items[index].<field>``.

    The per-item checks run with their plain field names and only a refused
    item pays for building its indexed name (ten f-strings a batch saved).
    """
    message = str(error).removeprefix(f"{error.field}: ")
    return ValidationError(f"{field}[{index}].{error.field}", message)


def _check_atomic(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValidationError("atomic", f"must be a bool, not {type(value).__name__}")
    return value


def _outcomes(
    replies: list[_Reply], ids: list[UUID], attempts: list[int | None], *, cancel_moves: bool
) -> list[ItemOutcome[Any]]:
    """One `ItemOutcome` per item, from the statement's rows (one per item, by ``n``)."""
    outcomes: list[ItemOutcome[Any]] = []
    for n, label, current, row in replies:
        index = n - 1
        job_id, attempt = ids[index], attempts[index]
        status = None if label is None or label == "repeated" else STATUS_BY_LABEL[label]
        kind: OutcomeKind
        if label is None:
            kind = "not_found"
        elif row is not None:
            moved_to = getattr(row, "status", None)
            kind = "cancelled" if cancel_moves and moved_to is JobStatus.CANCELLED else "done"
            if label == "repeated":
                status = JobStatus.COMPLETED
        elif attempt is not None and current is not None and current > attempt:
            kind = "claimed_again"  # attempts only grow: the item's claim is gone
        elif status is JobStatus.CANCELLED:
            kind = "cancelled"
        else:
            kind = "wrong_state"
        outcomes.append(_make_item((index, job_id, kind, row, status, current)))
    return outcomes


def _atomic_refusal(
    action: str, outcomes: list[ItemOutcome[Any]], attempts: list[int | None]
) -> None:
    """Raise for the first item refused on its own (not merely held back by atomic=True)."""
    refused = [
        item
        for item in outcomes
        if item.value is None
        and not (
            item.status is JobStatus.PROCESSING and attempts[item.index] in (None, item.attempts)
        )
    ]
    if not refused:
        return
    first = refused[0]
    text = (
        f"{action}: items[{first.index}] (job {first.job_id}) was refused ({first.outcome}"
        f"{'' if first.status is None else ', ' + first.status.value}); "
        f"{len(refused)} of {len(outcomes)} items refused; atomic=True, so nothing was changed"
    )
    if first.outcome == "not_found":
        raise NotFoundError(text)
    raise InvalidTransitionError(text)


class _Completions:
    """A batch of `Completion` items checked and turned into the statement's arrays.

    The result ids are fixed here, before the first try: a repeat after a lost
    reply finds these result rows and reports the items done (``repeated``),
    so repeating is harmless.
    """

    __slots__ = (
        "attempts",
        "data",
        "documents",
        "ids",
        "params",
        "result_ids",
        "scores",
        "tokens",
    )

    def __init__(self, items: Sequence[Completion], client: str | None) -> None:
        given = _items(items, Completion)
        self.ids: list[UUID] = []
        self.attempts: list[int | None] = []
        self.data: list[str] = []
        self.documents: list[dict[str, Any]] = []  # as the stored column gives them back
        self.scores: list[Decimal] = []
        self.tokens: list[int] = []
        for index, item in enumerate(given):
            try:
                self.ids.append(check_job_id(item.job_id))
                text, document = stored_document(item.extracted_data)
                self.data.append(text)
                self.documents.append(document)
                self.scores.append(check_confidence_score(item.confidence_score))
                self.tokens.append(check_tokens_used(item.tokens_used))
                self.attempts.append(check_optional_attempt(item.attempt))
            except ValidationError as error:
                raise _at(index, error) from None
        _distinct(self.ids, "items")
        self.result_ids = uuid7_batch(len(self.ids))
        self.params: dict[str, Any] = {
            "ids": self.ids,
            "attempts": self.attempts,
            "result_ids": self.result_ids,
            "extracted_data": self.data,
            "confidence_scores": self.scores,
            "tokens_used": self.tokens,
            "client_id": client,
        }

    def outcomes(
        self, rows: Sequence[tuple[int, str | None, int | None, datetime | None]]
    ) -> list[ItemOutcome[JobResult]]:
        """One outcome per item from the rows ``(n, outcome, current_attempts, created_at)``."""
        ids, documents = self.ids, self.documents
        replies: list[_Reply] = [
            (
                n,
                label,
                current,
                None
                if created_at is None
                else make_result(
                    (
                        self.result_ids[n - 1],
                        ids[n - 1],
                        documents[n - 1],
                        self.scores[n - 1],
                        self.tokens[n - 1],
                        created_at,
                    )
                ),
            )
            for n, label, current, created_at in rows
        ]
        return _outcomes(replies, ids, self.attempts, cancel_moves=False)


def complete_many(
    items: Sequence[Completion], *, client_id: str | None, atomic: bool
) -> Logic[list[ItemOutcome[JobResult]]]:
    """Complete a batch of processing jobs with their results, one statement."""
    all_or_nothing = _check_atomic(atomic)
    batch = _Completions(items, check_optional_client_id(client_id))
    if not batch.ids:
        return []
    params = {**batch.params, "atomic": all_or_nothing}
    # One row per item: (n, outcome, current_attempts, the result's created_at or None).
    rows: list[tuple[int, str | None, int | None, datetime | None]] = yield Call.all(
        _COMPLETE_JOBS, params, tuple_row, "complete jobs", idempotent=True
    )
    outcomes = batch.outcomes(rows)
    if all_or_nothing:
        _atomic_refusal("complete jobs", outcomes, batch.attempts)
    return outcomes


def commits_each_statement(executor: object) -> bool:
    """Whether every statement run on ``executor`` commits on its own.

    True for a `Database` / `AsyncDatabase` (each call its own transaction) and
    for a caller's autocommit connection outside a transaction; False inside
    a caller's transaction, which commits (or not) when the caller says.
    """
    if not isinstance(executor, psycopg.Connection | psycopg.AsyncConnection):
        return True
    idle = executor.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    return bool(executor.autocommit and idle)


def complete_and_claim(
    items: Sequence[Completion],
    limit: int,
    *,
    lease: timedelta,
    client_id: str | None,
    recover: bool = True,
) -> Logic[CompletedAndClaimed]:
    """Complete a batch (items on their own) and claim the next, one statement, one commit.

    ``recover``: each statement commits on its own (a `Database`, or a
    caller's autocommit connection outside a transaction), so after a
    `DatabaseUnavailableError` the items can be completed again alone. Inside
    a caller's transaction the error is raised as it is (the transaction is
    aborted; nothing was committed).
    """
    client = check_optional_client_id(client_id)
    batch = _Completions(items, client)
    claim = {"limit": check_limit(limit), "lease": check_lease(lease)}
    params = {**batch.params, **claim}
    if client is None:  # the plain statement has no client filter
        statement, row_factory = _COMPLETE_AND_CLAIM, _COMPLETE_AND_CLAIM_ROWS
        del params["client_id"]
    else:
        statement, row_factory = _COMPLETE_AND_CLAIM_FOR_CLIENT, _COMPLETE_AND_CLAIM_FOR_CLIENT_ROWS
    try:
        # Not repeated on a failure: the claim may have happened (as claim_batch).
        rows: list[tuple[tuple[Any, ...], Job | None]] = yield Call.all(
            statement,
            params,
            row_factory,
            "complete and claim jobs",
            idempotent=False,
        )
    except DatabaseUnavailableError as exc:
        if not batch.ids or not recover:
            raise
        return (yield from _recover(batch, limit, lease, client, exc))
    done = [item for item, job in rows if job is None]
    claimed = [job for _, job in rows if job is not None]
    claimed.sort(key=_claim_order)
    return CompletedAndClaimed(batch.outcomes(done), claimed)


def _recover(
    batch: _Completions,
    limit: int,
    lease: timedelta,
    client: str | None,
    failure: DatabaseUnavailableError,
) -> Logic[CompletedAndClaimed]:
    """After the combined statement failed: the items alone (safe to repeat), then a claim.

    The completion runs with retries and the same result ids, so a lost try
    that did commit has its items reported done with the rows it stored. The
    claim is `claim_batch`'s, one more try, never repeated; if it fails, the
    error says the items were stored. Jobs a lost try claimed stay claimed
    until their lease ends (their attempt is used up), as after a worker
    crash: logged.
    """
    _log.warning(
        "%s; completing the %d items again on their own, then "
        "claiming again (jobs a lost try claimed return to the queue when their lease ends)",
        failure,
        len(batch.ids),
    )
    rows: list[tuple[int, str | None, int | None, datetime | None]] = yield Call.all(
        _COMPLETE_JOBS,
        {**batch.params, "atomic": False},
        tuple_row,
        "complete jobs",
        idempotent=True,
    )
    outcomes = batch.outcomes(rows)
    try:
        claimed = yield from JobLogic().claim_batch(limit, lease=lease, client_id=client)
    except DatabaseUnavailableError as exc:
        stored = sum(outcome.ok for outcome in outcomes)
        raise DatabaseUnavailableError(
            f"{exc} (complete and claim jobs: the {len(outcomes)} items were completed first, "
            f"{stored} done; the claim failed: claim again)"
        ) from (exc.__cause__ or exc)  # the psycopg error stays the cause
    return CompletedAndClaimed(outcomes, claimed)


_STEP_COLUMNS: Final = ("n", "outcome", "current_attempts", "result_created_at")


def _step_reply(
    names: tuple[str, ...],
) -> Callable[[Sequence[Any]], tuple[tuple[Any, ...], Job | None]]:
    """complete_jobs_and_claim rows -> (an item's four columns, None) or (_, a claimed job)."""
    if names[: len(_STEP_COLUMNS)] != _STEP_COLUMNS:
        raise TypeError(f"the first columns must be {list(_STEP_COLUMNS)}, got {list(names)}")
    start, make = prefixed_builder(Job, names, _STEP_COLUMNS)

    def build(values: Sequence[Any]) -> tuple[tuple[Any, ...], Job | None]:
        return tuple(values[:start]), make(values)

    return build


_STEP_ROWS: Final = RowFactory(_step_reply)
_COMPLETE_AND_CLAIM_ROWS: Final = _STEP_ROWS.of(_COMPLETE_AND_CLAIM)
_COMPLETE_AND_CLAIM_FOR_CLIENT_ROWS: Final = _STEP_ROWS.of(_COMPLETE_AND_CLAIM_FOR_CLIENT)


def fail_many(
    items: Sequence[Failure], *, client_id: str | None, atomic: bool
) -> Logic[list[ItemOutcome[Job]]]:
    """Fail (or re-queue with ``retry_in``) a batch of processing jobs, one statement."""
    given = _items(items, Failure)
    all_or_nothing = _check_atomic(atomic)
    client = check_optional_client_id(client_id)
    ids: list[UUID] = []
    attempts: list[int | None] = []
    messages: list[str] = []
    retry_ins: list[timedelta | None] = []
    for index, item in enumerate(given):
        try:
            ids.append(check_job_id(item.job_id))
            messages.append(check_error_message(item.error_message))
            attempts.append(check_optional_attempt(item.attempt))
            retry_ins.append(check_retry_in(item.retry_in))
        except ValidationError as error:
            raise _at(index, error) from None
    _distinct(ids, "items")
    if not ids:
        return []
    params = {
        "ids": ids,
        "attempts": attempts,
        "error_messages": messages,
        "retry_ins": retry_ins,
        "client_id": client,
        "atomic": all_or_nothing,
    }
    # Never repeated: after a lost reply a repeat would find the jobs failed
    # (or re-queued, maybe claimed again) and misreport what the first try did.
    replies: list[_Reply] = yield Call.all(
        _FAIL_JOBS, params, _FAIL_JOBS_ROWS, "fail jobs", idempotent=False
    )
    outcomes = _outcomes(replies, ids, attempts, cancel_moves=True)
    if all_or_nothing:
        _atomic_refusal("fail jobs", outcomes, attempts)
    return outcomes


def extend_leases(
    job_ids: Sequence[UUID | str],
    *,
    lease: timedelta,
    attempts: Sequence[int | None] | None,
    client_id: str | None,
) -> Logic[list[ItemOutcome[Job]]]:
    """Move the leases of a batch of processing jobs, one statement; safe to repeat."""
    if isinstance(job_ids, str | bytes) or not isinstance(job_ids, Sequence):
        raise ValidationError("job_ids", f"must be a list of UUIDs, not {type(job_ids).__name__}")
    if len(job_ids) > BATCH_MAX:
        raise ValidationError("job_ids", f"at most {BATCH_MAX} ids per call")
    ids = [check_job_id(job_id, f"job_ids[{index}]") for index, job_id in enumerate(job_ids)]
    claims: list[int | None]
    if attempts is None:
        claims = [None] * len(ids)
    else:
        if isinstance(attempts, str | bytes) or not isinstance(attempts, Sequence):
            raise ValidationError("attempts", "must be a list of ints (or None) or None")
        if len(attempts) != len(ids):
            raise ValidationError(
                "attempts", f"must hold one entry per job id ({len(ids)}), not {len(attempts)}"
            )
        claims = [
            check_optional_attempt(attempt, f"attempts[{index}]")
            for index, attempt in enumerate(attempts)
        ]
    params = {
        "ids": ids,
        "attempts": claims,
        "lease": check_lease(lease),
        "client_id": check_optional_client_id(client_id),
    }
    _distinct(ids, "job_ids")
    if not ids:
        return []
    # Repeating is harmless: a lease moved twice ends at now() + lease, and a
    # job the first try moved to cancelled is reported "cancelled" again.
    replies: list[_Reply] = yield Call.all(
        _EXTEND_LEASES, params, _EXTEND_LEASES_ROWS, "extend leases", idempotent=True
    )
    return _outcomes(replies, ids, claims, cancel_moves=True)
