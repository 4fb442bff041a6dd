"""JSON documents as a ``jsonb`` column gives them back, without asking the server.

`complete` and `complete_many` send each result's document as JSON text
(made by the validation) and build the returned `JobResult` from it: the
server writes no document back. Reading the column would give jsonb's form
of the document (its number and key-order rules), so the text is read here
the same way. Tests compare the outcome with the stored column
(tests/test_batches.py, tests/test_jobs_repository.py).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

__all__ = ["stored_json"]


def _jsonb_number(text: str) -> int | float:
    """A JSON number with a fraction or exponent, as jsonb stores and gives it back.

    jsonb keeps numbers as ``numeric``, written back without an exponent: a
    float ``json.dumps`` wrote as ``1e+16`` (no digit after the point once
    scaled) comes back as the integer ``10000000000000000``; every other
    one (``0.5``, ``1e-07``, ``100.0``) as the same float (``-0.0`` as ``0.0``).
    """
    number = Decimal(text)
    exponent = number.as_tuple().exponent  # an int: json.dumps writes no NaN or infinity
    if isinstance(exponent, int) and exponent >= 0:
        return int(number)
    return float(text) + 0.0


def _jsonb_key(pair: tuple[str, Any]) -> tuple[int, bytes]:
    key = pair[0].encode()
    return len(key), key


def _jsonb_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object with its keys in jsonb's order (shorter first, then by bytes)."""
    if len(pairs) > 1:
        pairs.sort(key=_jsonb_key)
    return dict(pairs)


# One decoder for every call: ``json.loads`` with hooks makes a new one (and
# its scanner) each time, a third of the cost of reading a small document.
# Shared like the json module's own default decoder: it keeps no state
# between documents.
_DECODER = json.JSONDecoder(parse_float=_jsonb_number, object_pairs_hook=_jsonb_object)


def stored_json(text: str) -> dict[str, Any]:
    """The document ``text`` as reading the jsonb column it was stored in gives it back.

    The same dict, numbers and key order as psycopg's ``json.loads`` of the
    column: `complete` and `complete_many` build their results from what they
    sent instead of asking the server to write every document back. ``text``
    is JSON that ``json.dumps`` wrote (the validation's).
    """
    value: dict[str, Any] = _DECODER.decode(text)
    return value
