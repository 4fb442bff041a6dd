"""cira_db.aws: client ids from API Gateway events, and the migration Lambda handler."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from cira_db._validation import check_client_id
from cira_db.aws import _duration_ms, _MigrateEvent, client_id_from_event, migrate_handler
from cira_db.errors import MigrationError, ValidationError
from cira_db.migrations import load_migrations

EVENTS = Path(__file__).parent / "fixtures" / "events"


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return loaded


def test_rest_api_key_id_is_the_client_and_the_key_value_never_is() -> None:
    e = event("rest_api_key")
    assert client_id_from_event(e) == "q1w2e3r4t5"
    assert client_id_from_event(e) != e["requestContext"]["identity"]["apiKey"]


def test_rest_lambda_authorizer_context_wins_over_the_api_key() -> None:
    assert client_id_from_event(event("rest_lambda_authorizer")) == "client-a"


def test_http_api_v2_lambda_authorizer() -> None:
    assert client_id_from_event(event("http_v2_lambda_authorizer")) == "client-b"


def test_authorizer_key_can_be_renamed() -> None:
    e = event("http_v2_lambda_authorizer")
    assert client_id_from_event(e, authorizer_key="tenantTier") == "gold"


@pytest.mark.parametrize("name", ["rest_no_identity", "http_v2_jwt"])
def test_event_without_a_client_is_a_validation_error(name: str) -> None:
    with pytest.raises(ValidationError, match="no client id") as info:
        client_id_from_event(event(name))
    assert info.value.field == "event"


def test_api_key_value_alone_is_not_accepted() -> None:
    e = event("rest_api_key")
    del e["requestContext"]["identity"]["apiKeyId"]
    with pytest.raises(ValidationError, match="no client id") as info:
        client_id_from_event(e)
    assert "AbCdEf" not in str(info.value)


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.text()), st.booleans()))
def test_any_malformed_event_gives_validation_error_or_the_exact_id(junk: Any) -> None:
    e: dict[str, Any] = {"requestContext": {"identity": {"apiKeyId": junk}, "authorizer": junk}}
    try:
        result = client_id_from_event(e)
    except ValidationError as exc:
        field = exc.field
        assert field in {"event", "requestContext.identity.apiKeyId"}
    else:
        assert result == junk  # returned as sent, never trimmed or converted
        assert check_client_id(result) == result


@given(st.one_of(st.text(), st.integers(), st.none(), st.booleans(), st.floats()))
def test_the_event_rule_is_exactly_the_library_rule(value: Any) -> None:
    e = {"requestContext": {"authorizer": {"lambda": {"client_id": value}}}}
    try:
        expected: str | None = check_client_id(value)
    except ValidationError:
        expected = None
    try:
        got: str | None = client_id_from_event(e)
    except ValidationError:
        got = None
    assert got == expected


@pytest.mark.parametrize(
    "value", ["client-a ", " client-a", "x" * 51, "", "   ", "a\x00b", "a\x85b", 7, True]
)
def test_bad_client_ids_are_refused_not_repaired(value: Any) -> None:
    e = {"requestContext": {"authorizer": {"claims": {"client_id": value}}}}
    with pytest.raises(ValidationError):
        check_client_id(value)
    with pytest.raises(ValidationError) as info:
        client_id_from_event(e)
    assert info.value.field == "requestContext.authorizer.claims.client_id"


def test_rest_cognito_user_pool_claims_with_a_configured_key() -> None:
    e = event("rest_cognito")
    assert client_id_from_event(e, claim_key="custom:client_id") == "client-c"
    assert client_id_from_event(e, claim_key="cognito:username") == "alice"


def test_http_api_jwt_authorizer_claims() -> None:
    assert client_id_from_event(event("http_v2_jwt_cognito")) == "client-d"
    assert client_id_from_event(event("http_v2_jwt_cognito"), claim_key="username") == "alice"


def test_rest_cognito_without_the_claim_is_missing() -> None:
    with pytest.raises(ValidationError, match="no client id") as info:
        client_id_from_event(event("rest_cognito"))
    assert info.value.field == "event"


@pytest.mark.parametrize(
    "cut",
    [
        ("requestContext",),
        ("requestContext", "authorizer"),
        ("requestContext", "authorizer", "jwt"),
        ("requestContext", "authorizer", "jwt", "claims"),
        ("requestContext", "authorizer", "jwt", "claims", "client_id"),
    ],
)
@pytest.mark.parametrize("how", ["delete", "null"])
def test_each_missing_part_of_a_jwt_event(cut: tuple[str, ...], how: str) -> None:
    e = event("http_v2_jwt_cognito")
    parent = e
    for key in cut[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[cut[-1]]
    else:
        parent[cut[-1]] = None
    with pytest.raises(ValidationError, match="no client id"):
        client_id_from_event(e)


@pytest.mark.parametrize(
    "cut",
    [("authorizer",), ("authorizer", "claims"), ("authorizer", "claims", "custom:client_id")],
)
def test_each_missing_part_of_a_cognito_event(cut: tuple[str, ...]) -> None:
    e = event("rest_cognito")
    parent = e["requestContext"]
    for key in cut[:-1]:
        parent = parent[key]
    del parent[cut[-1]]
    with pytest.raises(ValidationError, match="no client id"):
        client_id_from_event(e, claim_key="custom:client_id")


class PowertoolsLikeEvent(Mapping[str, Any]):
    """The shape of Powertools' event data classes: a read-only mapping with ``raw_event``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def raw_event(self) -> dict[str, Any]:
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_powertools_event_objects_and_plain_mappings() -> None:
    assert client_id_from_event(PowertoolsLikeEvent(event("http_v2_jwt_cognito"))) == "client-d"
    raw_only = SimpleNamespace(raw_event=event("rest_api_key"))
    assert client_id_from_event(raw_only) == "q1w2e3r4t5"
    assert client_id_from_event(MappingProxyType(event("rest_lambda_authorizer"))) == "client-a"


@pytest.mark.parametrize("junk", [None, [], "requestContext", 3, SimpleNamespace(raw_event=[])])
def test_a_non_event_is_a_validation_error(junk: Any) -> None:
    with pytest.raises(ValidationError) as info:
        client_id_from_event(junk)
    assert info.value.field == "event"


class FakeContext:
    """A Lambda context: a function name and a clock that returns the given remaining times."""

    function_name = "DbMigrateFunction"

    def __init__(self, *remaining_ms: int) -> None:
        self._remaining = list(remaining_ms)

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining.pop(0) if len(self._remaining) > 1 else self._remaining[0]


ALL = [m.filename for m in load_migrations()]


def _tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def _dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


def test_migrate_handler_applies_and_reports(
    cira_db_empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_empty_url)
    context = FakeContext(600_000)
    dry = migrate_handler({"dry_run": True}, context)
    assert dry["migrations"] == ALL
    assert dry["pending"] == ALL
    assert all(s["applied_at"] is None for s in dry["status"])
    result = migrate_handler(None, context)
    assert result["migrations"] == ALL
    assert result["pending"] == []
    assert result["database"] == _dbname(cira_db_empty_url)
    assert all(s["applied_at"] and s["checksum_matches"] for s in result["status"])
    with psycopg.connect(cira_db_empty_url) as conn:
        who = conn.execute("SELECT DISTINCT applied_by FROM schema_migrations").fetchall()
    assert who == [("lambda:DbMigrateFunction",)]
    assert migrate_handler({"action": "status"}, context)["migrations"] == []


@pytest.mark.parametrize(
    ("allow", "database", "field", "reason"),
    [
        (None, "same", "action", "CIRA_DB_ALLOW_ROLLBACK=1"),
        ("true", "same", "action", "CIRA_DB_ALLOW_ROLLBACK=1"),
        ("1", None, "database", "must name the database"),
        ("1", "other_db", "database", "is connected to"),
    ],
)
def test_rollback_is_refused_without_the_guard_and_changes_nothing(
    allow: str | None,
    database: str | None,
    field: str,
    reason: str,
    cira_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_url)
    if allow is not None:
        monkeypatch.setenv("CIRA_DB_ALLOW_ROLLBACK", allow)
    before = _tables(cira_db_url)
    payload: dict[str, Any] = {"action": "rollback", "to": 0}
    if database is not None:
        payload["database"] = _dbname(cira_db_url) if database == "same" else database
    with pytest.raises(ValidationError, match=reason) as info:
        migrate_handler(payload, FakeContext(600_000))
    assert info.value.field == field
    assert "nothing was changed" in str(info.value)
    assert _tables(cira_db_url) == before
    assert "jobs" in before


def test_rollback_runs_with_the_guard_and_the_named_database(
    cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_url)
    monkeypatch.setenv("CIRA_DB_ALLOW_ROLLBACK", "1")
    event = {"action": "rollback", "to": 1, "database": _dbname(cira_db_url)}
    back = migrate_handler(event, FakeContext(600_000))
    assert back["migrations"] == list(reversed(ALL[1:]))
    assert back["pending"] == ALL[1:]


def test_a_wrong_database_is_refused_for_apply_too(
    cira_db_empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_empty_url)
    with pytest.raises(ValidationError, match="is connected to"):
        migrate_handler({"database": "production"}, FakeContext(600_000))
    assert _tables(cira_db_empty_url) == []


def test_no_migration_starts_when_too_little_time_is_left(
    cira_db_empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_empty_url)
    with pytest.raises(MigrationError, match="too little time") as info:
        migrate_handler({}, FakeContext(4_000))
    assert "ran none" in str(info.value)
    assert str(ALL) in str(info.value)
    assert _tables(cira_db_empty_url) == []


def test_the_report_says_what_ran_and_what_is_pending_when_time_runs_out(
    cira_db_empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_empty_url)
    with pytest.raises(MigrationError, match="too little time") as info:
        migrate_handler({}, FakeContext(600_000, 1_000))
    message = str(info.value)
    assert "ran ['0001_initial_schema.sql']" in message
    assert f"still pending {ALL[1:]}" in message
    with psycopg.connect(cira_db_empty_url) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert versions == [(1,)]


def test_lock_timeout_comes_from_the_remaining_time(
    cira_db_empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_empty_url)
    migrate_handler({"to": 1}, FakeContext(600_000))
    with psycopg.connect(cira_db_empty_url) as blocker:
        blocker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")  # held until the block ends
        started = time.monotonic()
        with pytest.raises(MigrationError, match="lock timeout") as info:
            migrate_handler({}, FakeContext(6_000))
        elapsed = time.monotonic() - started
    # 6 s left, 3 s kept back: the lock wait ends well before the configured 10 s.
    assert elapsed < 4.5
    assert "ran none" in str(info.value)
    assert f"still pending {ALL[1:]}" in str(info.value)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"action": "drop"}, "action"),
        ({"action": ["apply"]}, "action"),
        ({"action": None}, "action"),
        ({"action": "rollback"}, "to"),
        ({"to": -1}, "to"),
        ({"to": "2"}, "to"),
        ({"to": True}, "to"),
        ({"to": 1.0}, "to"),
        ({"dry_run": "false"}, "dry_run"),
        ({"database": 3}, "database"),
        ({"tO": 1}, "event"),
        (["apply"], "event"),
        ("apply", "event"),
        (7, "event"),
    ],
)
def test_migrate_handler_rejects_bad_events(
    payload: Any, field: str, cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_url)
    with pytest.raises(ValidationError) as info:
        migrate_handler(payload, None)
    assert info.value.field == field


@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.text(),
        st.lists(st.integers()),
        st.dictionaries(
            st.sampled_from(["action", "to", "dry_run", "database", "x"]),
            st.one_of(st.none(), st.integers(), st.text(), st.booleans(), st.lists(st.none())),
        ),
    )
)
def test_any_event_is_parsed_or_refused_with_validation_error(payload: Any) -> None:
    try:
        request = _MigrateEvent.parse(payload)
    except ValidationError:
        return
    assert request.action in {"apply", "status", "rollback"}
    assert request.to is None or (type(request.to) is int and request.to >= 0)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("10s", 10_000), ("15min", 900_000), ("500", 500), ("1.5s", 1_500), ("2h", 7_200_000)],
)
def test_postgres_durations_are_read_in_milliseconds(text: str, ms: int) -> None:
    assert _duration_ms(text) == ms


def test_an_unreadable_duration_is_none() -> None:
    assert _duration_ms("soon") is None
