"""cira_db._repositories._jsonb: documents read as the jsonb column gives them back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cira_db import Database
from cira_db._repositories._jsonb import stored_document, stored_json
from cira_db._validation import check_extracted_data
from cira_db.errors import ValidationError


def test_numbers_and_key_order_follow_jsonb() -> None:
    text = '{"bb": 1e+16, "a": -0.0, "ccc": {"zz": 0.5, "y": 100.0}, "d": [1.5e-07, 2]}'
    value = stored_json(text)
    assert list(value) == ["a", "d", "bb", "ccc"]
    assert list(value["ccc"]) == ["y", "zz"]
    assert value["bb"] == 10**16
    assert type(value["bb"]) is int
    assert str(value["a"]) == "0.0"
    assert value["ccc"]["y"] == 100.0
    assert type(value["ccc"]["y"]) is float
    assert value["d"] == [1.5e-07, 2]


_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8).filter(lambda s: "\x00" not in s),
)
_json_docs = st.dictionaries(
    st.text(max_size=6).filter(lambda s: "\x00" not in s),
    st.recursive(
        _json_leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=6).filter(lambda s: "\x00" not in s), children)
        ),
        max_leaves=20,
    ),
    max_size=6,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(docs=st.lists(_json_docs, min_size=1, max_size=10))
def test_the_results_documents_read_as_jsonb_gives_them_back(
    cira_db: Database, docs: list[dict[str, Any]]
) -> None:
    texts = [check_extracted_data(doc) for doc in docs]
    with cira_db.connection() as conn:
        rows = conn.execute(
            "SELECT t::jsonb FROM unnest(%s::text[]) WITH ORDINALITY AS u (t, n) ORDER BY n",
            (texts,),
        ).fetchall()
    assert [json.dumps(stored_json(text)) for text in texts] == [json.dumps(r[0]) for r in rows]


@settings(max_examples=200, deadline=None)
@given(doc=_json_docs)
def test_stored_document_is_the_check_and_the_stored_reading_in_one(doc: dict[str, Any]) -> None:
    text, document = stored_document(doc)
    assert text == check_extracted_data(doc)
    assert json.dumps(document) == json.dumps(stored_json(text))  # key order too


def test_stored_document_accepts_floats_that_jsonb_gives_back_as_other_ints() -> None:
    value = {"f": 1.2345678901234567e30, "g": 1e16}
    text, document = stored_document(value)
    assert document == {"f": 1234567890123456700000000000000, "g": 10**16}
    assert document != value  # jsonb's integer is not the float: the plain read-back decided
    assert text == check_extracted_data(value)


@pytest.mark.parametrize(
    "value",
    [[], {1: "x"}, {"t": (1, 2)}, {"s": {1}}, {"a": "\x00"}, {"a": "\ud800"}, {"\udcff": 1}],
)
def test_stored_document_refuses_as_check_extracted_data(value: object) -> None:
    with pytest.raises(ValidationError) as plain:
        check_extracted_data(value)
    with pytest.raises(ValidationError) as stored:
        stored_document(value)
    assert (stored.value.field, str(stored.value)) == (plain.value.field, str(plain.value))
