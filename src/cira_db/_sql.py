"""Named queries loaded from ``.sql`` files inside the package.

A file holds blocks headed by ``-- name: some_query``; the comment lines that
follow the header are the query's description. Parameters are psycopg's
``%(name)s`` placeholders only (``%(name)b`` where a value goes in binary
form: the batch statements' uuid and text arrays, which the text form would
quote and escape element by element), so every value is bound by the driver
and no SQL is ever built from user input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, LiteralString

__all__ = ["Query", "load_queries", "query"]

_HEADER = re.compile(r"^--\s*name:\s*([a-z][a-z0-9_]*)\s*$", re.MULTILINE)
_PARAM = re.compile(r"%\(([a-z_][a-z0-9_]*)\)[sb]")
_ANY_HEADER = re.compile(r"^--\s*name\s*:.*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Query:
    """One named SQL statement and the parameters it binds."""

    name: str
    sql: LiteralString
    params: frozenset[str]
    description: str

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``values``, checked to name exactly this query's parameters.

        ``params`` holds the names of its ``%(name)s`` and ``%(name)b``
        placeholders, found once when the file was loaded: the check compares
        the keys with it, without making a set of them on every call.
        """
        if values.keys() != self.params:
            given = set(values)
            missing = sorted(self.params - given)
            extra = sorted(given - self.params)
            raise TypeError(f"query {self.name}: missing {missing}, unexpected {extra}")
        return dict(values)


def parse_queries(text: str, *, source: str) -> dict[str, Query]:
    """Split ``text`` into named queries; duplicate or empty names are errors."""
    queries: dict[str, Query] = {}
    for line in _ANY_HEADER.finditer(text):
        if not _HEADER.fullmatch(line.group(0)):
            raise ValueError(f"{source}: malformed query header {line.group(0).strip()!r}")
    headers = list(_HEADER.finditer(text))
    if not headers:
        raise ValueError(f"{source}: no '-- name: ...' headers found")
    for index, match in enumerate(headers):
        name = match.group(1)
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        body = text[match.end() : end].strip("\n")
        description: list[str] = []
        lines = body.splitlines()
        while lines and lines[0].startswith("--"):
            description.append(lines.pop(0).lstrip("-").strip())
        sql = "\n".join(lines).strip().rstrip(";").strip()
        if not sql:
            raise ValueError(f"{source}: query {name} is empty")
        if name in queries:
            raise ValueError(f"{source}: query {name} is defined twice")
        # The text comes from a file shipped inside the package, never from a
        # caller, so treating it as a literal is what LiteralString is for
        # (mypy treats LiteralString as str: no cast needed).
        literal: LiteralString = sql
        queries[name] = Query(
            name=name,
            sql=literal,
            params=frozenset(_PARAM.findall(sql)),
            description=" ".join(description),
        )
    return queries


@cache
def load_queries(resource: str) -> Mapping[str, Query]:
    """Load and cache the named queries of ``cira_db/sql/<resource>``."""
    return parse_queries(_read(resource), source=resource)


def _read(resource: str) -> str:
    """The text of ``cira_db/sql/<resource>``: a plain file read when the package is one."""
    import cira_db.sql

    path = Path(cira_db.sql.__file__ or "").parent / resource
    if path.is_file():  # not when imported from a zip
        return path.read_text(encoding="utf-8")
    # importlib.resources costs a few milliseconds of import on a cold start: only here.
    from importlib import resources

    return resources.files("cira_db.sql").joinpath(resource).read_text(encoding="utf-8")


def query(resource: str, name: str) -> Query:
    """The query ``name`` from ``cira_db/sql/<resource>``."""
    try:
        return load_queries(resource)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {resource}") from None
