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

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from psycopg.rows import tuple_row

from cira_db._models import (
    STATUS_BY_LABEL,
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
from cira_db._repositories._ids import uuid7_batch
from cira_db._repositories._jsonb import stored_json
from cira_db._sql import query
from cira_db._validation import (
    LIMIT_MAX,
    check_confidence_score,
    check_error_message,
    check_extracted_data,
    check_job_id,
    check_lease,
    check_optional_attempt,
    check_optional_client_id,
    check_retry_in,
    check_tokens_used,
)
from cira_db.errors import InvalidTransitionError, NotFoundError, ValidationError

__all__ = ["complete_many", "extend_leases", "fail_many"]


_COMPLETE_JOBS: Final = query("jobs.sql", "complete_jobs")
_FAIL_JOBS: Final = query("jobs.sql", "fail_jobs")
_EXTEND_LEASES: Final = query("jobs.sql", "extend_leases")

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


def complete_many(
    items: Sequence[Completion], *, client_id: str | None, atomic: bool
) -> Logic[list[ItemOutcome[JobResult]]]:
    """Complete a batch of processing jobs with their results, one statement."""
    given = _items(items, Completion)
    all_or_nothing = _check_atomic(atomic)
    client = check_optional_client_id(client_id)
    ids: list[UUID] = []
    attempts: list[int | None] = []
    data: list[str] = []
    scores: list[Decimal] = []
    tokens: list[int] = []
    for index, item in enumerate(given):
        try:
            ids.append(check_job_id(item.job_id))
            data.append(check_extracted_data(item.extracted_data))
            scores.append(check_confidence_score(item.confidence_score))
            tokens.append(check_tokens_used(item.tokens_used))
            attempts.append(check_optional_attempt(item.attempt))
        except ValidationError as error:
            raise _at(index, error) from None
    _distinct(ids, "items")
    if not ids:
        return []
    result_ids = uuid7_batch(len(ids))
    params = {
        "ids": ids,
        "attempts": attempts,
        # Fixed before the first try: a repeat after a lost reply finds these
        # result rows and reports the items done, so repeating is harmless.
        "result_ids": result_ids,
        "extracted_data": data,
        "confidence_scores": scores,
        "tokens_used": tokens,
        "client_id": client,
        "atomic": all_or_nothing,
    }
    # One row per item: (n, outcome, current_attempts, the result's created_at or None).
    rows: list[tuple[int, str | None, int | None, datetime | None]] = yield Call.all(
        _COMPLETE_JOBS, params, tuple_row, "complete jobs", idempotent=True
    )
    replies: list[_Reply] = [
        (
            n,
            label,
            current,
            None
            if created_at is None
            else make_result(
                (
                    result_ids[n - 1],
                    ids[n - 1],
                    stored_json(data[n - 1]),
                    scores[n - 1],
                    tokens[n - 1],
                    created_at,
                )
            ),
        )
        for n, label, current, created_at in rows
    ]
    outcomes = _outcomes(replies, ids, attempts, cancel_moves=False)
    if all_or_nothing:
        _atomic_refusal("complete jobs", outcomes, attempts)
    return outcomes


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
