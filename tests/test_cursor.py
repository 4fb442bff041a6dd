"""The opaque keyset cursor: round trip, binding to the listing, tamper detection."""

from __future__ import annotations

import base64
import struct
import uuid
from datetime import UTC, datetime, timedelta, timezone
from hashlib import blake2b

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cira_db import JobStatus
from cira_db._cursor import DEFAULT_KEY, decode_cursor, encode_cursor
from cira_db.errors import ValidationError

A, B = "client-a", "client-b"
WHEN = datetime(2024, 5, 17, 12, 30, 15, 123456, tzinfo=UTC)
ID = uuid.UUID("01900000-0000-7000-8000-000000000001")

_statuses = st.one_of(st.none(), st.sampled_from(JobStatus))
_clients = st.text(min_size=1, max_size=50)
_times = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)


@settings(max_examples=200, deadline=None)
@given(client_id=_clients, status=_statuses, created_at=_times, job_id=st.uuids())
def test_round_trip(
    client_id: str, status: JobStatus | None, created_at: datetime, job_id: uuid.UUID
) -> None:
    token = encode_cursor(client_id=client_id, status=status, created_at=created_at, job_id=job_id)
    assert len(token) == 44
    assert token.isascii()
    assert "=" not in token
    when, key = decode_cursor(token, client_id=client_id, status=status)
    assert (when, key) == (created_at, job_id)
    assert when.tzinfo is not None


def _token(**overrides: object) -> str:
    arguments: dict[str, object] = {
        "client_id": A,
        "status": None,
        "created_at": WHEN,
        "job_id": ID,
        **overrides,
    }
    return encode_cursor(**arguments)  # type: ignore[arg-type]


def _refused(token: object, client_id: str = A, status: JobStatus | None = None) -> None:
    with pytest.raises(ValidationError) as info:
        decode_cursor(token, client_id=client_id, status=status)
    assert info.value.field == "cursor"
    assert "tampered" in str(info.value)


def test_the_cursor_is_opaque() -> None:
    token = _token()
    raw = base64.urlsafe_b64decode(token)
    assert A.encode() not in raw  # the client id is bound by the tag, not carried


def test_bound_to_the_client_and_the_status_filter() -> None:
    token = _token(status=JobStatus.FAILED)
    assert decode_cursor(token, client_id=A, status=JobStatus.FAILED) == (WHEN, ID)
    _refused(token, client_id=B, status=JobStatus.FAILED)
    _refused(token, client_id=A, status=None)
    _refused(token, client_id=A, status=JobStatus.QUEUED)
    _refused(_token(), client_id=A, status=JobStatus.QUEUED)


def test_client_id_and_status_cannot_be_shifted_into_each_other() -> None:
    # Length-prefixed parts: ("ab", "c...") never collides with ("a", "bc...").
    joined = _token(client_id="client-aqueued")
    split = _token(client_id="client-a", status=JobStatus.QUEUED)
    assert joined != split


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0, max_value=43), data=st.data())
def test_any_changed_character_is_refused(position: int, data: st.DataObject) -> None:
    token = _token()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = data.draw(st.sampled_from(alphabet.replace(token[position], "")))
    changed = token[:position] + replacement + token[position + 1 :]
    # 44 characters are exactly 33 bytes (no padding bits), so every one matters.
    _refused(changed)


@pytest.mark.parametrize(
    "token",
    [
        None,
        42,
        b"bytes",
        "",
        "short",
        "A" * 43,
        "A" * 45,
        "A" * 44,
        "+" * 44,
        "/" * 44,
        "=" * 44,
        " " + "A" * 43,
        "é" * 44,
    ],
)
def test_malformed_cursors_are_refused(token: object) -> None:
    _refused(token)


def _forge(version: int, micros: int, key: bytes = DEFAULT_KEY) -> str:
    """A correctly tagged cursor with chosen contents (possible without a secret key)."""
    position = struct.pack(">Bq16s", version, micros, ID.bytes)
    digest = blake2b(key=key, digest_size=8, person=b"cira_db.cursor")
    for part in (A.encode(), b""):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(position)
    return base64.urlsafe_b64encode(position + digest.digest()).decode()


def test_forged_but_correctly_tagged_cursors_are_still_checked() -> None:
    good_micros = (WHEN - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert decode_cursor(_forge(1, good_micros), client_id=A, status=None) == (WHEN, ID)
    _refused(_forge(2, good_micros))  # unknown version
    _refused(_forge(1, 2**63 - 1))  # beyond datetime's range
    _refused(_forge(1, -(2**63)))


def test_a_secret_key_makes_cursors_unforgeable() -> None:
    secret = b"s" * 100  # longer than BLAKE2b's 64-byte key: hashed first
    token = _token(key=secret)
    assert decode_cursor(token, client_id=A, status=None, key=secret) == (WHEN, ID)
    with pytest.raises(ValidationError):
        decode_cursor(token, client_id=A, status=None)
    with pytest.raises(ValidationError):
        decode_cursor(_token(), client_id=A, status=None, key=secret)
