"""What every benchmark shares: settings, timing statistics, ids, the library's SQL, tables.

The benchmarks use only the public API of `cira_db`. For the "raw psycopg"
side of a comparison they run the *same statement text* the library runs,
read from the packaged ``cira_db/sql/*.sql`` files, so both sides send the
same SQL with the same parameters.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import psycopg.conninfo

# `Database.close()` closes its pool with timeout=0 (it waits for nothing, for
# Lambda), and psycopg_pool logs a warning for each pool thread it did not
# wait for. Harmless here; silenced so the progress output stays readable.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

__all__ = [
    "Context",
    "Samples",
    "Section",
    "Table",
    "connect_raw",
    "encode_result",
    "fmt_int",
    "fmt_ms",
    "fmt_ratio",
    "fmt_us",
    "library_defaults",
    "library_sql",
    "loadavg",
    "migration_text",
    "percentile",
    "pin_backends",
    "timed",
    "truncate_jobs",
    "uuid7",
    "uuid7_batch",
]


# -- run settings -------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """Where and how big: the benchmark database's URL and whether this is a quick run."""

    url: str
    quick: bool
    log: Callable[[str], None]


def connect_raw(url: str, *, prepare_threshold: int | None = 5) -> psycopg.Connection[Any]:
    """A plain psycopg connection in autocommit mode (the "raw" side of comparisons)."""
    conn: psycopg.Connection[Any] = psycopg.connect(
        url, autocommit=True, prepare_threshold=prepare_threshold
    )
    return conn


def truncate_jobs(url: str) -> None:
    """Empty jobs and job_results (and run a checkpoint so earlier WAL does not linger)."""
    with connect_raw(url, prepare_threshold=None) as conn:
        conn.execute("TRUNCATE job_results, jobs")
        conn.execute("CHECKPOINT")


def _local_server(url: str) -> bool:
    host = str(psycopg.conninfo.conninfo_to_dict(url).get("host") or "")
    return not host or host.startswith("/") or host in {"localhost", "127.0.0.1", "::1"}


def _is_local_postgres(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"postgres" in cmdline


def pin_backends(url: str, cpu: int) -> int:
    """Pin this thread and every client backend of the URL's database to ``cpu``.

    Only for a server on this machine (Unix socket or loopback) and only PIDs
    that are local ``postgres`` processes. Returns how many backends were
    pinned; raises OSError when pinning is not possible.
    """
    if not _local_server(url):
        raise OSError("the server is not on this machine")
    os.sched_setaffinity(0, {cpu})
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    pinned = 0
    for (pid,) in rows:
        if _is_local_postgres(int(pid)):
            os.sched_setaffinity(int(pid), {cpu})
            pinned += 1
    return pinned


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    return os.getloadavg()


# -- the library's SQL ----------------------------------------------------------------

_HEADER = re.compile(r"^--\s*name:\s*([a-z][a-z0-9_]*)\s*$", re.MULTILINE)


@cache
def _queries(resource: str) -> dict[str, str]:
    text = resources.files("cira_db.sql").joinpath(resource).read_text(encoding="utf-8")
    headers = list(_HEADER.finditer(text))
    found: dict[str, str] = {}
    for index, match in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        lines = text[match.end() : end].strip("\n").splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        found[match.group(1)] = "\n".join(lines).strip().rstrip(";").strip()
    return found


def library_sql(resource: str, name: str) -> str:
    """The statement ``name`` of the packaged ``cira_db/sql/<resource>``, as the library runs it."""
    try:
        return _queries(resource)[name]
    except KeyError:
        raise KeyError(f"the package has no query {name!r} in {resource}") from None


def library_defaults(statement: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus NULL for the optional parameters the library binds as NULL by default.

    Only names in `OPTIONAL_NULL_PARAMS` are filled in; any other missing
    parameter is left missing, so psycopg fails loudly instead of guessing.
    """
    names = set(re.findall(r"%\(([a-z_][a-z0-9_]*)\)s", statement))
    return {**params, **{n: None for n in OPTIONAL_NULL_PARAMS & names if n not in params}}


OPTIONAL_NULL_PARAMS = frozenset({"attempt"})
"""Statement parameters a repository call binds as NULL when the caller does not pass them."""


encode_result: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode
"""A job's result as the JSON text `complete_job` takes, made per job by the raw loops.

Each job's result is its own document, so a hand-written worker encodes one
per job, as the library's `complete` does. An encoder made once: `json.dumps`
given arguments builds one on every call, which would slow the raw side.
"""


def migration_text(filename: str) -> str:
    """A packaged migration file (for the story's original index definitions)."""
    folder = resources.files("cira_db.sql").joinpath("migrations")
    return folder.joinpath(filename).read_text(encoding="utf-8")


# -- ids ------------------------------------------------------------------------------
# A UUIDv7 (RFC 9562, method 2 with a random start per millisecond): the same
# layout the library uses for the ids it creates. Written here so that the
# raw side of a comparison and the id benchmark do not reach into private
# modules.

_V7_BITS = (0x7 << 76) | (0b10 << 62)
_LOW_62 = (1 << 62) - 1
_lock = threading.Lock()
_last_ms = -1
_next = 0


def _reserve(count: int) -> tuple[int, int]:
    global _last_ms, _next  # process-wide monotonic clock state, as in the library
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _next = now_ms, secrets.randbits(73)
        first = _next
        _next += count
        return _last_ms, first


def uuid7_batch(count: int) -> list[UUID]:
    """``count`` strictly increasing UUIDv7s."""
    ms, start = _reserve(count)
    base = (ms << 80) | _V7_BITS
    return [UUID(int=base | ((c >> 62) << 64) | (c & _LOW_62)) for c in range(start, start + count)]


def uuid7() -> UUID:
    """One new UUIDv7."""
    return uuid7_batch(1)[0]


# -- statistics -----------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Samples:
    """Per-call durations in nanoseconds."""

    ns: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ns)

    @property
    def median_us(self) -> float:
        return statistics.median(self.ns) / 1000.0

    @property
    def p99_us(self) -> float:
        return percentile(self.ns, 0.99) / 1000.0


def timed(work: Callable[[], object]) -> float:
    """Seconds ``work()`` took."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


# -- formatting -----------------------------------------------------------------------


def fmt_us(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fmt_ms(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:,.2f}"
    return f"{value:,.3f}"


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:,.2f}\u00d7" if value < 100 else f"{value:,.0f}\u00d7"


@dataclass
class Table:
    """A table printed to the console and written to the markdown report."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""

    def add(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def markdown(self) -> list[str]:
        lines: list[str] = []
        if self.title:
            lines += [f"**{self.title}**", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append(
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|"
        )
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return [*lines, ""]

    def text(self) -> str:
        plain = [[cell.replace("`", "").replace("**", "") for cell in row] for row in self.rows]
        heads = [h.replace("`", "") for h in self.headers]
        widths = [max(len(r[i]) for r in [heads, *plain]) for i in range(len(heads))]
        out = [self.title] if self.title else []
        out.append(
            "  ".join(
                h.ljust(w) if i == 0 else h.rjust(w)
                for i, (h, w) in enumerate(zip(heads, widths, strict=True))
            )
        )
        for row in plain:
            out.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        return "\n".join(out)


@dataclass(frozen=True)
class Target:
    """A target the issues set for a figure, and this run's figure against it.

    ``at_least``: the figure must reach ``bound`` (a ratio to beat); otherwise it must not
    exceed it (a cost, a count of errors). ``why`` is said when the target is missed: what
    this run measured that explains the miss, never a typed-in figure.
    """

    what: str
    bound: float
    got: float
    at_least: bool = True
    unit: str = "\u00d7"
    why: str = ""

    @property
    def met(self) -> bool:
        return self.got >= self.bound if self.at_least else self.got <= self.bound

    def _value(self, value: float) -> str:
        if self.unit == "\u00d7":
            return fmt_ratio(value)
        shown = f"{value:,.1f}" if value != int(value) else fmt_int(value)
        return f"{shown}{self.unit}"

    def verdict(self) -> str:
        """ "met, 6% to spare" or "**missed** by 11%": the distance as a share of the bound."""
        if self.bound == 0:
            return "met" if self.met else f"**missed** by {self._value(self.got)}"
        share = abs(self.got - self.bound) / self.bound * 100
        return f"met, {share:.0f}% to spare" if self.met else f"**missed** by {share:.0f}%"

    def row(self) -> list[str]:
        sign = "\u2265" if self.at_least else "\u2264"
        return [
            self.what,
            f"{sign} {self._value(self.bound)}",
            self._value(self.got),
            self.verdict(),
        ]


@dataclass
class Section:
    """One benchmark's outcome: prose, tables, the headline figures and the targets."""

    key: str
    title: str
    intro: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headlines: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    extra_markdown: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
