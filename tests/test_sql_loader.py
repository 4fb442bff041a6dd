"""The named-query loader (`cira_db._sql`) and the packaged query files."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cira_db._migrations
from cira_db._sql import Query, load_queries, parse_queries, query

SQL_PACKAGE = resources.files("cira_db.sql")
QUERY_FILES = sorted(
    entry.name for entry in SQL_PACKAGE.iterdir() if entry.is_file() and entry.name.endswith(".sql")
)

TWO_QUERIES = """\
-- A file comment before the first header is ignored.

-- name: get_job
-- Fetch one job of one client.
-- Returns no row for another client's job.
SELECT id, status
FROM jobs
-- an inline comment is part of the SQL, not of the description
WHERE id = %(job_id)s AND client_id = %(client_id)s;

-- name: count_jobs
SELECT count(*) FROM jobs
"""


# -- parse_queries -------------------------------------------------------------------


def test_headers_split_the_text_into_named_queries() -> None:
    queries = parse_queries(TWO_QUERIES, source="example.sql")
    assert list(queries) == ["get_job", "count_jobs"]
    assert queries["count_jobs"].sql == "SELECT count(*) FROM jobs"
    assert queries["get_job"].name == "get_job"


def test_description_is_the_comment_block_after_the_header() -> None:
    queries = parse_queries(TWO_QUERIES, source="example.sql")
    assert queries["get_job"].description == (
        "Fetch one job of one client. Returns no row for another client's job."
    )
    assert queries["count_jobs"].description == ""


def test_sql_keeps_inner_comments_and_loses_the_trailing_semicolon() -> None:
    sql = parse_queries(TWO_QUERIES, source="example.sql")["get_job"].sql
    assert sql.startswith("SELECT id, status")
    assert "-- an inline comment" in sql
    assert sql.endswith("client_id = %(client_id)s")
    assert "Fetch one job" not in sql


def test_named_parameters_are_detected() -> None:
    queries = parse_queries(TWO_QUERIES, source="example.sql")
    assert queries["get_job"].params == frozenset({"job_id", "client_id"})
    assert queries["count_jobs"].params == frozenset()


def test_a_parameter_used_twice_is_one_parameter() -> None:
    text = "-- name: q\nSELECT %(a)s, %(a)s, %(b_2)s"
    assert parse_queries(text, source="x.sql")["q"].params == frozenset({"a", "b_2"})


def test_duplicate_names_are_rejected() -> None:
    text = "-- name: q\nSELECT 1\n\n-- name: q\nSELECT 2\n"
    with pytest.raises(ValueError, match=r"dup\.sql: query q is defined twice"):
        parse_queries(text, source="dup.sql")


def test_empty_query_is_rejected() -> None:
    text = "-- name: first\n-- only a description\n;\n-- name: second\nSELECT 1\n"
    with pytest.raises(ValueError, match=r"empty\.sql: query first is empty"):
        parse_queries(text, source="empty.sql")


@pytest.mark.parametrize("text", ["", "SELECT 1", "-- just a comment\nSELECT 1"])
def test_text_without_headers_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"none\.sql: no '-- name: \.\.\.' headers found"):
        parse_queries(text, source="none.sql")


@pytest.mark.parametrize("text", ["-- name:\nSELECT 1", "-- name: Bad\nSELECT 1"])
def test_text_with_only_a_malformed_header_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"^none\.sql: "):
        parse_queries(text, source="none.sql")


@pytest.mark.parametrize("bad_header", ["-- name:", "-- name: Bad_Name", "-- name: two words"])
def test_malformed_header_after_a_valid_one_is_rejected(bad_header: str) -> None:
    text = f"-- name: good\nSELECT 1\n\n{bad_header}\nSELECT 2\n"
    with pytest.raises(ValueError, match=r"bad\.sql"):
        parse_queries(text, source="bad.sql")


@settings(max_examples=50, deadline=None)
@given(
    names=st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), unique=True, min_size=1),
    data=st.data(),
)
def test_rendered_queries_parse_back(names: list[str], data: st.DataObject) -> None:
    blocks = []
    expected: dict[str, frozenset[str]] = {}
    for name in names:
        params = data.draw(st.sets(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)))
        columns = ", ".join(f"%({p})s" for p in sorted(params)) or "1"
        blocks.append(f"-- name: {name}\n-- About {name}.\nSELECT {columns};\n")
        expected[name] = frozenset(params)
    queries = parse_queries("\n".join(blocks), source="gen.sql")
    assert {name: q.params for name, q in queries.items()} == expected
    assert all(q.description == f"About {q.name}." for q in queries.values())


# -- Query.bind -------------------------------------------------------------------------


@pytest.fixture
def get_job() -> Query:
    return parse_queries(TWO_QUERIES, source="example.sql")["get_job"]


def test_bind_accepts_exactly_the_parameters(get_job: Query) -> None:
    values = {"job_id": 1, "client_id": "client-a"}
    bound = get_job.bind(values)
    assert bound == values
    assert bound is not values


def test_bind_rejects_missing_parameters(get_job: Query) -> None:
    with pytest.raises(TypeError, match=r"get_job: missing \['job_id'\], unexpected \[\]"):
        get_job.bind({"client_id": "client-a"})


def test_bind_rejects_extra_parameters(get_job: Query) -> None:
    with pytest.raises(TypeError, match=r"missing \[\], unexpected \['status'\]"):
        get_job.bind({"job_id": 1, "client_id": "client-a", "status": "queued"})


def test_bind_of_a_query_without_parameters() -> None:
    q = parse_queries(TWO_QUERIES, source="example.sql")["count_jobs"]
    assert q.bind({}) == {}
    with pytest.raises(TypeError):
        q.bind({"x": 1})


@given(st.sets(st.sampled_from(["job_id", "client_id", "status", "x"])))
def test_bind_accepts_any_mapping_with_exactly_the_names(names: set[str]) -> None:
    # Any Mapping, not only a dict: the check compares its keys() with the names.
    get_job = parse_queries(TWO_QUERIES, source="example.sql")["get_job"]
    values = MappingProxyType(dict.fromkeys(names, 1))
    if names == {"job_id", "client_id"}:
        bound = get_job.bind(values)
        assert bound == dict(values)
        assert type(bound) is dict
    else:
        with pytest.raises(TypeError, match="get_job: missing"):
            get_job.bind(values)


# -- the packaged files ----------------------------------------------------------------------


def test_query_files_are_found() -> None:
    assert "migrator.sql" in QUERY_FILES


@pytest.mark.parametrize("filename", QUERY_FILES)
def test_every_packaged_query_file_parses(filename: str) -> None:
    queries = load_queries(filename)
    assert queries
    for name, q in queries.items():
        assert q.name == name
        assert q.sql.strip()
        assert q.description, f"{filename}: query {name} has no description"
        # Only named %(name)s (or %(name)b) placeholders: no positional %s anywhere.
        unnamed = re.sub(r"%\([a-z_][a-z0-9_]*\)[sb]|%%", "", q.sql)
        assert not re.search(r"%[sbt]", unnamed), f"{filename}: {name} has a positional %s"
        # One form per name: psycopg refuses a name bound as both text and binary.
        forms = dict(re.findall(r"%\(([a-z_][a-z0-9_]*)\)([sb])", q.sql))
        for param, form in re.findall(r"%\(([a-z_][a-z0-9_]*)\)([sb])", q.sql):
            assert forms[param] == form, f"{filename}: {name} binds {param} as %s and %b"


def test_query_lookup_of_an_unknown_name_says_where() -> None:
    with pytest.raises(KeyError, match=r"no query named 'no_such_query' in migrator\.sql"):
        query("migrator.sql", "no_such_query")


def _migrations_source() -> str:
    """The source of every module of the migrations package (cira_db._migrations)."""
    folder = Path(cira_db._migrations.__file__).parent
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.py")))


def _names_used_by_migrations_module() -> set[str]:
    """Query names given as literals to ``run_query(conn, NAME)`` or ``query(_SQL, NAME)``."""
    source = _migrations_source()
    used: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called in {"run_query", "query"} and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                used.add(name.value)
    return used


def test_every_migrator_query_is_used_and_every_used_query_exists() -> None:
    defined = set(load_queries("migrator.sql"))
    used = _names_used_by_migrations_module()
    assert used, "found no run_query(conn, 'name') calls in cira_db/_migrations/"
    assert sorted(defined - used) == [], "queries in migrator.sql that nothing uses"
    assert sorted(used - defined) == [], "names used in migrations.py missing from migrator.sql"


def test_every_migrator_query_name_appears_quoted_in_migrations_source() -> None:
    source = _migrations_source()
    for name in load_queries("migrator.sql"):
        assert f'"{name}"' in source, f"query {name} is never referenced in migrations.py"


def test_a_binary_placeholder_is_a_parameter_too() -> None:
    text = (
        "-- name: by_ids\n-- Jobs by id.\n"
        "SELECT * FROM jobs WHERE id = ANY (%(ids)b::uuid[]) AND x = %(x)s\n"
    )
    assert parse_queries(text, source="b.sql")["by_ids"].params == frozenset({"ids", "x"})
