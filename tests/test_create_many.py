"""create_many builds its Jobs without reading the rows back: they must be the stored rows.

`create_many(returning="jobs")` inserts (COPY from 1,000 rows, one array
statement below) and gets back one row, the transaction's ``now()`` and the
stored ``run_after``; every other field comes from the call's own values
and the columns' defaults (``_core_jobs._shared``). These tests compare what
it returns with what the database holds, every column of the row, on both
faces and both paths, and pin the schema facts that make it true: the
defaults of the columns the insert leaves out, and no trigger or rule on
INSERT. A migration that adds a column, a default or an insert trigger the
client does not know fails them.
"""

from __future__ import annotations

import string
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cira_db import Database, Job, JobRepository, JobStatus
from cira_db._validation import check_pdf_url
from cira_db.errors import ConflictError, ValidationError

A = "client-a"

# The defaults of jobs' columns (pg_get_expr of pg_attrdef), as the client
# assumes them: a new row holds what the call sent, or these.
KNOWN_DEFAULTS = {
    "id": "gen_random_uuid()",
    "client_id": None,
    "status": "'queued'::job_status",
    "pdf_url": None,
    "created_at": "now()",
    "updated_at": "now()",
    "completed_at": None,
    "error_message": None,
    "attempts": "0",
    "lease_expires_at": None,
    "run_after": None,
    "priority": "0",
    "progress": None,
    "cancel_requested_at": None,
}


@pytest.fixture(params=["copy", "statement"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which insert create_many uses: COPY (from 1 row on) or the array statement."""
    import cira_db._repositories._core_jobs as core

    monkeypatch.setattr(core, "_COPY_FROM", 1 if request.param == "copy" else 10**6)
    return str(request.param)


def _stored(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Every column of the jobs with these ids, by id, read with SELECT *."""
    with db.connection() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM jobs WHERE id = ANY(%s)", [ids])
        return {row["id"]: row for row in cur.fetchall()}


def _same(value: Any, stored: Any) -> bool:
    """Equal, and a datetime with the same UTC offset (as a read would give it)."""
    if isinstance(stored, datetime):
        return (
            isinstance(value, datetime)
            and value == stored
            and value.utcoffset() == stored.utcoffset()
        )
    if isinstance(stored, str) and isinstance(value, JobStatus):
        return value.value == stored
    return bool(type(value) is type(stored) and value == stored)


def _assert_stored(db: Database, made: list[Job]) -> None:
    """Each Job is its stored row: same columns as fields, each value the same."""
    rows = _stored(db, [job.id for job in made])
    assert len(rows) == len(made)
    for job in made:
        row = rows[job.id]
        fields = {name: getattr(job, name) for name in Job.__dataclass_fields__}
        assert set(row) == set(fields), "jobs has a column Job does not (or the reverse)"
        different = {name: (fields[name], row[name]) for name in row}
        different = {k: v for k, v in different.items() if not _same(*v)}
        assert different == {}, job.id


# -- the schema facts the client relies on ----------------------------------------------


def test_the_columns_an_insert_leaves_out_have_the_defaults_the_client_knows(
    cira_db: Database,
) -> None:
    with cira_db.connection() as conn:
        defaults = dict(
            conn.execute(
                """
                SELECT a.attname, pg_get_expr(d.adbin, d.adrelid)
                FROM pg_attribute AS a
                LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                WHERE a.attrelid = 'jobs'::regclass AND a.attnum > 0 AND NOT a.attisdropped
                """
            ).fetchall()
        )
        generated = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'jobs'::regclass"
            " AND attgenerated <> ''"
        ).fetchall()
        # Row triggers on INSERT (tgtype bit 2), user-defined, and rules.
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'jobs'::regclass"
            " AND NOT tgisinternal AND tgtype & 4 <> 0"
        ).fetchall()
        rules = conn.execute("SELECT rulename FROM pg_rules WHERE tablename = 'jobs'").fetchall()
    assert defaults == KNOWN_DEFAULTS
    assert set(defaults) == set(Job.__dataclass_fields__)
    assert (generated, triggers, rules) == ([], [], [])


def test_the_update_trigger_is_the_only_one_and_fires_on_update_only(cira_db: Database) -> None:
    # trigger_jobs_updated_at (0001) sets updated_at BEFORE UPDATE; a COPY or
    # an INSERT does not fire it, so a new row's updated_at is its default.
    with cira_db.connection() as conn:
        rows = conn.execute(
            "SELECT tgname, tgtype & 4 <> 0, tgtype & 16 <> 0 FROM pg_trigger"
            " WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal"
        ).fetchall()
    assert rows == [("trigger_jobs_updated_at", False, True)]


# -- what create_many returns is what was stored ------------------------------------------

_OFFSETS = st.integers(min_value=-14 * 60 + 1, max_value=14 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_RUN_AFTER = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 12, 30),
        timezones=st.one_of(st.just(UTC), _OFFSETS),
    ),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=365)),
)
_PATH = st.text(alphabet=string.ascii_letters + string.digits + "-._~/%=&é漢", max_size=40)


def _valid(url: str) -> bool:
    try:
        check_pdf_url(url)
    except ValidationError:
        return False
    return True


_URLS = st.lists(
    st.one_of(
        _PATH.map(lambda p: f"https://example.com/{p}"),
        st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True).flatmap(
            lambda bucket: _PATH.filter(bool).map(lambda key: f"s3://{bucket}/{key}")
        ),
    ).filter(_valid),
    min_size=1,
    max_size=12,
)
_CLIENTS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 _.\-é]{0,30}[A-Za-z0-9]", fullmatch=True)
_PRIORITIES = st.one_of(st.none(), st.integers(min_value=-100, max_value=100))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    urls=_URLS,
    client=_CLIENTS,
    priority=_PRIORITIES,
    run_after=_RUN_AFTER,
    chosen_ids=st.booleans(),
)
def test_create_many_returns_the_stored_rows(
    jobs: JobRepository,
    cira_db: Database,
    path: str,
    urls: list[str],
    client: str,
    priority: int | None,
    run_after: datetime | timedelta | None,
    chosen_ids: bool,
) -> None:
    ids = [uuid.uuid4() for _ in urls] if chosen_ids else None
    made = jobs.create_many(
        client_id=client, pdf_urls=urls, job_ids=ids, run_after=run_after, priority=priority
    )
    assert [job.pdf_url for job in made] == urls
    if ids is not None:
        assert [job.id for job in made] == ids
    _assert_stored(cira_db, made)
    for job in (made[0], made[-1]):  # and through get, on this face
        got = jobs.get(job.id, client_id=client)
        assert got == job
        assert all(_same(getattr(job, n), getattr(got, n)) for n in ("created_at", "run_after"))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), size=st.integers(min_value=2, max_value=10))
def test_a_retried_create_many_with_job_ids_returns_the_stored_jobs(
    jobs: JobRepository, cira_db: Database, path: str, data: st.DataObject, size: int
) -> None:
    # Some of the ids are stored already (an earlier, partly seen request):
    # those come back as stored (their own created_at, status, ...), not as
    # built; the others are created. The call is all or nothing either way.
    client = f"retry-{uuid.uuid4()}"  # the claim below sees this example's jobs only
    ids = [uuid.uuid4() for _ in range(size)]
    urls = [f"https://example.com/retry/{n}.pdf" for n in range(size)]
    early = data.draw(st.sets(st.integers(min_value=0, max_value=size - 1), min_size=1))
    for n in sorted(early):
        jobs.create(client_id=client, pdf_url=urls[n], job_id=ids[n], priority=5)
    claimed = jobs.claim_next(lease=timedelta(minutes=5), client_id=client)
    assert claimed is not None
    made = jobs.create_many(client_id=client, pdf_urls=urls, job_ids=ids, priority=-3)
    assert [job.id for job in made] == ids
    _assert_stored(cira_db, made)
    assert {made[n].priority for n in early} == {5}
    new = {job.priority for n, job in enumerate(made) if n not in early}
    assert new == ({-3} if len(early) < size else set())
    assert made[ids.index(claimed.id)].status is JobStatus.PROCESSING
    again = jobs.create_many(client_id=client, pdf_urls=urls, job_ids=ids)
    assert again == made


def test_create_many_with_a_clashing_job_id_creates_nothing(
    jobs: JobRepository, cira_db: Database, path: str
) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    urls = [f"https://example.com/clash/{n}.pdf" for n in range(5)]
    jobs.create(client_id=A, pdf_url="https://example.com/other.pdf", job_id=ids[3])
    with pytest.raises(ConflictError, match=r"job_ids\[3\]"):
        jobs.create_many(client_id=A, pdf_urls=urls, job_ids=ids)
    assert set(_stored(cira_db, ids)) == {ids[3]}


# -- the transaction's time, the session's time zone ----------------------------------------


@pytest.fixture
def kolkata(cira_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A caller's connection whose session time zone is not UTC (+05:30)."""
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'Asia/Kolkata'")
        yield conn


def test_in_a_callers_transaction_the_jobs_carry_its_start_time(
    kolkata: psycopg.Connection[Any], path: str
) -> None:
    # now() is the caller's transaction start, earlier than the insert; the
    # timestamps come in the session's zone, as the read below gives them.
    when = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=-7)))
    with kolkata.transaction():
        started = kolkata.execute("SELECT now()").fetchone()
        kolkata.execute("SELECT pg_sleep(0.01)")
        jobs = JobRepository(kolkata)
        made = jobs.create_many(
            client_id=A, pdf_urls=["https://example.com/t.pdf"] * 3, run_after=when
        )
        read = [jobs.get(job.id, client_id=A) for job in made]
    assert started is not None
    assert made == read
    for job, got in zip(made, read, strict=True):
        assert job.created_at == job.updated_at == started[0]
        for name in ("created_at", "updated_at", "run_after"):
            assert _same(getattr(job, name), getattr(got, name)), name
        assert job.created_at.utcoffset() == timedelta(hours=5, minutes=30)


def test_a_failed_create_many_in_a_callers_transaction_leaves_it_usable(
    kolkata: psycopg.Connection[Any], path: str
) -> None:
    jobs = JobRepository(kolkata)
    taken = uuid.uuid4()
    jobs.create(client_id=A, pdf_url="https://example.com/x.pdf", job_id=taken)
    with kolkata.transaction():
        with pytest.raises(ConflictError):
            jobs.create_many(
                client_id=A,
                pdf_urls=["https://example.com/a.pdf", "https://example.com/b.pdf"],
                job_ids=[uuid.uuid4(), taken],
            )
        made = jobs.create_many(client_id=A, pdf_urls=["https://example.com/c.pdf"])
        assert jobs.get(made[0].id, client_id=A) == made[0]
