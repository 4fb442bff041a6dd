"""A failed checkout is retried for every call, since no statement was sent.

A call that is not idempotent (``claim_next``, ``complete``, ``fail``) gets one try
at its statement: after a lost reply it may have done its work. Failing to get a
connection is different: nothing was sent, so `Database.run` and
`AsyncDatabase.run` retry it for any call, with the policy's backoff and tries,
counted in ``stats().retries``. These tests run through a relay
(tests/_lost_reply.py) that hangs up on the next connections, as a restarting
server does, and can lose a reply after the statement ran: the first is retried,
the second never is for such a call, not even after a retried checkout.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from _lost_reply import LostReply
from cira_db import Database, JobRepository, JobResultRepository, JobStatus
from cira_db.aio import AsyncDatabase, AsyncJobRepository
from cira_db.errors import DatabaseUnavailableError

A = "client-a"
URL = "s3://bucket/a.pdf"
LEASE = timedelta(minutes=5)
# The claim statement's text, as the relay sees it go by.
CLAIM = "SKIP LOCKED"


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async API runs on asyncio."""
    return "asyncio"


@pytest.fixture
def relay(cira_db_url: str) -> Iterator[LostReply]:
    with LostReply(cira_db_url) as lost_reply:
        yield lost_reply


# pool=False: every call connects, so every call has a checkout the relay can fail.
FRESH: dict[str, Any] = {"pool": False, "retry_attempts": 3, "retry_backoff": 0.01}


def test_a_claim_whose_connection_failed_is_retried_once_and_claims_once(
    cira_db: Database, relay: LostReply
) -> None:
    made = JobRepository(cira_db).create(client_id=A, pdf_url=URL)
    with Database(relay.url, **FRESH) as db:
        relay.refuse(1)
        claimed = JobRepository(db).claim_next(lease=LEASE)
        assert relay.refused == 1
        assert db.stats().retries == 1
    assert claimed is not None
    assert claimed.id == made.id
    assert claimed.attempts == 1  # one claim, not two
    assert JobRepository(cira_db).get(made.id, client_id=A).attempts == 1


def test_complete_and_fail_are_retried_after_a_failed_connection(
    cira_db: Database, relay: LostReply
) -> None:
    jobs = JobRepository(cira_db)
    done, failed = jobs.create(client_id=A, pdf_url=URL), jobs.create(client_id=A, pdf_url=URL)
    claimed = jobs.claim_batch(2, lease=LEASE)
    assert {job.id for job in claimed} == {done.id, failed.id}
    with Database(relay.url, **FRESH) as db:
        relay.refuse(2)  # both retries of `complete`
        JobRepository(db).complete(
            done.id, extracted_data={"a": 1}, confidence_score=0.5, tokens_used=3
        )
        relay.refuse(1)
        JobRepository(db).fail(failed.id, error_message="unreadable")
        assert relay.refused == 3
        assert db.stats().retries == 3
    assert jobs.get(done.id, client_id=A).status is JobStatus.COMPLETED
    assert jobs.get(failed.id, client_id=A).status is JobStatus.FAILED
    assert JobResultRepository(cira_db).get_for_job(done.id, client_id=A).tokens_used == 3


def test_failed_connections_are_retried_within_the_policy_only(
    cira_db: Database, relay: LostReply
) -> None:
    made = JobRepository(cira_db).create(client_id=A, pdf_url=URL)
    with Database(relay.url, **FRESH) as db:
        relay.refuse(3)  # as many as the policy's tries
        with pytest.raises(DatabaseUnavailableError):
            JobRepository(db).claim_next(lease=LEASE)
        assert relay.refused == 3
        assert db.stats().retries == 2
    assert JobRepository(cira_db).get(made.id, client_id=A).status is JobStatus.QUEUED


def test_a_lost_reply_after_a_retried_connection_is_not_repeated(
    cira_db: Database, relay: LostReply
) -> None:
    """The retried checkout does not turn the claim into a call that may repeat."""
    made = JobRepository(cira_db).create(client_id=A, pdf_url=URL)
    with Database(relay.url, **FRESH) as db:
        relay.refuse(1)
        relay.lose_reply(CLAIM)
        with pytest.raises(DatabaseUnavailableError):
            JobRepository(db).claim_next(lease=LEASE)
        assert (relay.refused, relay.lost) == (1, 1)
        assert db.stats().retries == 1  # the checkout only
    job = JobRepository(cira_db).get(made.id, client_id=A)
    assert job.status is JobStatus.PROCESSING  # the lost try did its work, once
    assert job.attempts == 1


@pytest.mark.anyio
async def test_async_a_claim_whose_connection_failed_is_retried_and_claims_once(
    cira_db: Database, relay: LostReply
) -> None:
    made = JobRepository(cira_db).create(client_id=A, pdf_url=URL)
    async with AsyncDatabase(relay.url, **FRESH) as db:
        relay.refuse(2)
        claimed = await AsyncJobRepository(db).claim_next(lease=LEASE)
        assert relay.refused == 2
        assert db.stats().retries == 2
    assert claimed is not None
    assert claimed.id == made.id
    assert claimed.attempts == 1


@pytest.mark.anyio
async def test_async_a_lost_reply_after_a_retried_connection_is_not_repeated(
    cira_db: Database, relay: LostReply
) -> None:
    made = JobRepository(cira_db).create(client_id=A, pdf_url=URL)
    async with AsyncDatabase(relay.url, **FRESH) as db:
        relay.refuse(1)
        relay.lose_reply(CLAIM)
        with pytest.raises(DatabaseUnavailableError):
            await AsyncJobRepository(db).claim_next(lease=LEASE)
        assert (relay.refused, relay.lost) == (1, 1)
        assert db.stats().retries == 1
    job = JobRepository(cira_db).get(made.id, client_id=A)
    assert job.status is JobStatus.PROCESSING
    assert job.attempts == 1
