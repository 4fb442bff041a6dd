"""Opaque keyset cursors for `JobRepository.list`.

A cursor is the position of the last row of a page, ``(created_at, id)``,
plus a tag that binds it to the listing it came from (client id and status
filter), packed into 33 bytes and base64url-encoded (44 characters)::

    version (1) | created_at, µs since the Unix epoch, signed (8) | id (16) | tag (8)

The tag is a keyed BLAKE2b digest of the domain, the client id, the status
filter and the position. With a secret key (``cursor_key=``) a caller
cannot forge a position; without one the tag still catches corruption and a
cursor replayed on another client's or another filter's listing. Either way
the listing query is always scoped by the caller's ``client_id``, so a
forged position could only move within the caller's own rows.

Anything that does not decode exactly raises `ValidationError` for the
field ``cursor``; the decoder never lets a malformed value reach SQL.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from datetime import UTC, datetime, timedelta
from typing import Final
from uuid import UUID

from cira_db._models import JobStatus
from cira_db.errors import ValidationError

__all__ = ["DEFAULT_KEY", "decode_cursor", "encode_cursor"]

_VERSION: Final = 1
_LAYOUT: Final = struct.Struct(">Bq16s")  # version, microseconds, uuid bytes
_TAG_SIZE: Final = 8
_RAW_SIZE: Final = _LAYOUT.size + _TAG_SIZE
_TEXT_SIZE: Final = len(base64.urlsafe_b64encode(bytes(_RAW_SIZE)).rstrip(b"="))
_TEXT: Final = rf"^[A-Za-z0-9_-]{{{_TEXT_SIZE}}}$"  # compiled on first use, not at import
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_PERSON: Final = b"cira_db.cursor"

DEFAULT_KEY: Final = b"cira_db keyset cursor v1"
"""Used when no key is configured: integrity and binding, not secrecy."""

_INVALID: Final = "not a cursor from this listing (tampered, or from another client or filter)"


def _tag(key: bytes, client_id: str, status: JobStatus | None, position: bytes) -> bytes:
    from hashlib import blake2b  # here, not at import: a cold start lists nothing

    if len(key) > blake2b.MAX_KEY_SIZE:
        key = blake2b(key).digest()
    digest = blake2b(key=key, digest_size=_TAG_SIZE, person=_PERSON)
    for part in (client_id.encode(), (status.value if status else "").encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(position)
    return digest.digest()


def encode_cursor(
    *,
    client_id: str,
    status: JobStatus | None,
    created_at: datetime,
    job_id: UUID,
    key: bytes = DEFAULT_KEY,
) -> str:
    """The cursor that continues a listing after the row ``(created_at, job_id)``."""
    micros = (created_at - _EPOCH) // _MICROSECOND
    position = _LAYOUT.pack(_VERSION, micros, job_id.bytes)
    raw = position + _tag(key, client_id, status, position)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(
    cursor: object,
    *,
    client_id: str,
    status: JobStatus | None,
    key: bytes = DEFAULT_KEY,
) -> tuple[datetime, UUID]:
    """The position ``(created_at, id)`` a cursor holds, if it belongs to this listing.

    Raises `ValidationError` (field ``cursor``) for anything else: wrong type
    or length, bad alphabet, unknown version, a tag that does not match this
    client id and status filter, or an out-of-range time.
    """
    if not isinstance(cursor, str) or not re.match(_TEXT, cursor):
        raise ValidationError("cursor", _INVALID)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the regex admits only valid text
        raise ValidationError("cursor", _INVALID) from None
    if len(raw) != _RAW_SIZE:  # pragma: no cover - fixed length text decodes to fixed bytes
        raise ValidationError("cursor", _INVALID)
    position, tag = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
    from hmac import compare_digest

    if not compare_digest(tag, _tag(key, client_id, status, position)):
        raise ValidationError("cursor", _INVALID)
    version, micros, id_bytes = _LAYOUT.unpack(position)
    if version != _VERSION:
        raise ValidationError("cursor", _INVALID)
    try:
        created_at = _EPOCH + micros * _MICROSECOND
    except OverflowError:
        raise ValidationError("cursor", _INVALID) from None
    return created_at, UUID(bytes=id_bytes)
