"""cira_db.aws: client ids from API Gateway events, and the migration Lambda handler."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cira_db.aws import client_id_from_event, migrate_handler
from cira_db.errors import ValidationError
from cira_db.migrations import load_migrations

PACKAGED = load_migrations()

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
def test_any_malformed_event_gives_validation_error_or_a_valid_id(junk: Any) -> None:
    e: dict[str, Any] = {"requestContext": {"identity": {"apiKeyId": junk}, "authorizer": junk}}
    try:
        result = client_id_from_event(e)
    except ValidationError as exc:
        field = exc.field
        assert field == "event"
    else:
        assert 1 <= len(result) <= 50
        assert result == result.strip()


def test_too_long_client_id_is_refused() -> None:
    e = {"requestContext": {"authorizer": {"client_id": "x" * 51}}}
    with pytest.raises(ValidationError, match=r"1\.\.50 characters"):
        client_id_from_event(e)


def test_migrate_handler_applies_and_reports(
    cira_db_empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_empty_url)
    context = SimpleNamespace(function_name="DbMigrateFunction")
    dry = migrate_handler({"dry_run": True}, context)
    assert dry["migrations"] == [m.filename for m in PACKAGED]
    assert all(s["applied_at"] is None for s in dry["status"])
    result = migrate_handler(None, context)
    assert result["migrations"] == [m.filename for m in PACKAGED]
    assert all(s["applied_at"] and s["checksum_matches"] for s in result["status"])
    with psycopg.connect(cira_db_empty_url) as conn:
        who = conn.execute("SELECT DISTINCT applied_by FROM schema_migrations").fetchall()
    assert who == [("lambda:DbMigrateFunction",)]
    assert migrate_handler({"action": "status"}, context)["migrations"] == []
    back = migrate_handler({"action": "rollback", "to": 1}, context)
    assert back["migrations"] == [m.filename for m in reversed(PACKAGED[1:])]


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"action": "drop"}, "action"), ({"action": "rollback"}, "to"), ({"to": -1}, "to")],
)
def test_migrate_handler_rejects_bad_events(
    payload: dict[str, Any], field: str, cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_url)
    with pytest.raises(ValidationError) as info:
        migrate_handler(payload, None)
    assert info.value.field == field
