"""Input validation: every bad argument is a ValidationError naming it, before any SQL.

Most tests use repositories on a `Database` that was never opened: any
attempt to run SQL would raise `ConfigurationError`, so a `ValidationError`
proves the check ran first. The database tests then show that nothing was
written and that valid values survive the round trip unchanged.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import AnyHttpUrl, TypeAdapter

from cira_db import Database, Job, JobRepository, JobResultRepository, JobStatus
from cira_db._validation import (
    EXTRACTED_DATA_MAX_BYTES,
    EXTRACTED_DATA_MAX_DEPTH,
    PdfUrlChecker,
    check_client_id,
    check_confidence_score,
    check_error_message,
    check_extracted_data,
    check_extracted_document,
    check_job_id,
    check_lease,
    check_limit,
    check_optional_attempt,
    check_pdf_url,
    check_pdf_urls,
    check_status,
    check_tokens_used,
)
from cira_db.errors import ValidationError

A = "client-a"
URL = "https://example.com/a.pdf"
LEASE = timedelta(minutes=1)
UNOPENED = Database("postgresql://localhost/never-opened")
JOBS = JobRepository(UNOPENED)
RESULTS = JobResultRepository(UNOPENED)
SOME_ID = uuid.uuid4()


def _field(call: Callable[[], object]) -> str:
    with pytest.raises(ValidationError) as info:
        call()
    assert isinstance(info.value, ValueError)  # ValidationError is also a ValueError
    return info.value.field


# -- the single checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "client-a",
        "x" * 50,
        "ünïcödé-client",
        "test client 1",
        "a.b@c:d/e",
        "客户-1",
        "caf\u00e9",
    ],
)
def test_good_client_ids(value: str) -> None:
    assert check_client_id(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("   ", "blank"),
        ("x" * 51, "at most 50"),
        (" client", "whitespace"),
        ("client\n", "whitespace"),
        ("cli\x00ent", "control"),
        ("cli\x1bent", "control"),
        ("client-a ", "whitespace"),  # refused, not trimmed
        ("client-a\u200b", "U\\+200B"),  # zero-width space
        ("\ufeffclient-a", "U\\+FEFF"),  # byte order mark
        ("client-\u202ea", "U\\+202E"),  # right-to-left override
        ("client\u2066-a", "U\\+2066"),  # left-to-right isolate
        ("client\u00ada", "U\\+00AD"),  # soft hyphen
        ("client\u00a0a", "U\\+00A0"),  # no-break space
        ("client\u3000a", "U\\+3000"),  # ideographic space
        ("client\u2028a", "U\\+2028"),  # line separator
        ("client\u2029a", "U\\+2029"),  # paragraph separator
        ("client\ue000a", "U\\+E000"),  # private use
        ("client\U000e0001", "U\\+E0001"),  # language tag (format)
        ("client\u0378", "U\\+0378"),  # unassigned
        ("client\x85a", "U\\+0085"),  # next line (C1 control)
        ("cafe\u0301", "NFC"),  # "café" with a combining accent
        ("client\u3164a", "U\\+3164"),  # Hangul filler (a letter, but invisible)
        ("client-a\ufe0f", "U\\+FE0F"),  # variation selector
        ("client\u034fa", "U\\+034F"),  # combining grapheme joiner
        (None, "string"),
        (42, "string"),
        (b"client", "string"),
    ],
)
def test_bad_client_ids(value: object, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as info:
        check_client_id(value)
    assert info.value.field == "client_id"


_GOOD_URLS: Final = [
    "https://example.com/a.pdf",
    "http://localhost:8080/files/a.pdf",
    "HTTPS://EXAMPLE.COM/A.PDF",
    "https://bucket.s3.amazonaws.com/k/a.pdf?X-Amz-Signature=abc&X-Amz-Expires=900",
    "https://[::1]/a.pdf",
    "https://例え.jp/文書.pdf",
    "https://xn--strae-oqa.de/a.pdf",  # straße.de, written in its xn-- form
    "https://example.com:/a.pdf",
    "https://example.com:0443/a.pdf",
    "http://[::ffff:1.2.3.4]/a.pdf",
    "https://example.com/a@b.pdf?next=@x#@y",  # "@" after the host is just data
    "https://example.com/" + "a" * (2048 - len("https://example.com/")),
]


@pytest.mark.parametrize("value", _GOOD_URLS)
def test_good_pdf_urls(value: str) -> None:
    assert check_pdf_url(value) == value  # stored exactly as given


_BAD_URLS: Final[list[tuple[object, str]]] = [
    ("", "http"),
    ("example.com/a.pdf", "http"),
    ("ftp://example.com/a.pdf", "http"),
    ("file:///etc/passwd", "http"),
    ("javascript:alert(1)", "http"),
    ("https:example.com", "http"),
    ("https://", "valid"),
    ("https://exa mple.com/a.pdf", "whitespace"),
    ("https://example.com/a b.pdf", "whitespace"),
    (" https://example.com/a.pdf", "http"),
    ("https://example.com/a.pdf\n", "whitespace"),
    ("https://example.com/\x00.pdf", "control"),
    ("https://example.com:99999/a.pdf", "valid"),
    ("https://user:secret@example.com/a.pdf", "user name or password"),
    ("https://@example.com/a.pdf", "user name or password"),
    ("https://:@example.com/a.pdf", "user name or password"),
    ("https://secret@example.com/a.pdf", "user name or password"),
    ("https://evil.com\\@good.com/a.pdf", "backslash"),
    ("https://good.com\\a.pdf", "backslash"),
    ("https://good.com/a\\b.pdf", "backslash"),
    ("https:///a.pdf", "no host"),
    ("https://:443/a.pdf", "no host"),
    ("https://e%78ample.com/a.pdf", "reads differently"),
    ("http://0x7f.1/a.pdf", "reads differently"),
    ("http://127.1/a.pdf", "reads differently"),
    ("http://0177.0.0.1/a.pdf", "reads differently"),
    ("https://straße.de/a.pdf", "reads differently"),
    ("https://[::1/a.pdf", "valid"),
    ("https://example.com:+443/a.pdf", "valid"),
    ("https://example.com/" + "a" * 2048, "at most 2048"),
    (None, "string"),
    (["https://example.com/a.pdf"], "string"),
]


@pytest.mark.parametrize(("value", "reason"), _BAD_URLS)
def test_bad_pdf_urls(value: object, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as info:
        check_pdf_url(value)
    assert info.value.field == "pdf_url"
    assert "secret" not in str(info.value)


def test_pdf_urls_names_the_bad_entry() -> None:
    assert check_pdf_urls((URL, URL)) == [URL, URL]
    with pytest.raises(ValidationError) as info:
        check_pdf_urls([URL, URL, "nope"])
    assert info.value.field == "pdf_urls[2]"
    for bad in (URL, None, {URL}, 3):
        with pytest.raises(ValidationError) as whole:
            check_pdf_urls(bad)
        assert whole.value.field == "pdf_urls"


def test_pdf_urls_has_a_ceiling() -> None:
    with pytest.raises(ValidationError, match="at most 100000"):
        check_pdf_urls([URL] * 100_001)


@pytest.mark.parametrize(
    ("given_value", "stored"),
    [
        (0, Decimal("0.00")),
        (1, Decimal("1.00")),
        (0.5, Decimal("0.50")),
        (0.935, Decimal("0.94")),  # half-even: 3 is odd, rounds up
        (0.925, Decimal("0.92")),  # half-even: 2 is even, stays
        (0.9349, Decimal("0.93")),
        (Decimal("0.125"), Decimal("0.12")),
        (Decimal("0.135"), Decimal("0.14")),
        (Decimal("0.999"), Decimal("1.00")),
        (Decimal("0.001"), Decimal("0.00")),
        (Decimal("1.000"), Decimal("1.00")),
        (1e-9, Decimal("0.00")),
        (0.1 + 0.2, Decimal("0.30")),
    ],
)
def test_confidence_is_rounded_half_even(given_value: Any, stored: Decimal) -> None:
    assert check_confidence_score(given_value) == stored


@pytest.mark.parametrize(
    "value",
    [
        -0.01,
        1.001,
        Decimal("1.004"),
        Decimal("-0.001"),
        2,
        -1,
        float("nan"),
        float("inf"),
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        True,
        "0.5",
        None,
    ],
)
def test_bad_confidence(value: object) -> None:
    assert _field(lambda: check_confidence_score(value)) == "confidence_score"


@pytest.mark.parametrize("value", [-1, 2**31, True, False, 1.0, "1", None])
def test_bad_tokens_used(value: object) -> None:
    assert _field(lambda: check_tokens_used(value)) == "tokens_used"


def test_tokens_used_bounds() -> None:
    assert check_tokens_used(0) == 0
    assert check_tokens_used(2**31 - 1) == 2**31 - 1


@pytest.mark.parametrize(
    "value",
    [
        [],
        "{}",
        None,
        {1: "int key"},
        {"t": (1, 2)},
        {"s": {1, 2}},
        {"d": Decimal("1.5")},
        {"f": float("nan")},
        {"f": float("inf")},
        {"nul": "a\x00b"},
        {"nested": [{"nul": "\x00"}]},
        {"\x00": 1},
        {"dt": datetime(2024, 1, 1, tzinfo=UTC)},
        {"b": b"bytes"},
    ],
)
def test_bad_extracted_data(value: object) -> None:
    assert _field(lambda: check_extracted_data(value)) == "extracted_data"


def test_extracted_data_accepts_backslashes_that_only_look_like_nul() -> None:
    value = {"text": "a literal \\u0000 is six characters", "\\": "\\\\u0000"}
    assert json.loads(check_extracted_data(value)) == value


def test_deeply_nested_data_is_a_validation_error() -> None:
    value: dict[str, Any] = {}
    cursor = value
    for _ in range(5000):
        cursor["x"] = {}
        cursor = cursor["x"]
    assert _field(lambda: check_extracted_data(value)) == "extracted_data"


def _nested(depth: int, leaf: object) -> dict[str, Any]:
    """A dict nesting ``depth`` dicts deep (the top one counts), ``leaf`` in the innermost."""
    value: dict[str, Any] = {"leaf": leaf}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def _circular() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


_DEPTH = "must not nest dicts and lists more than 100 levels deep"
_SERIALISABLE = "must be JSON-serialisable"
_READ_BACK = "must read back unchanged from JSON"
_NUL = "must not contain the character U+0000"
_SURROGATE = "must be valid Unicode text (no surrogate code points"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([], "must be a dict, not list"),
        (_nested(101, 1), _DEPTH),
        (_nested(5000, 1), _DEPTH),
        (_circular(), _DEPTH),  # a cycle nests without end
        ({"l": [_circular()]}, _DEPTH),
        (_nested(101, {1, 2}), _DEPTH),  # depth before serialisability
        (_nested(101, (1, 2)), _DEPTH),  # depth before the read-back
        (_nested(101, "\x00"), _DEPTH),
        (_nested(100, {1, 2}), _SERIALISABLE),
        ({"s": {1, 2}}, _SERIALISABLE),
        ({"d": Decimal("1.5")}, _SERIALISABLE),
        ({"f": float("nan")}, _SERIALISABLE),
        ({(1, 2): 1}, _SERIALISABLE),
        ({"t": (1, 2)}, _READ_BACK),
        ({1: "x"}, _READ_BACK),
        ({1: "\x00"}, _READ_BACK),  # the read-back before U+0000
        ({1: "\ud800"}, _READ_BACK),  # and before surrogates
        ({"t": ("\x00", "\ud800")}, _READ_BACK),
        ({"a": "\x00"}, _NUL),
        ({"\x00": 1}, _NUL),
        ({"a": "\ud800", "b": "\x00"}, _NUL),  # U+0000 before surrogates
        ({"a": "\ud800"}, _SURROGATE),
        ({"\udcff": 1}, _SURROGATE),
        ({"a": ["é", "\udcff"]}, _SURROGATE),
    ],
)
def test_extracted_data_refusals_give_the_first_reason_in_order(value: object, reason: str) -> None:
    """Type, nesting depth, serialisability, size, read-back, U+0000, surrogates: in that order."""
    with pytest.raises(ValidationError) as info:
        check_extracted_data(value)
    assert info.value.field == "extracted_data"
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("value", "reads"),
    [
        ({"a": "\x00"}, 0),
        ({"a": "\ud800"}, 0),
        ({"a": "\ud800", "b": "\x00"}, 0),
        ({"t": (1, 2)}, 1),  # read (by the caller's reading), then found unequal
    ],
)
def test_check_extracted_document_reads_no_text_it_refuses_for_its_characters(
    value: dict[str, Any], reads: int
) -> None:
    read: list[str] = []
    with pytest.raises(ValidationError) as info:
        check_extracted_document(value, read.append)
    assert info.value.field == "extracted_data"
    assert str(info.value) == str(_refusal_of(value))
    assert len(read) == reads


def _refusal_of(value: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        check_extracted_data(value)
    return info.value


def test_check_extracted_document_returns_the_text_and_the_callers_reading() -> None:
    value = {"é": "😀", "n": [1.5, 1e16, 1.2345678901234567e30, -0.0, 10**30, True, None]}
    text, document = check_extracted_document(value, json.loads)
    assert text == check_extracted_data(value)
    assert document == value

    def rounded(text: str) -> dict[str, Any]:  # numbers read otherwise: compared the plain way
        read: dict[str, Any] = json.loads(text, parse_float=lambda number: round(float(number)))
        return read

    assert check_extracted_document({"x": 1.5}, rounded) == ('{"x":1.5}', {"x": 2})
    assert _field(lambda: check_extracted_document({1: 1.5}, rounded)) == "extracted_data"
    with pytest.raises(ValidationError, match="must not contain the character U"):
        check_extracted_document({"x": "\x00"}, json.loads, "progress")


def test_extracted_data_size_is_checked_after_depth_and_before_the_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cira_db._validation.EXTRACTED_DATA_MAX_BYTES", 100)
    too_large = {"k": "x" * 100}
    for value, reason in [
        (too_large, "64 MiB"),
        ({**too_large, "t": (1, 2), "n": "\x00"}, "64 MiB"),
        ({**too_large, "deep": _nested(100, 1)}, _DEPTH),
    ]:
        with pytest.raises(ValidationError) as info:
            check_extracted_data(value)
        assert reason in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"k": "a literal \\u0000, six characters", "\\": "\\\\u0000"},
        _nested(99, [1]),  # 100 levels deep (99 dicts, a list): the limit itself
        {"brackets": "[{" * 200},  # brackets in text, not nesting
        {"é": "😀", "n": [1.5, 1e300, -0.0, 10**30, True, None]},
    ],
)
def test_extracted_data_accepts_what_reads_back(value: dict[str, Any]) -> None:
    text = check_extracted_data(value)
    assert json.loads(text) == value
    assert text == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _data_of_size(size: int, char: str = "x") -> dict[str, Any]:
    """A dict whose compact JSON text is ``size`` bytes of UTF-8 (``char`` in a string)."""
    overhead = len('{"k":""}')
    per_char = len(char.encode())
    assert (size - overhead) % per_char == 0
    return {"k": char * ((size - overhead) // per_char)}


def test_extracted_data_up_to_64_mib_is_accepted_and_larger_is_refused_before_sql() -> None:
    assert EXTRACTED_DATA_MAX_BYTES == 64 * 1024 * 1024
    largest = _data_of_size(EXTRACTED_DATA_MAX_BYTES)
    assert len(check_extracted_data(largest).encode()) == EXTRACTED_DATA_MAX_BYTES
    del largest
    too_large = _data_of_size(EXTRACTED_DATA_MAX_BYTES + 1)
    started = time.monotonic()
    with pytest.raises(ValidationError, match="64 MiB") as info:
        # UNOPENED has no server: the refusal comes before any SQL could run.
        JOBS.complete(SOME_ID, extracted_data=too_large, confidence_score=1, tokens_used=1)
    assert info.value.field == "extracted_data"
    assert time.monotonic() - started < 5  # refused, not sent


def test_the_extracted_data_limit_counts_utf8_bytes_not_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cira_db._validation.EXTRACTED_DATA_MAX_BYTES", 1000)
    assert check_extracted_data(_data_of_size(1000))
    assert check_extracted_data(_data_of_size(1000 - 2, "é"))  # 495 characters, 998 bytes
    assert _field(lambda: check_extracted_data(_data_of_size(1000 + 2, "é"))) == "extracted_data"
    four = _data_of_size(1000, "\U0001f600")  # 248 characters, 1000 bytes
    assert check_extracted_data(four)
    assert _field(lambda: check_extracted_data({"k": four["k"] + "x"})) == "extracted_data"


@pytest.mark.parametrize("value", [0, -1, 1001, True, 1.5, "10", None])
def test_bad_limits(value: object) -> None:
    assert _field(lambda: check_limit(value)) == "limit"


@pytest.mark.parametrize(
    "value", [timedelta(0), timedelta(seconds=-1), timedelta(days=8), 60, 60.0, "15m", None]
)
def test_bad_leases(value: object) -> None:
    assert _field(lambda: check_lease(value)) == "lease"


@pytest.mark.parametrize("value", ["not-a-uuid", "", 123, None, SOME_ID.bytes])
def test_bad_job_ids(value: object) -> None:
    assert _field(lambda: check_job_id(value)) == "job_id"


def test_job_ids_as_uuid_or_str() -> None:
    assert check_job_id(SOME_ID) is SOME_ID
    assert check_job_id(str(SOME_ID)) == SOME_ID
    assert check_job_id(str(SOME_ID).upper()) == SOME_ID


def test_status_values() -> None:
    assert check_status(None) is None
    assert check_status("failed") is JobStatus.FAILED
    assert check_status(JobStatus.QUEUED) is JobStatus.QUEUED


@pytest.mark.parametrize("value", ["QUEUED", "done", 1, b"queued"])
def test_bad_statuses(value: object) -> None:
    assert _field(lambda: check_status(value)) == "status"


@pytest.mark.parametrize("value", ["", "   ", "x" * 10_001, "a\x00b", None, 1])
def test_bad_error_messages(value: object) -> None:
    assert _field(lambda: check_error_message(value)) == "error_message"


@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, "1", 2**31])
def test_bad_attempts(value: object) -> None:
    assert _field(lambda: check_optional_attempt(value)) == "attempt"


def test_attempts() -> None:
    assert check_optional_attempt(None) is None
    assert check_optional_attempt(1) == 1
    assert check_optional_attempt(2**31 - 1) == 2**31 - 1


# -- text that UTF-8 cannot encode (surrogate code points) -----------------------------------------

SURROGATES = ["a\ud800", "\udcff", "bad \udcff", "\ud83d\ude00", "x\udfffy"]


@pytest.mark.parametrize("value", SURROGATES)
def test_surrogates_are_refused_in_every_text_field(value: str) -> None:
    assert _field(lambda: check_client_id(value)) == "client_id"
    assert _field(lambda: check_pdf_url("https://example.com/" + value)) == "pdf_url"
    assert _field(lambda: check_error_message(value)) == "error_message"
    assert _field(lambda: check_extracted_data({"x": value})) == "extracted_data"
    assert _field(lambda: check_extracted_data({value: 1})) == "extracted_data"
    assert _field(lambda: check_extracted_data({"a": [{"b": value}]})) == "extracted_data"


def test_surrogates_are_refused_by_every_call_before_sql() -> None:
    bad = "a\ud800"
    assert _field(lambda: JOBS.create(client_id=bad, pdf_url=URL)) == "client_id"
    assert _field(lambda: JOBS.create(client_id=A, pdf_url=URL + bad)) == "pdf_url"
    assert _field(lambda: JOBS.create_many(client_id=A, pdf_urls=[URL, URL + bad])) == "pdf_urls[1]"
    assert _field(lambda: JOBS.get(SOME_ID, client_id=bad)) == "client_id"
    assert _field(lambda: JOBS.claim_next(lease=LEASE, client_id=bad)) == "client_id"
    assert _field(lambda: JOBS.fail(SOME_ID, error_message="bad \udcff")) == "error_message"
    assert (
        _field(
            lambda: JOBS.complete(
                SOME_ID, extracted_data={"x": "\ud800"}, confidence_score=1, tokens_used=1
            )
        )
        == "extracted_data"
    )
    assert _field(lambda: RESULTS.usage(client_id=bad)) == "client_id"


def test_non_ascii_text_is_fine() -> None:
    assert check_client_id("ünïcödé-😀") == "ünïcödé-😀"
    assert check_error_message("échec 😀") == "échec 😀"
    text = check_extracted_data({"clé": "😀", "n": "\u00e9"})
    assert json.loads(text) == {"clé": "😀", "n": "é"}


# -- every public call checks before any SQL -------------------------------------------------

CALLS: list[tuple[str, Callable[[], object], str]] = [
    ("create client", lambda: JOBS.create(client_id="", pdf_url=URL), "client_id"),
    ("create url", lambda: JOBS.create(client_id=A, pdf_url="ftp://x/y"), "pdf_url"),
    ("create id", lambda: JOBS.create(client_id=A, pdf_url=URL, job_id="x"), "job_id"),
    ("many client", lambda: JOBS.create_many(client_id=None, pdf_urls=[URL]), "client_id"),  # type: ignore[call-overload]
    ("many urls", lambda: JOBS.create_many(client_id=A, pdf_urls=URL), "pdf_urls"),
    ("get id", lambda: JOBS.get("x", client_id=A), "job_id"),
    ("get client", lambda: JOBS.get(SOME_ID, client_id=" a"), "client_id"),
    ("find client", lambda: JOBS.find(SOME_ID, client_id=""), "client_id"),
    ("list client", lambda: JOBS.list(client_id=""), "client_id"),
    ("list status", lambda: JOBS.list(client_id=A, status="done"), "status"),
    ("list limit", lambda: JOBS.list(client_id=A, limit=0), "limit"),
    ("list limit high", lambda: JOBS.list(client_id=A, limit=1001), "limit"),
    ("list cursor", lambda: JOBS.list(client_id=A, cursor="abc"), "cursor"),
    ("list cursor type", lambda: JOBS.list(client_id=A, cursor=b"abc"), "cursor"),  # type: ignore[arg-type]
    ("claim lease", lambda: JOBS.claim_next(lease=timedelta(0)), "lease"),
    ("claim client", lambda: JOBS.claim_next(lease=LEASE, client_id=""), "client_id"),
    ("batch limit", lambda: JOBS.claim_batch(0, lease=LEASE), "limit"),
    ("batch lease", lambda: JOBS.claim_batch(5, lease=5), "lease"),  # type: ignore[arg-type]
    ("extend id", lambda: JOBS.extend_lease("x", lease=LEASE), "job_id"),
    ("extend lease", lambda: JOBS.extend_lease(SOME_ID, lease=timedelta(-1)), "lease"),
    ("extend attempt", lambda: JOBS.extend_lease(SOME_ID, lease=LEASE, attempt=0), "attempt"),
    (
        "complete data",
        lambda: JOBS.complete(SOME_ID, extracted_data=[], confidence_score=1, tokens_used=1),  # type: ignore[arg-type]
        "extracted_data",
    ),
    (
        "complete confidence",
        lambda: JOBS.complete(SOME_ID, extracted_data={}, confidence_score=1.5, tokens_used=1),
        "confidence_score",
    ),
    (
        "complete tokens",
        lambda: JOBS.complete(SOME_ID, extracted_data={}, confidence_score=1, tokens_used=-1),
        "tokens_used",
    ),
    (
        "complete client",
        lambda: JOBS.complete(
            SOME_ID, extracted_data={}, confidence_score=1, tokens_used=1, client_id=""
        ),
        "client_id",
    ),
    (
        "complete attempt",
        lambda: JOBS.complete(
            SOME_ID, extracted_data={}, confidence_score=1, tokens_used=1, attempt=True
        ),
        "attempt",
    ),
    ("fail message", lambda: JOBS.fail(SOME_ID, error_message=""), "error_message"),
    ("fail attempt", lambda: JOBS.fail(SOME_ID, error_message="x", attempt="1"), "attempt"),  # type: ignore[arg-type]
    ("fail id", lambda: JOBS.fail(None, error_message="x"), "job_id"),  # type: ignore[arg-type]
    ("retry id", lambda: JOBS.retry(3), "job_id"),  # type: ignore[arg-type]
    ("retry client", lambda: JOBS.retry(SOME_ID, client_id="x" * 51), "client_id"),
    ("release attempts", lambda: JOBS.release_expired(max_attempts=0), "max_attempts"),
    ("release limit", lambda: JOBS.release_expired(limit=5000), "limit"),
    ("count client", lambda: JOBS.count_by_status(client_id=""), "client_id"),
    (
        "delete cutoff",
        lambda: JOBS.delete_finished_before(datetime(2024, 1, 1)),
        "cutoff",
    ),
    (
        "delete batch",
        lambda: JOBS.delete_finished_before(datetime.now(UTC), batch_size=10_001),
        "batch_size",
    ),
    ("result id", lambda: RESULTS.get_for_job("x", client_id=A), "job_id"),
    ("result client", lambda: RESULTS.find_for_job(SOME_ID, client_id=""), "client_id"),
    ("usage client", lambda: RESULTS.usage(client_id=""), "client_id"),
    ("usage since", lambda: RESULTS.usage(client_id=A, since="yesterday"), "since"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("call", "field"), [(c, f) for _, c, f in CALLS], ids=[n for n, _, _ in CALLS]
)
def test_every_call_validates_before_sql(call: Callable[[], object], field: str) -> None:
    assert _field(call) == field


# -- hypothesis: arbitrary bad input --------------------------------------------------------------

_not_str = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_bad_client_ids = st.one_of(
    _not_str,
    st.text(min_size=51, max_size=80).filter(lambda s: len(s) > 50),
    st.text(alphabet=" \t\n\r\x0b\x0c", max_size=10),
    st.text(max_size=20).map(lambda s: " " + s),
    st.tuples(st.text(max_size=10), st.characters(max_codepoint=31), st.text(max_size=10)).map(
        "".join
    ),
)
_bad_urls = st.one_of(
    _not_str,
    st.text(max_size=40).filter(lambda s: not s.lower().startswith(("http://", "https://"))),
    st.text(min_size=1, max_size=20).map(lambda s: "https://example.com/a b" + s),
    st.text(max_size=20).map(lambda s: "https://" + " " + s),
    st.integers(min_value=0, max_value=100).map(lambda n: "https://e.com/" + "x" * (2040 + n)),
)
_bad_scores = st.one_of(
    st.floats().filter(lambda f: not 0 <= f <= 1),
    st.decimals(allow_nan=True).filter(lambda d: not d.is_finite() or not 0 <= d <= 1),
    st.integers().filter(lambda n: n not in (0, 1)),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
)
_bad_tokens = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**31),
    st.booleans(),
    st.floats(),
    st.text(max_size=5),
    st.none(),
)
_bad_data = st.one_of(
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.text(max_size=5),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=3), st.tuples(st.integers()), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=3), st.decimals(), min_size=1, max_size=3),
    st.dictionaries(
        st.text(max_size=3),
        st.text(max_size=5).map(lambda s: s + "\x00"),
        min_size=1,
        max_size=3,
    ),
)
_bad_limits = st.one_of(
    st.integers(max_value=0), st.integers(min_value=1001), st.booleans(), st.floats(), st.none()
)

_fast = settings(max_examples=60, deadline=None)


@_fast
@given(_bad_client_ids)
def test_any_bad_client_id_is_refused(value: Any) -> None:
    assert _field(lambda: JOBS.create(client_id=value, pdf_url=URL)) == "client_id"
    assert _field(lambda: JOBS.list(client_id=value)) == "client_id"
    assert _field(lambda: RESULTS.usage(client_id=value)) == "client_id"


@_fast
@given(_bad_urls)
def test_any_bad_url_is_refused(value: Any) -> None:
    assert _field(lambda: JOBS.create(client_id=A, pdf_url=value)) == "pdf_url"


@_fast
@given(_bad_scores, _bad_tokens, _bad_data)
def test_any_bad_result_is_refused(score: Any, tokens: Any, data: Any) -> None:
    def complete(**kwargs: Any) -> None:
        arguments = {"extracted_data": {}, "confidence_score": 0.5, "tokens_used": 1, **kwargs}
        JOBS.complete(SOME_ID, **arguments)

    assert _field(lambda: complete(confidence_score=score)) == "confidence_score"
    assert _field(lambda: complete(tokens_used=tokens)) == "tokens_used"
    assert _field(lambda: complete(extracted_data=data)) == "extracted_data"


@_fast
@given(_bad_limits)
def test_any_bad_limit_is_refused(value: Any) -> None:
    assert _field(lambda: JOBS.list(client_id=A, limit=value)) == "limit"
    assert _field(lambda: JOBS.claim_batch(value, lease=LEASE)) == "limit"


@_fast
@given(st.text(max_size=60))
def test_any_made_up_cursor_is_refused(value: str) -> None:
    assert _field(lambda: JOBS.list(client_id=A, cursor=value)) == "cursor"


# -- hypothesis: one host, whoever reads the stored URL -------------------------------------------

# Authorities built from the characters that make URL parsers disagree.
_authority_chars = st.sampled_from(
    [*"ab.-:@\\/[]%?#0123456789xX", "%2e", "%40", "xn--", "0x7f", "::1", "ß", "例", "é", "\uff0e"]
)
_authorities = st.lists(_authority_chars, max_size=12).map("".join)


def _readings_agree(url: str) -> None:
    """``url`` names one host, one port and no user for WHATWG and for urllib.parse."""
    whatwg = TypeAdapter(AnyHttpUrl).validate_python(url)
    parts = urlsplit(url)
    assert "\\" not in url
    assert "@" not in parts.netloc
    assert parts.hostname
    assert whatwg.username is None
    assert whatwg.password is None
    default = {"http": 80, "https": 443}[parts.scheme]
    assert whatwg.port == (default if parts.port is None else parts.port)
    assert whatwg.host is not None
    if whatwg.host.startswith("["):
        assert ipaddress.ip_address(whatwg.host[1:-1]) == ipaddress.ip_address(parts.hostname)
    else:
        assert whatwg.host == parts.hostname.encode("idna").decode("ascii")


@_fast
@example("https://evil.com\\@good.com/a.pdf")
@example("https://good.com\\@evil.com/a.pdf")
@example("https:///a.pdf")
@example("https://e%2ecom/a.pdf")
@example("http://a:0/")
@given(st.tuples(st.sampled_from(["http://", "https://", "HTTPS://"]), _authorities, _authorities))
def test_an_accepted_url_has_one_host_for_every_parser(parts: tuple[str, str, str]) -> None:
    url = parts[0] + parts[1] + "/" + parts[2]
    try:
        check_pdf_url(url)
    except ValidationError:
        return
    _readings_agree(url)


@_fast
@given(
    user=st.text(max_size=8).filter(lambda s: not set(s) & set("@/?#")),
    password=st.none() | st.text(max_size=8).filter(lambda s: not set(s) & set("@/?#")),
    host=st.sampled_from(["example.com", "good.com", "[::1]", "1.2.3.4"]),
)
def test_any_userinfo_is_refused(user: str, password: str | None, host: str) -> None:
    # (A "/", "?" or "#" would end the authority: the "@" would be part of the path.)
    userinfo = user if password is None else f"{user}:{password}"
    assert _field(lambda: check_pdf_url(f"https://{userinfo}@{host}/a.pdf")) == "pdf_url"


# -- the batch URL check (one host check per origin) decides like check_pdf_url -------------------


def _decision(check: Callable[[object, str], str], value: object) -> tuple[object, ...]:
    """What a URL check says about ``value``: accepted as given, or the exact refusal."""
    try:
        return ("accepted", check(value, "pdf_url"))
    except ValidationError as exc:
        return ("refused", exc.field, str(exc))


def _origin(value: object) -> str | None:
    """``scheme://authority`` of a URL-looking string (written independently of the checker)."""
    if not isinstance(value, str) or "://" not in value:
        return None
    scheme, _, rest = value.partition("://")
    end = min([len(rest)] + [i for i in (rest.find(c) for c in "/?#") if i >= 0])
    return f"{scheme}://{rest[:end]}"


# Text after an origin: the characters that end an authority, start a user, or are refused.
_tail_chars = st.sampled_from(
    [
        *"ab/?#@:.%[]0x\\ \t\n",
        *("%2e", "%40", "//", "é", "例", "\x00", "\x7f", "\x85", "\u3000", "\udcff", "\uff0e"),
        *(":443", ":99999", "@evil.com"),
    ]
)
_tails = st.lists(_tail_chars, max_size=10).map("".join)
_schemes = st.sampled_from(["http://", "https://", "HTTPS://", "hTtP://", "ftp://", "s3://", ""])
_url_origins = st.tuples(_schemes, _authorities).map("".join) | st.sampled_from(
    [_origin(url) for url in _GOOD_URLS]
)


@settings(max_examples=300, deadline=None)
@example(origins=["https://example.com"], picks=[(0, "/a.pdf"), (0, "@evil.com/a.pdf")])
@example(origins=["https://example.com"], picks=[(0, "/a.pdf"), (0, ":99999/a.pdf")])
@example(origins=["https://example.com"], picks=[(0, "/a"), (0, "/a b"), (0, "/\\x")])
@example(origins=["https://a.b"], picks=[(0, "?x"), (0, "\\@evil.com/"), (0, "#/\udcff")])
@given(
    origins=st.lists(_url_origins, min_size=1, max_size=4),
    picks=st.lists(st.tuples(st.integers(0, 3), _tails), min_size=1, max_size=16),
)
def test_the_batch_url_check_decides_like_the_full_check(
    origins: list[str], picks: list[tuple[int, str]]
) -> None:
    # Many URLs on a few origins through one checker: each decision (and each
    # refusal's text) is check_pdf_url's, whatever the checker saw before.
    checker = PdfUrlChecker()
    for index, tail in picks:
        url = origins[index % len(origins)] + tail
        assert _decision(checker.check, url) == _decision(check_pdf_url, url), url


@pytest.mark.parametrize("value", [*_GOOD_URLS, *(value for value, _ in _BAD_URLS)])
def test_the_batch_url_check_decides_the_listed_cases_like_the_full_check(value: object) -> None:
    # Primed first with URLs of the same origin, so the case meets the short path.
    checker = PdfUrlChecker()
    origin = _origin(value)
    if origin is not None:
        for primer in (origin, origin + "/p.pdf", origin + "?q=1", origin + "#f"):
            _decision(checker.check, primer)
    assert _decision(checker.check, value) == _decision(check_pdf_url, value)
    for tail in ("/x.pdf", "/a b", "/\\", "/\x00", "?@evil.com", "@evil.com/", ":1/"):
        url = (origin or "") + tail
        assert _decision(checker.check, url) == _decision(check_pdf_url, url), url


def test_pdf_urls_refuses_a_bad_entry_on_a_checked_host_like_the_full_check() -> None:
    many = [URL] * 5 + ["https://example.com/a b.pdf"]
    with pytest.raises(ValidationError) as info:
        check_pdf_urls(many)
    with pytest.raises(ValidationError) as full:
        check_pdf_url(many[-1], "pdf_urls[5]")
    assert (info.value.field, str(info.value)) == ("pdf_urls[5]", str(full.value))


# -- hypothesis: a client id that looks like another one is refused -------------------------------

_HIDDEN: Final = ("Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp")
# Default_Ignorable_Code_Point characters outside those categories (letters, marks).
_IGNORABLE: Final = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)


@_fast
@given(
    st.text(
        alphabet=st.characters(categories=_HIDDEN)
        | st.sampled_from("\u00a0\u2000\u3000")
        | st.sampled_from(sorted(_IGNORABLE)),
        min_size=1,
        max_size=3,
    ),
    st.integers(min_value=0, max_value=8),
)
def test_any_hidden_character_in_a_client_id_is_refused(hidden: str, at: int) -> None:
    value = "client-a"[:at] + hidden + "client-a"[at:]
    assert _field(lambda: check_client_id(value)) == "client_id"


@_fast
@given(st.text(min_size=1, max_size=50))
def test_an_accepted_client_id_is_visible_and_normalised(value: str) -> None:
    try:
        check_client_id(value)
    except ValidationError:
        return
    assert value == value.strip()
    assert unicodedata.is_normalized("NFC", value)
    for char in value:
        category = unicodedata.category(char)
        assert category not in _HIDDEN
        assert category != "Zs" or char == " "
        assert char not in _IGNORABLE


# -- against the database: nothing written, good values unchanged ----------------------------------

_db_settings = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def direct(cira_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """One autocommit connection, no pool, for the hypothesis tests.

    A pool's worker threads call `random` when they open a connection (psycopg_pool's
    lifetime jitter); a pool that grows while hypothesis draws data fails the test with
    "Do not use the random module inside strategies".
    """
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        yield conn


@_db_settings
@given(client_id=_bad_client_ids, pdf_url=_bad_urls)
def test_bad_input_writes_nothing(
    direct: psycopg.Connection[Any], client_id: Any, pdf_url: Any
) -> None:
    jobs = JobRepository(direct)
    with pytest.raises(ValidationError):
        jobs.create(client_id=client_id, pdf_url=URL)
    with pytest.raises(ValidationError):
        jobs.create(client_id=A, pdf_url=pdf_url)
    with pytest.raises(ValidationError):
        jobs.create_many(client_id=A, pdf_urls=[URL, pdf_url])
    assert direct.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
    st.text(max_size=20).filter(lambda s: "\x00" not in s),
)
_json = st.recursive(
    _json_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=8).filter(lambda s: "\x00" not in s), children, max_size=4
        )
    ),
    max_leaves=25,
)
_good_client_ids = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cf", "Co", "Cn", "Cs", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=50,
).filter(lambda s: unicodedata.is_normalized("NFC", s) and not _IGNORABLE & set(s))


@_db_settings
@given(
    data=st.dictionaries(st.text(max_size=8).filter(lambda s: "\x00" not in s), _json, max_size=6),
    score=st.decimals(min_value=0, max_value=1, places=2),
    tokens=st.integers(min_value=0, max_value=2**31 - 1),
    client_id=_good_client_ids,
)
def test_good_values_round_trip_unchanged(
    direct: psycopg.Connection[Any],
    data: dict[str, Any],
    score: Decimal,
    tokens: int,
    client_id: str,
) -> None:
    jobs = JobRepository(direct)
    job = jobs.create(client_id=client_id, pdf_url=URL)
    assert jobs.get(job.id, client_id=client_id).client_id == client_id
    claimed = jobs.claim_next(lease=LEASE, client_id=client_id)
    assert claimed is not None
    result = jobs.complete(
        claimed.id, extracted_data=data, confidence_score=score, tokens_used=tokens
    )
    assert result.extracted_data == data
    assert result.confidence_score == score
    assert result.tokens_used == tokens
    stored = JobResultRepository(direct).get_for_job(job.id, client_id=client_id)
    assert stored == result


# -- hypothesis: any text at all, surrogates included ---------------------------------------------

# Every code point, surrogates (category Cs) included, and half of the time a surrogate for sure:
# st.characters() leaves them out by default, and drawn from all code points they are rare.
_any_char = st.characters(exclude_categories=()) | st.characters(categories=["Cs"])
_any_text = st.text(_any_char, max_size=20)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refusal(call: Callable[[], object]) -> str | None:
    """None if ``call`` succeeded, else its `ValidationError`'s field; nothing else may leak."""
    try:
        call()
    except ValidationError as exc:
        return exc.field
    return None


@_fast
@given(_any_text)
def test_any_text_is_accepted_or_refused_with_a_validation_error(value: str) -> None:
    checks: list[tuple[Callable[[], object], str]] = [
        (lambda: check_client_id(value), "client_id"),
        (lambda: check_pdf_url("https://example.com/" + value), "pdf_url"),
        (lambda: check_error_message(value), "error_message"),
        (lambda: check_extracted_data({value: value}), "extracted_data"),
        (lambda: check_extracted_data({"k": [value]}), "extracted_data"),
    ]
    for check, field in checks:
        refused = _refusal(check)
        assert refused in (None, field)
        if not _encodable(value):
            assert refused == field, "text UTF-8 cannot encode was accepted"


def _state(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, client_id, status::text, pdf_url, error_message, attempts, updated_at,"
        " (SELECT count(*) FROM job_results) FROM jobs ORDER BY id"
    ).fetchall()


@_db_settings
@given(client_id=_any_text, url_tail=_any_text, message=_any_text, key=_any_text, text=_any_text)
def test_any_text_is_stored_unchanged_or_refused_without_writing(
    direct: psycopg.Connection[Any],
    client_id: str,
    url_tail: str,
    message: str,
    key: str,
    text: str,
) -> None:
    jobs, results = JobRepository(direct), JobResultRepository(direct)
    url = "https://example.com/" + url_tail

    before = _state(direct)
    made: list[Job] = []
    refused = _refusal(lambda: made.append(jobs.create(client_id=client_id, pdf_url=url)))
    if refused is None:
        assert _encodable(client_id)
        assert _encodable(url)
        assert jobs.get(made[0].id, client_id=client_id).pdf_url == url
    else:
        assert refused in {"client_id", "pdf_url"}
        assert _state(direct) == before

    job_id = jobs.create(client_id=A, pdf_url=URL).id
    claimed = jobs.claim_next(lease=LEASE, client_id=A)
    assert claimed is not None
    assert claimed.id == job_id
    attempt = claimed.attempts
    before = _state(direct)
    failed: list[Job] = []
    refused = _refusal(
        lambda: failed.append(jobs.fail(job_id, error_message=message, attempt=attempt))
    )
    if refused is None:
        assert _encodable(message)
        assert failed[0].error_message == message
        jobs.retry(job_id)
        assert jobs.claim_next(lease=LEASE, client_id=A) is not None
    else:
        assert refused == "error_message"
        assert _state(direct) == before

    data = {key: text, "list": [text, {key: None}]}
    before = _state(direct)
    refused = _refusal(
        lambda: jobs.complete(job_id, extracted_data=data, confidence_score=1, tokens_used=1)
    )
    if refused is None:
        assert _encodable(key)
        assert _encodable(text)
        assert results.get_for_job(job_id, client_id=A).extracted_data == data
    else:
        assert refused == "extracted_data"
        assert _state(direct) == before


def test_nesting_is_limited_the_same_on_every_python() -> None:
    def dicts(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(depth - 1):
            value = {"x": value}
        return value

    def lists(depth: int) -> dict[str, Any]:
        inner: list[Any] = []
        for _ in range(depth - 2):
            inner = [inner]
        return {"x": inner}

    for build in (dicts, lists):
        assert check_extracted_data(build(EXTRACTED_DATA_MAX_DEPTH)).startswith('{"x":')
        too_deep = build(EXTRACTED_DATA_MAX_DEPTH + 1)
        assert _field(partial(check_extracted_data, too_deep)) == "extracted_data"


# -- s3:// object URIs in pdf_url ------------------------------------------------------------

_BUCKET_CHAR = st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789.-")
_ALNUM = st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789")


def _s3_bucket_ok(bucket: str) -> bool:
    """S3's general purpose bucket naming rules, written out plainly (the test's oracle)."""
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return (
        3 <= len(bucket) <= 63
        and set(bucket) <= allowed
        and bucket[0].isalnum()
        and bucket[-1].isalnum()
        and ".." not in bucket
        and not _looks_like_ipv4(bucket)
        and not bucket.startswith(("xn--", "sthree-", "amzn-s3-demo-"))
        and not bucket.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"))
    )


def _looks_like_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and 1 <= len(p) <= 3 for p in parts)


@st.composite
def _buckets(draw: st.DrawFn) -> str:
    middle = draw(st.text(_BUCKET_CHAR, min_size=1, max_size=61))
    return draw(_ALNUM) + middle + draw(_ALNUM)


_KEYS = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=200).filter(
    lambda key: len(key.encode("utf-8")) <= 1024
)


@given(bucket=st.one_of(_buckets(), st.text(max_size=70)), key=_KEYS)
@settings(max_examples=400)
def test_s3_uris_follow_the_bucket_naming_rules(bucket: str, key: str) -> None:
    uri = f"s3://{bucket}/{key}"
    if "/" in bucket or len(uri) > 2048:
        return  # a slash ends the bucket: another bucket and key
    if _s3_bucket_ok(bucket):
        assert check_pdf_url(uri) == uri  # stored exactly as given
    else:
        with pytest.raises(ValidationError, match="bucket") as info:
            check_pdf_url(uri)
        assert info.value.field == "pdf_url"


@given(key=st.text(min_size=1, max_size=1100))
@settings(max_examples=300)
def test_s3_keys_are_non_empty_utf8_without_control_characters(key: str) -> None:
    uri = f"s3://invoices-2025/{key}"
    size = len(key.encode("utf-8", "surrogatepass"))
    controls = any(unicodedata.category(c) == "Cc" for c in key)
    surrogates = any(unicodedata.category(c) == "Cs" for c in key)
    if size <= 1024 and not controls and not surrogates:
        assert check_pdf_url(uri) == uri
    else:
        with pytest.raises(ValidationError):
            check_pdf_url(uri)


@pytest.mark.parametrize(
    "value",
    [
        "s3://invoices-2025/acme/2025/06/inv-001.pdf",
        "s3://my.bucket.name/a",
        "s3://abc/a b (copy).pdf",  # S3 keys may hold spaces and brackets
        "s3://abc/dir/",
        "s3://abc//leading-slash",
        "s3://abc/é/文書.pdf",
        "s3://0ab/x",
        "s3://abc/" + "k" * 1024,
    ],
)
def test_good_s3_uris(value: str) -> None:
    assert check_pdf_url(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("s3://ab/x.pdf", "3 to 63"),
        ("s3://" + "a" * 64 + "/x.pdf", "3 to 63"),
        ("s3://My-Bucket/x.pdf", "lowercase"),
        ("s3://my_bucket/x.pdf", "lowercase"),
        ("s3://-bucket/x.pdf", "start and end"),
        ("s3://bucket-/x.pdf", "start and end"),
        ("s3://bucket./x.pdf", "start and end"),
        ("s3://my..bucket/x.pdf", "two dots"),
        ("s3://192.168.5.4/x.pdf", "IP address"),
        ("s3://xn--bucket/x.pdf", "reserves"),
        ("s3://sthree-bucket/x.pdf", "reserves"),
        ("s3://amzn-s3-demo-bucket/x.pdf", "reserves"),
        ("s3://bucket-s3alias/x.pdf", "reserves"),
        ("s3://bucket--ol-s3/x.pdf", "reserves"),
        ("s3://bucket.mrap/x.pdf", "reserves"),
        ("s3://bucket--x-s3/x.pdf", "reserves"),
        ("s3://bucket--table-s3/x.pdf", "reserves"),
        ("s3://bucket", "key"),
        ("s3://bucket/", "key"),
        ("s3:///x.pdf", "3 to 63"),
        ("s3://abc/" + "é" * 513, "1024 bytes"),
        ("s3://abc/a\nb.pdf", "control"),
        ("s3://abc/a\x7fb.pdf", "control"),
        ("s3://abc/a\x00b.pdf", "control"),
        ("S3://abc/x.pdf", "s3://"),
        ("s3:/abc/x.pdf", "s3://"),
    ],
)
def test_bad_s3_uris(value: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as info:
        check_pdf_url(value)
    assert info.value.field == "pdf_url"


def test_an_s3_uri_is_stored_and_claimed_like_a_url(cira_db: Database) -> None:
    jobs = JobRepository(cira_db)
    made = jobs.create(client_id=A, pdf_url="s3://invoices-2025/acme/inv-001.pdf")
    many = jobs.create_many(client_id=A, pdf_urls=["s3://invoices-2025/a.pdf", URL])
    assert made.pdf_url == "s3://invoices-2025/acme/inv-001.pdf"
    assert [job.pdf_url for job in many] == ["s3://invoices-2025/a.pdf", URL]


def test_the_url_parser_is_built_on_first_use_not_at_import() -> None:
    # A cold start (import, settings, first call) checks no URL: pydantic's URL
    # types and their adapter wait for the first check_pdf_url.
    script = (
        "import sys\n"
        "from cira_db._validation import check_pdf_url\n"
        "from cira_db.errors import ValidationError\n"
        "assert 'pydantic.networks' not in sys.modules\n"
        "assert check_pdf_url('https://example.com/a.pdf') == 'https://example.com/a.pdf'\n"
        "assert 'pydantic.networks' in sys.modules\n"
        "try:\n"
        "    check_pdf_url('https://exa%6dple.com/a.pdf')\n"
        "except ValidationError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pdf_url" in done.stdout


class _LooksLikeAnyId(str):
    """A str subclass equal to every string: it must never ride on an accepted id."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("client-a")


@given(st.text(max_size=60))
def test_client_ids_get_the_same_answer_the_second_time(text: str) -> None:
    def answer() -> str:
        try:
            return "ok " + check_client_id(text)
        except ValidationError as exc:
            return f"refused {exc.field}: {exc}"

    first = answer()
    assert answer() == first


def test_an_accepted_id_does_not_vouch_for_a_str_subclass_equal_to_it() -> None:
    assert check_client_id("client-a") == "client-a"
    sneaky = _LooksLikeAnyId("client-a\x00")
    with pytest.raises(ValidationError, match="control characters"):
        check_client_id(sneaky)
    assert check_client_id(_LooksLikeAnyId("client-b")) == "client-b"
    with pytest.raises(ValidationError, match="control characters"):
        check_client_id(sneaky)  # still refused after a subclass was accepted


def test_a_bounded_url_checker_keeps_at_most_its_limit_and_still_decides_alike() -> None:
    checker = PdfUrlChecker(limit=2)
    hosts = [f"https://h{i}.example.com" for i in range(5)]
    for host in hosts * 2:
        for url in (host + "/a.pdf", host + "/a b.pdf", host + "@evil.com/"):
            assert _decision(checker.check, url) == _decision(check_pdf_url, url), url
    assert len(checker._origins) <= 2
