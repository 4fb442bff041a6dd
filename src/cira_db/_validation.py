"""Checks on repository arguments, run before any SQL.

Each ``check_*`` function returns the value in the form the SQL binds (a
`UUID`, a quantised `Decimal`, JSON text, ...) or raises
`cira_db.errors.ValidationError` naming the argument. Messages never quote
the rejected value: it may be long, or hold something a log should not.

pydantic is used where it earns its place: parsing URLs (its WHATWG parser
catches bad hosts, ports and schemes that a regular expression would let
through). The other checks are a few comparisons each; a pydantic model per
call would cost more than the statement's round trip saves.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

from cira_db._models import STATUS_BY_LABEL, JobStatus
from cira_db.errors import ValidationError

if TYPE_CHECKING:
    from pydantic import AnyHttpUrl, TypeAdapter

T = TypeVar("T")

__all__ = [
    "CLIENT_ID_MAX",
    "CREATE_MANY_MAX",
    "DELAY_MAX",
    "ERROR_MESSAGE_MAX",
    "EXTRACTED_DATA_MAX_BYTES",
    "EXTRACTED_DATA_MAX_DEPTH",
    "LEASE_MAX",
    "LIMIT_MAX",
    "PDF_URL_MAX",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "PdfUrlChecker",
    "check_aware_datetime",
    "check_backoff",
    "check_client_id",
    "check_confidence_score",
    "check_error_message",
    "check_extracted_data",
    "check_extracted_document",
    "check_flag",
    "check_job_id",
    "check_job_status",
    "check_lease",
    "check_limit",
    "check_optional_attempt",
    "check_optional_client_id",
    "check_pdf_url",
    "check_pdf_urls",
    "check_positive_int",
    "check_priority",
    "check_retry_in",
    "check_run_after",
    "check_s3_uri",
    "check_status",
    "check_time_range",
    "check_tokens_used",
]

CLIENT_ID_MAX: Final = 50
PDF_URL_MAX: Final = 2048
LIMIT_MAX: Final = 1000
CREATE_MANY_MAX: Final = 100_000
ERROR_MESSAGE_MAX: Final = 10_000
PROGRESS_MAX_BYTES: Final = 4096
EXTRACTED_DATA_MAX_DEPTH: Final = 100
"""How deeply dicts and lists may nest in ``extracted_data`` (the top dict is level 1)."""
EXTRACTED_DATA_MAX_BYTES: Final = 64 * 1024 * 1024
"""The largest ``extracted_data``: 64 MiB of JSON text (UTF-8), checked before sending.

jsonb itself holds up to about 255 MB, but a value that size takes tens of
seconds to send, and longer than a Lambda may wait, before the server
refuses or stores it.
"""
LEASE_MAX: Final = timedelta(days=7)
PRIORITY_MIN: Final = -100
PRIORITY_MAX: Final = 100
"""The range of ``priority`` (the column's CHECK); higher is claimed first, 0 by default."""
DELAY_MAX: Final = timedelta(days=365)
"""The longest delay ``run_after`` (as a timedelta), ``retry_in`` and backoffs accept."""
S3_KEY_MAX_BYTES: Final = 1024
INT4_MAX: Final = 2**31 - 1

_CONFIDENCE_STEP: Final = Decimal("0.01")
_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_ZERO_DURATION: Final = timedelta(0)

# Control characters (C0, DEL, C1): never part of an id or a URL, and NUL is
# something PostgreSQL text cannot store at all.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Whitespace or control characters anywhere: a URL must have them percent-encoded.
_URL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_URL_PREFIX = re.compile(r"^https?://", re.IGNORECASE)
# An ASCII http(s) URL without whitespace, control characters or backslashes;
# group 1 is its origin: the scheme and the authority, which ends (for
# urllib.parse and WHATWG alike, backslashes aside) at the first "/", "?" or "#".
_PLAIN_URL = re.compile(r"((?i:https?)://[^/?#\x00-\x20\x7f\\]*)[^\x00-\x20\x7f\\]*")
_S3_PREFIX: Final = "s3://"
# S3 bucket names (general purpose buckets): lowercase letters, digits, dots and
# hyphens, starting and ending with a letter or digit; length checked apart.
_S3_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
_S3_IP_LIKE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_S3_RESERVED_PREFIXES: Final = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES: Final = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# A JSON \u0000 escape (an odd number of backslashes before "u0000"): jsonb rejects it.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Unicode categories a client id must not hold, with the reason given: each
# of them is invisible, or makes the id render like another one.
_HIDDEN_CATEGORIES: Final = {
    "Cc": "a control character",
    "Cf": "an invisible or bidirectional formatting character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Co": "a private-use code point",
    "Cn": "an unassigned code point",
    "Cs": "a surrogate code point",
}

# Invisible characters outside those categories: the Default_Ignorable_Code_Point
# code points (Unicode DerivedCoreProperties) that are letters or combining marks,
# such as the Hangul fillers, the combining grapheme joiner and variation selectors.
# Compiled (and cached by `re`) on first use: only text beyond ASCII needs it.
_IGNORABLE = (
    r"[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u3164\ufe00-\ufe0f\uffa0"
    r"\U000e0100-\U000e01ef]"
)


@functools.cache
def _http_url() -> TypeAdapter[AnyHttpUrl]:
    """pydantic's WHATWG URL parser, built on its first use.

    Not at import: a cold start that checks no URL skips ``pydantic.networks``
    and the adapter's build (docs/performance.md, cold start).
    """
    from pydantic import AnyHttpUrl, TypeAdapter

    return TypeAdapter(AnyHttpUrl)


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _type_name(value: object) -> str:
    return type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_unicode(value: str, field: str) -> None:
    """Refuse text that UTF-8 cannot encode: surrogate code points (U+D800..U+DFFF).

    Python strings can hold them (``"\\udcff"`` from ``surrogateescape``, a
    lone half of a pair); the driver cannot send them, and PostgreSQL text
    and jsonb cannot store them.
    """
    if not _utf8_encodable(value):
        raise ValidationError(
            field, "must be valid Unicode text (no surrogate code points U+D800..U+DFFF)"
        )


def _utf8_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_client_id(value: object, field: str = "client_id") -> str:
    """A client id: a string of 1 to 50 characters that shows what it is.

    Refused, never trimmed or rewritten: blank text, leading or trailing
    whitespace, control characters (Unicode category Cc), invisible format
    and bidirectional characters (Cf: U+200B, U+FEFF, U+202E, ...), line
    and paragraph separators (Zl, Zp), whitespace other than the ASCII
    space (U+00A0, U+3000, ...), private-use and unassigned code points
    (Co, Cn), surrogates (Cs), the other invisible (default-ignorable)
    characters (Hangul fillers, variation selectors, ...), and text not in
    Unicode normalisation form NFC (``"e\\u0301"`` where ``"\\u00e9"`` is
    meant). Two ids that look the same are then the same id: a look-alike
    tenant cannot be created.
    """
    if type(value) is str and value in _ACCEPTED_CLIENT_IDS:
        return value  # checked already: the same text gets the same answer
    checked = _check_client_id(value, field)
    if type(checked) is str:  # a str subclass could compare equal to text it is not
        if len(_ACCEPTED_CLIENT_IDS) >= _ACCEPTED_CLIENT_IDS_MAX:
            _ACCEPTED_CLIENT_IDS.clear()
        _ACCEPTED_CLIENT_IDS.add(checked)
    return checked


# Client ids `check_client_id` accepted: a service sees few of them, and a
# repeated one (every call of a worker or a tenant) is then one set lookup.
# Bounded: emptied when full.
_ACCEPTED_CLIENT_IDS: Final[set[str]] = set()
_ACCEPTED_CLIENT_IDS_MAX: Final = 4096


def _check_client_id(value: object, field: str) -> str:
    """`check_client_id`'s checks, every time."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {_type_name(value)}")
    _check_unicode(value, field)
    if not value.strip():
        raise ValidationError(field, "must not be empty or blank")
    if len(value) > CLIENT_ID_MAX:
        raise ValidationError(field, f"must be at most {CLIENT_ID_MAX} characters")
    if value != value.strip():
        raise ValidationError(field, "must not start or end with whitespace")
    if value.isascii():
        if _CONTROL.search(value):
            raise ValidationError(field, "must not contain control characters")
        return value
    import unicodedata  # only for text beyond ASCII: a cold start need not load it

    for char in value:
        category = unicodedata.category(char)
        if (category == "Zs" and char != " ") or category in _HIDDEN_CATEGORIES:
            reason = _HIDDEN_CATEGORIES.get(category, "whitespace other than the ASCII space")
            raise ValidationError(field, f"must not contain U+{ord(char):04X} ({reason})")
    ignorable = re.search(_IGNORABLE, value)
    if ignorable:
        code = ord(ignorable.group())
        raise ValidationError(field, f"must not contain U+{code:04X} (an invisible character)")
    if not unicodedata.is_normalized("NFC", value):
        raise ValidationError(
            field,
            "must be in Unicode normalisation form NFC (an accented letter as one "
            "character, not a letter plus a combining accent)",
        )
    return value


def check_optional_client_id(value: object, field: str = "client_id") -> str | None:
    """`check_client_id`, with None meaning "every client" (worker calls)."""
    return None if value is None else check_client_id(value, field)


def check_pdf_url(value: object, field: str = "pdf_url") -> str:
    """An absolute http(s) URL or an ``s3://bucket/key`` URI, at most 2048 characters.

    Stored exactly as given. An ``s3://`` URI (see `check_s3_uri`) names an
    object by bucket and key, as S3 pipelines store them. An http(s) URL:

    It must start with ``http://`` or ``https://``, have a valid host (and
    port), contain no whitespace, control characters or backslashes
    (percent-encode them), and carry no user name or password, not even an
    empty one (no ``@`` before the path). The URL is stored as given, so
    whoever reads it later must find the same host: it is parsed both the
    WHATWG way (browsers, pydantic) and by `urllib.parse`, and refused when
    the two read a different host or port (a percent-encoded or numeric
    shorthand host, an IDNA deviation such as ``ß``). Query strings, such as
    those of pre-signed S3 URLs, are fine.
    """
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {_type_name(value)}")
    if len(value) > PDF_URL_MAX:
        raise ValidationError(field, f"must be at most {PDF_URL_MAX} characters")
    _check_unicode(value, field)
    if value.startswith(_S3_PREFIX):
        return check_s3_uri(value, field)
    if not _URL_PREFIX.match(value):
        raise ValidationError(
            field, "must be an absolute URL starting with http:// or https://, or an s3:// URI"
        )
    if _URL_FORBIDDEN.search(value):
        raise ValidationError(field, "must not contain whitespace or control characters")
    if "\\" in value:
        # WHATWG reads a backslash as "/", other parsers as a character: two hosts.
        raise ValidationError(field, "must not contain a backslash (percent-encode it: %5C)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValidationError(field, "not a valid http(s) URL (bad host or port)") from None
    if "@" in parts.netloc:
        raise ValidationError(field, "must not carry a user name or password")
    if not parts.hostname:
        raise ValidationError(field, "not a valid http(s) URL (no host)")
    from pydantic import ValidationError as PydanticValidationError  # loaded with _http_url

    try:
        url = _http_url().validate_python(value)
    except PydanticValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        reason = str(errors[0]["msg"]) if errors else "invalid URL"
        raise ValidationError(field, f"not a valid http(s) URL ({reason})") from None
    if (
        url.host is None
        or not _same_host(url.host, parts.hostname)
        or url.port != (port if port is not None else _DEFAULT_PORTS[parts.scheme])
    ):
        raise ValidationError(
            field,
            "the host reads differently to different URL parsers; write it plainly "
            "(no percent-escapes or numeric shorthand; IDNA deviations such as ß in "
            "their xn-- form)",
        )
    return value


def check_s3_uri(value: str, field: str = "pdf_url") -> str:
    """An ``s3://bucket/key`` object URI, by S3's naming rules; returned as given.

    The bucket: 3 to 63 characters, lowercase letters, digits, dots and
    hyphens, starting and ending with a letter or digit, no two dots in a
    row, not shaped like an IP address (``192.168.5.4``), not starting with
    ``xn--``, ``sthree-`` or ``amzn-s3-demo-`` and not ending with
    ``-s3alias``, ``--ol-s3``, ``.mrap``, ``--x-s3`` or ``--table-s3``. The
    key (everything after the first ``/`` that ends the bucket): not empty,
    at most 1024 bytes in UTF-8, no control characters. The scheme is the
    lowercase ``s3://``; no region, user or port.
    """
    if not value.startswith(_S3_PREFIX):
        raise ValidationError(field, "an S3 object URI starts with s3://")
    bucket, slash, key = value[len(_S3_PREFIX) :].partition("/")
    if not slash:
        raise ValidationError(field, "an s3:// URI needs a key after the bucket (s3://bucket/key)")
    if not 3 <= len(bucket) <= 63:
        raise ValidationError(field, "the S3 bucket name must be 3 to 63 characters")
    if not _S3_BUCKET.fullmatch(bucket):
        raise ValidationError(
            field,
            "the S3 bucket name may hold only lowercase letters, digits, dots and hyphens, "
            "and must start and end with a letter or digit",
        )
    if ".." in bucket:
        raise ValidationError(field, "the S3 bucket name must not hold two dots in a row")
    if _S3_IP_LIKE.fullmatch(bucket):
        raise ValidationError(field, "the S3 bucket name must not be shaped like an IP address")
    if bucket.startswith(_S3_RESERVED_PREFIXES) or bucket.endswith(_S3_RESERVED_SUFFIXES):
        raise ValidationError(field, "the S3 bucket name uses a prefix or suffix S3 reserves")
    if not key:
        raise ValidationError(field, "an s3:// URI needs a key after the bucket (s3://bucket/key)")
    if len(key.encode("utf-8")) > S3_KEY_MAX_BYTES:
        raise ValidationError(field, f"the S3 key must be at most {S3_KEY_MAX_BYTES} bytes (UTF-8)")
    if _CONTROL.search(key):
        raise ValidationError(field, "the S3 key must not contain control characters")
    return value


def _same_host(whatwg: str, python: str) -> bool:
    """Whether the WHATWG host and `urllib.parse`'s ``hostname`` name the same host.

    WHATWG lower-cases, IDNA-encodes and rewrites IP addresses; urllib only
    lower-cases. The urllib host is brought to the WHATWG form the plain way
    (IPv6 compared as addresses, other hosts IDNA-encoded by Python's codec)
    and must then match.
    """
    if whatwg.startswith("["):
        try:
            return ipaddress.IPv6Address(whatwg[1:-1]) == ipaddress.IPv6Address(python)
        except ValueError:
            return False
    try:  # also for ASCII hosts: refuses empty labels ("a..b", ".") and labels over 63
        return python.encode("idna").decode("ascii") == whatwg
    except UnicodeError:
        return False


class PdfUrlChecker:
    """`check_pdf_url` for many URLs, checking each host (scheme, authority) once.

    The expensive part of `check_pdf_url` is the host: the WHATWG parse and
    its comparison with `urllib.parse`. Both read only the URL's origin, the
    text ``scheme://authority`` up to the first ``/``, ``?`` or ``#``; what
    follows it is not parsed by either in a way that can refuse the URL or
    change its host. So a URL is accepted here without the host check when
    it is plain ASCII text with none of the characters `check_pdf_url`
    refuses anywhere (whitespace, control characters, backslash), is at most
    `PDF_URL_MAX` characters, and its origin, character for character, is
    one an earlier URL passed the full check with. Every other URL (an
    ``s3://`` URI, non-ASCII text, a new origin, anything refused) gets the
    full `check_pdf_url`, so a refusal is the same error, naming the same
    field. tests/test_validation.py checks with hypothesis that both give
    the same decision on generated and adversarial URLs.
    """

    __slots__ = ("_limit", "_origins")

    def __init__(self, limit: int | None = None) -> None:
        self._origins: set[str] = set()
        self._limit = limit  # how many origins to keep (emptied when full); None: all

    def check(self, value: object, field: str = "pdf_url") -> str:
        """`check_pdf_url`'s decision on ``value``; the value, as given."""
        if isinstance(value, str) and len(value) <= PDF_URL_MAX and value.isascii():
            plain = _PLAIN_URL.fullmatch(value)
            if plain is not None:
                origin = plain.group(1)
                if origin not in self._origins:
                    check_pdf_url(value, field)
                    if self._limit is not None and len(self._origins) >= self._limit:
                        self._origins.clear()
                    self._origins.add(origin)
                return value
        return check_pdf_url(value, field)


def check_pdf_urls(value: object, field: str = "pdf_urls") -> list[str]:
    """A list (or other sequence) of 1 to 100,000 URLs, each as `check_pdf_url`.

    A bad entry is named with its index, for example ``pdf_urls[3]``. Each
    distinct host is checked once (`PdfUrlChecker`): same decisions, faster.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValidationError(field, f"must be a list of URLs, not {_type_name(value)}")
    if len(value) > CREATE_MANY_MAX:
        raise ValidationError(field, f"at most {CREATE_MANY_MAX} URLs per call")
    checker = PdfUrlChecker()
    check = checker.check
    urls: list[str] = []
    for index, url in enumerate(value):
        try:
            urls.append(check(url, field))
        except ValidationError:
            check_pdf_url(url, f"{field}[{index}]")  # the same refusal, naming the item
            raise  # pragma: no cover - the full check refuses what the checker refused
    return urls


def check_job_id(value: object, field: str = "job_id") -> UUID:
    """A job (or result) id: a `UUID`, or a string holding one."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            raise ValidationError(field, "not a valid UUID") from None
    raise ValidationError(field, f"must be a UUID or a string, not {_type_name(value)}")


def check_job_status(value: object, field: str = "status") -> JobStatus:
    """A `JobStatus`, or its string value (``"queued"``, ...)."""
    if isinstance(value, str):
        status = STATUS_BY_LABEL.get(value)
        if status is not None:
            return status
    allowed = ", ".join(STATUS_BY_LABEL)
    if isinstance(value, str):
        raise ValidationError(field, f"must be one of {allowed}")
    raise ValidationError(
        field, f"must be a JobStatus or one of {allowed}, not {_type_name(value)}"
    )


def check_status(value: object, field: str = "status") -> JobStatus | None:
    """A `JobStatus`, its string value (``"queued"``, ...), or None for "any"."""
    return None if value is None else check_job_status(value, field)


def check_limit(value: object, field: str = "limit", maximum: int = LIMIT_MAX) -> int:
    """An int from 1 to ``maximum`` (1000 by default); bools are refused."""
    if not _is_int(value):
        raise ValidationError(field, f"must be an int, not {_type_name(value)}")
    assert isinstance(value, int)  # narrowed by _is_int, for the type checker
    if not 1 <= value <= maximum:
        raise ValidationError(field, f"must be between 1 and {maximum}")
    return value


def check_positive_int(value: object, field: str) -> int:
    """An int from 1 to 2**31 - 1 (PostgreSQL ``integer``); bools are refused."""
    return check_limit(value, field, INT4_MAX)


def check_optional_attempt(value: object, field: str = "attempt") -> int | None:
    """None (any claim), or the ``attempts`` of a worker's claim: an int from 1 to 2**31 - 1."""
    return None if value is None else check_positive_int(value, field)


def check_lease(value: object, field: str = "lease") -> timedelta:
    """A `timedelta` longer than zero and at most 7 days."""
    if not isinstance(value, timedelta):
        raise ValidationError(field, f"must be a datetime.timedelta, not {_type_name(value)}")
    if value <= _ZERO_DURATION:
        raise ValidationError(field, "must be longer than zero")
    if value > LEASE_MAX:
        raise ValidationError(field, "must be at most 7 days")
    return value


def check_priority(value: object, field: str = "priority") -> int:
    """A priority from -100 to 100 (higher is claimed first); None means 0. Bools are refused."""
    if value is None:
        return 0
    if not _is_int(value):
        raise ValidationError(field, f"must be an int, not {_type_name(value)}")
    assert isinstance(value, int)  # narrowed by _is_int, for the type checker
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValidationError(field, f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    return value


def _check_delay(value: object, field: str, *, zero: bool) -> timedelta:
    if not isinstance(value, timedelta):
        raise ValidationError(field, f"must be a datetime.timedelta, not {_type_name(value)}")
    if value < _ZERO_DURATION or (value == _ZERO_DURATION and not zero):
        raise ValidationError(
            field, "must be zero or longer" if zero else "must be longer than zero"
        )
    if value > DELAY_MAX:
        raise ValidationError(field, "must be at most 365 days")
    return value


def check_run_after(
    value: object, field: str = "run_after"
) -> tuple[datetime | None, timedelta | None]:
    """When a job may first be claimed: ``(at, in)``, at most one of them set.

    None: at once (``(None, None)``). A timezone-aware `datetime`: not before
    then (a past time is allowed and counts as waiting since then; in UTC it
    must fall in years 1 to 9999, or the stored job could not be read back). A
    `timedelta` from 0 to 365 days: not before the server's ``now()`` plus it
    (the database's clock, not this machine's).
    """
    if value is None:
        return None, None
    if isinstance(value, timedelta):
        return None, _check_delay(value, field, zero=True)
    if not isinstance(value, datetime):
        raise ValidationError(
            field, f"must be a datetime, a datetime.timedelta or None, not {_type_name(value)}"
        )
    at = check_aware_datetime(value, field)
    try:
        at.astimezone(UTC)
    except OverflowError:
        # PostgreSQL would store year 0 or 10000 (timestamptz reaches far wider), but no
        # Python datetime can hold it: every later read of the job would fail.
        raise ValidationError(field, "must fall in years 1 to 9999 in UTC") from None
    return at, None


def check_retry_in(value: object, field: str = "retry_in") -> timedelta | None:
    """None (fail for good), or a `timedelta` from 0 to 365 days: retry no earlier than that."""
    return None if value is None else _check_delay(value, field, zero=True)


def check_backoff(value: object, field: str = "backoff") -> timedelta | None:
    """None (no backoff), or a `timedelta` longer than zero and at most 365 days."""
    return None if value is None else _check_delay(value, field, zero=False)


def check_flag(value: object, field: str) -> bool:
    """A bool (not an int or a truthy value: ``fair=1`` is refused)."""
    if not isinstance(value, bool):
        raise ValidationError(field, f"must be True or False, not {_type_name(value)}")
    return value


def check_aware_datetime(value: object, field: str) -> datetime:
    """A timezone-aware `datetime` (a naive one is ambiguous, so it is refused)."""
    if not isinstance(value, datetime):
        raise ValidationError(field, f"must be a datetime, not {_type_name(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, "must be timezone-aware (for example tzinfo=UTC)")
    return value


def check_time_range(since: object, until: object) -> tuple[datetime | None, datetime | None]:
    """Optional aware bounds ``since <= until`` (None leaves that side open)."""
    start = None if since is None else check_aware_datetime(since, "since")
    end = None if until is None else check_aware_datetime(until, "until")
    if start is not None and end is not None and end < start:
        raise ValidationError("until", "must not be earlier than since")
    return start, end


def check_confidence_score(value: object, field: str = "confidence_score") -> Decimal:
    """A score from 0 to 1, rounded half-even to 2 decimal places.

    The column is ``DECIMAL(3,2)``. The range is checked on the value as
    given (1.004 is refused), then extra digits are rounded half to even:
    0.935 -> 0.94, 0.925 -> 0.92, 0.9349 -> 0.93. A float is read through its
    shortest repr (``str(0.935) == "0.935"``), not its binary expansion.
    Accepts `Decimal`, `float` and `int`; bools, NaN and infinities are refused.
    """
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field, "must be a finite number")
        number = Decimal(repr(value))
    elif _is_int(value):
        assert isinstance(value, int)  # narrowed by _is_int, for the type checker
        number = Decimal(value)
    else:
        raise ValidationError(field, f"must be a Decimal, float or int, not {_type_name(value)}")
    if not number.is_finite():
        raise ValidationError(field, "must be a finite number")
    if not _ZERO <= number <= _ONE:
        raise ValidationError(field, "must be between 0 and 1")
    try:
        return number.quantize(_CONFIDENCE_STEP, rounding=ROUND_HALF_EVEN)
    except InvalidOperation:  # pragma: no cover - a finite value in 0..1 always quantises
        raise ValidationError(field, "cannot be rounded to 2 decimal places") from None


def check_tokens_used(value: object, field: str = "tokens_used") -> int:
    """An int from 0 to 2**31 - 1 (PostgreSQL ``integer``); bools are refused."""
    if not _is_int(value):
        raise ValidationError(field, f"must be an int, not {_type_name(value)}")
    assert isinstance(value, int)  # narrowed by _is_int, for the type checker
    if value < 0:
        raise ValidationError(field, "must be 0 or more")
    if value > INT4_MAX:
        raise ValidationError(field, f"must be at most {INT4_MAX}")
    return value


def check_extracted_data(value: object, field: str = "extracted_data") -> str:
    """A dict that survives a JSON round trip unchanged; returns its JSON text.

    Keys must be strings; values JSON types (dict, list, str, int, float,
    bool, None). Refused: tuples and sets, non-string keys, NaN and
    infinities, `Decimal`, the character U+0000 and surrogate code points
    (U+D800..U+DFFF) in keys or strings (jsonb can store neither), and JSON
    text longer than `EXTRACTED_DATA_MAX_BYTES` (64 MiB in UTF-8), refused
    before anything is sent. The text keeps non-ASCII characters as they
    are (no ``\\u`` escapes), so a surrogate shows: UTF-8 cannot encode it.
    """
    return check_extracted_document(value, _read_json, field)[0]


def check_extracted_document(
    value: object, read: Callable[[str], T], field: str = "extracted_data"
) -> tuple[str, T]:
    """`check_extracted_data`, and ``read`` of its JSON text: the text decoded once, not twice.

    ``read`` decodes the text as its caller needs it (`complete`: as the
    jsonb column gives it back); what it returns counts as the read-back, and
    only if that differs from ``value`` is the text decoded again the plain
    way to decide. So ``read`` must give what `json.loads` gives, numbers
    with a fraction or exponent aside (`json.loads` gives those back exactly).
    It only sees text UTF-8 can encode, without a U+0000 escape. Refusals,
    in order: the type, nesting depth, serialisability, size, the read-back,
    U+0000, surrogates.
    """
    text = _extracted_json(value, field)
    # Both scans are skipped for most documents: no "\\u0000" at all, or ASCII text.
    nul = "\\u0000" in text and _JSON_NUL.search(text) is not None
    if nul or not (text.isascii() or _utf8_encodable(text)):
        # Refused; the read-back is still the first reason given.
        if not _reads_back(text, value):
            raise _not_read_back(field)
        if nul:
            raise ValidationError(field, "must not contain the character U+0000")
        _check_unicode(text, field)  # raises: the text holds a surrogate
    document = read(text)
    if document != value and not _reads_back(text, value):
        raise _not_read_back(field)
    return text, document


# Made once: json.dumps and json.loads given arguments build an encoder or a decoder per call.
_JSON_ENCODER: Final = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
_SPACED_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
_JSON_DECODER: Final = json.JSONDecoder()


def _extracted_json(value: object, field: str) -> str:
    """``value``'s JSON text; refused for its type, depth, serialisability or size, in order."""
    if not isinstance(value, dict):
        raise ValidationError(field, f"must be a dict, not {_type_name(value)}")
    text: str | None
    try:
        text = _JSON_ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):  # a circular value is a ValueError
        text = None
    # The depth is checked here, not left to the encoder: its recursion limit differs
    # between Python versions (3.13 serialises 5,000 levels that 3.12 refuses). Every
    # dict and list opens with a bracket, so a text with at most the limit of them
    # (in strings too) nests no deeper and needs no walk.
    if text is None or text.count("[") + text.count("{") > EXTRACTED_DATA_MAX_DEPTH:
        if _nesting_above(value, EXTRACTED_DATA_MAX_DEPTH):
            raise ValidationError(
                field,
                f"must not nest dicts and lists more than {EXTRACTED_DATA_MAX_DEPTH} levels deep",
            )
        if text is None:
            raise ValidationError(
                field,
                "must be JSON-serialisable (str keys; dict, list, str, int, float, bool, None)",
            )
    # Before the read-back comparison: a text too large to send is refused fast.
    if _utf8_size_above(text, EXTRACTED_DATA_MAX_BYTES):
        raise ValidationError(
            field,
            f"must be at most {EXTRACTED_DATA_MAX_BYTES:,} bytes (64 MiB) as JSON text "
            "(UTF-8); store large data elsewhere and keep a reference to it",
        )
    return text


def _read_json(text: str) -> Any:
    """JSON text made by `_JSON_ENCODER`, decoded (nothing follows the value)."""
    return _JSON_DECODER.raw_decode(text)[0]


def _reads_back(text: str, value: object) -> bool:
    """Whether ``text`` decodes to a value equal to ``value``."""
    try:
        same: Any = _read_json(text) == value
    except RecursionError:  # pragma: no cover - the encoder would have failed first
        return False
    return bool(same)


def _not_read_back(field: str) -> ValidationError:
    return ValidationError(
        field, "must read back unchanged from JSON (str keys only; lists, not tuples)"
    )


def _nesting_above(value: object, limit: int) -> bool:
    """Whether dicts and lists in ``value`` nest deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend(
                (child, depth + 1) for child in item.values() if isinstance(child, dict | list)
            )
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return False


def _utf8_size_above(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes in UTF-8, encoding it only if need be."""
    if len(text) > limit:  # every character is at least one byte
        return True
    if len(text) * 4 <= limit:  # and at most four
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def check_progress(value: object, field: str = "progress") -> str:
    """A small JSON object (a worker's progress report); returns its JSON text.

    The rules of `check_extracted_data` (a dict of JSON values that reads
    back unchanged), and at most `PROGRESS_MAX_BYTES` (4096) bytes of UTF-8
    as PostgreSQL writes the jsonb out (``", "`` and ``": "`` between items),
    the size the ``jobs_progress_small_object`` CHECK measures.
    """
    text = check_extracted_data(value, field)
    # Measured as jsonb::text spaces it; numbers PostgreSQL writes longer than
    # Python does (1e300) are left to the CHECK, which names this field too.
    spaced = _SPACED_JSON_ENCODER.encode(value)
    if _utf8_size_above(spaced, PROGRESS_MAX_BYTES):
        raise ValidationError(
            field,
            f"must be at most {PROGRESS_MAX_BYTES} bytes as JSON text (UTF-8, as jsonb "
            "writes it out); keep progress small: counters, a stage, a message",
        )
    return text


def check_error_message(value: object, field: str = "error_message") -> str:
    """A non-blank string of at most 10,000 characters without U+0000."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {_type_name(value)}")
    _check_unicode(value, field)
    if not value.strip():
        raise ValidationError(field, "must not be empty or blank")
    if len(value) > ERROR_MESSAGE_MAX:
        raise ValidationError(field, f"must be at most {ERROR_MESSAGE_MAX} characters")
    if "\x00" in value:
        raise ValidationError(field, "must not contain the character U+0000")
    return value


# -- batches ----------------------------------------------------------------------------


def check_job_ids(value: object, count: int, field: str = "job_ids") -> list[UUID]:
    """A sequence of ``count`` distinct job ids (each as `check_job_id`)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValidationError(field, f"must be a list of UUIDs, not {_type_name(value)}")
    if len(value) != count:
        raise ValidationError(field, f"must hold {count} ids (one per URL), not {len(value)}")
    ids = [check_job_id(item, f"{field}[{index}]") for index, item in enumerate(value)]
    seen: dict[UUID, int] = {}
    for index, job_id in enumerate(ids):
        first = seen.setdefault(job_id, index)
        if first != index:
            raise ValidationError(f"{field}[{index}]", f"repeats {field}[{first}]")
    return ids
