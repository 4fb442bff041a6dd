"""Benchmark 8: a Lambda cold start, the library against psycopg + psycopg_pool by hand.

Each sample is a fresh ``python`` process, as a new Lambda execution
environment is, with ``AWS_LAMBDA_FUNCTION_NAME`` set (so the library takes
its Lambda defaults). The library's process imports cira_db, builds settings
from ``CIRA_DB_URL``, opens the pool and runs its first repository call
(``jobs.find``); the raw process imports psycopg and psycopg_pool, opens a
one-connection pool by hand and runs the same statement text. The two run
alternately, so drift in the machine's speed hits both alike. The process
reports its own CPU time (user + system, interpreter start-up included);
the parent times the whole process (wall clock, start to exit). A third
process, alternating with them, does the same with the asyncio face
(``cira_db.aio``: ``AsyncDatabase.from_env``, ``AsyncJobRepository``).

Then ``python -X importtime -c "import cira_db"`` shows where the import
time goes (and ``import cira_db.aio`` what the asyncio face adds).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import uuid4

from bench_common import Context, Section, Table, Target, fmt_ratio, library_sql, timed

__all__ = ["run_coldstart"]

_REPORT = """
import json, resource
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime}))
"""

LIBRARY = (
    """
import os
from cira_db import Database, JobRepository
db = Database.from_env()
db.open()
assert JobRepository(db).find(os.environ["BENCH_JOB_ID"], client_id="cold-start") is None
"""
    + _REPORT
)

ASYNC_LIBRARY = (
    """
import asyncio, os
from cira_db.aio import AsyncDatabase, AsyncJobRepository
async def main():
    async with AsyncDatabase.from_env() as db:
        job = await AsyncJobRepository(db).find(os.environ["BENCH_JOB_ID"], client_id="cold-start")
        assert job is None
asyncio.run(main())
"""
    + _REPORT
)

RAW = (
    """
import os
import psycopg
from psycopg_pool import ConnectionPool
pool = ConnectionPool(
    os.environ["BENCH_URL"], min_size=0, max_size=1, open=False,
    kwargs={"autocommit": True, "prepare_threshold": None},
    check=ConnectionPool.check_connection,
)
pool.open()
with pool.connection() as conn:
    row = conn.execute(
        os.environ["BENCH_SQL"], {"id": os.environ["BENCH_JOB_ID"], "client_id": "cold-start"}
    ).fetchone()
assert row is None
"""
    + _REPORT
)

_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")
_PACKAGES = (
    "cira_db",
    "psycopg",
    "psycopg_binary",
    "psycopg_pool",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
    "pydantic_settings",
    "boto3",
)


@dataclass(frozen=True)
class Start:
    """One cold process: its CPU time and its wall time, in seconds."""

    cpu: float
    wall: float


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRA_DB_")}
    env |= {
        "CIRA_DB_URL": url,
        "BENCH_URL": url,
        "BENCH_SQL": library_sql("jobs.sql", "get_job"),
        "BENCH_JOB_ID": str(uuid4()),
        "AWS_LAMBDA_FUNCTION_NAME": "cira-bench",
        "PYTHONDONTWRITEBYTECODE": "",
    }
    return env


def _start(script: str, env: dict[str, str]) -> Start:
    output: list[str] = []

    def run() -> None:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        output.append(done.stdout)

    wall = timed(run)
    return Start(cpu=float(json.loads(output[0])["cpu"]), wall=wall)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def import_times(module: str, env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """``-X importtime`` of one import: module -> (self µs, cumulative µs)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, tuple[int, int]] = {}
    for line in done.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            found[match.group(4)] = (int(match.group(1)), int(match.group(2)))
    return found


def _starts_table(library: list[Start], raw: list[Start], aio: list[Start]) -> Table:
    table = Table(
        ["cold process", "CPU time, median", "wall time, median", "wall time, min"],
        title=f"{len(library)} fresh processes each, alternating",
    )
    rows = (
        ("cira_db", library),
        ("psycopg + psycopg_pool by hand", raw),
        ("cira_db.aio (asyncio face)", aio),
    )
    for name, starts in rows:
        table.add(
            name,
            _ms(_median([s.cpu for s in starts])),
            _ms(_median([s.wall for s in starts])),
            _ms(min(s.wall for s in starts)),
        )
    return table


def _imports_tables(times: dict[str, tuple[int, int]]) -> list[Table]:
    # A package's own modules, wherever they are imported from: pydantic loads
    # most of itself lazily (``from pydantic import BaseModel``), so the
    # cumulative time of the line ``pydantic`` holds only a small part of it.
    packages = Table(
        ["package", "modules", "self time, summed over its modules"],
        title="`import cira_db`: the packages it loads",
    )
    for name in _PACKAGES:
        selves = [t[0] for module, t in times.items() if module.split(".")[0] == name]
        if selves:
            packages.add(f"`{name}`", str(len(selves)), _ms(sum(selves) / 1e6))
        else:
            packages.add(f"`{name}`", "0", "not imported")
    top = Table(
        ["module", "self", "cumulative"],
        title="`import cira_db`: the 15 modules with the most self time (`-X importtime`)",
    )
    for name, (own, total) in sorted(times.items(), key=lambda kv: -kv[1][0])[:15]:
        top.add(f"`{name}`", f"{own / 1000:,.1f} ms", f"{total / 1000:,.1f} ms")
    return [packages, top]


def _loaded_note(
    times: dict[str, tuple[int, int]], package: str, when: str, what: str = "import cira_db"
) -> str:
    """Whether ``what`` (``import cira_db``) loaded ``package``, as this run saw it."""
    if any(module.split(".")[0] == package for module in times):
        return f"{package} is imported by `{what}` in this run (expected: {when})."
    return f"{package} is not imported by `{what}`: it is loaded {when}."


def run_coldstart(ctx: Context) -> Section:
    """Alternate library and raw cold processes; then break the import down."""
    section = Section("coldstart", "8. Cold start of a Lambda function")
    runs = 5 if ctx.quick else 21
    env = _env(ctx.url)
    library: list[Start] = []
    raw: list[Start] = []
    aio: list[Start] = []
    ctx.log(f"cold start: {runs} fresh processes each, library, raw and async alternating")
    _start(LIBRARY, env)  # warm the OS file cache: not counted
    _start(RAW, env)
    _start(ASYNC_LIBRARY, env)
    for _ in range(runs):
        library.append(_start(LIBRARY, env))
        raw.append(_start(RAW, env))
        aio.append(_start(ASYNC_LIBRARY, env))
    cpu_ratio = _median([s.cpu for s in library]) / _median([s.cpu for s in raw])
    wall_ratio = _median([s.wall for s in library]) / _median([s.wall for s in raw])
    section.intro = [
        "A fresh process per sample, as a new execution environment: import, settings from "
        "the environment (`AWS_LAMBDA_FUNCTION_NAME` set), open the pool, first repository "
        "call (`jobs.find`, one connection made), against psycopg + psycopg_pool doing the "
        "same by hand with the same statement. Like for like: the same interpreter and flags, "
        "the same URL (so the same TLS: libpq's default for this local server, as the library "
        "leaves it; the library adds only TCP keepalives, its connect and TCP timeouts and "
        "`application_name`), a pool of at most one connection opened empty, autocommit and "
        "no server-side prepares on both sides. CPU time is the process's own user + system "
        "time, interpreter start-up included; wall time is the parent's, spawn to exit. "
        "Target: at most 1.15\u00d7 raw. The asyncio face (`cira_db.aio`: `AsyncDatabase`, "
        "`AsyncJobRepository`, `asyncio.run`) is shown for comparison; the target is the "
        "sync face's."
    ]
    section.tables = [_starts_table(library, raw, aio)]
    times = import_times("cira_db", env)
    aio_times = import_times("cira_db.aio", env)
    raw_times = import_times("psycopg_pool", env)
    section.tables += _imports_tables(times)
    cira, pool = times.get("cira_db", (0, 0))[1], raw_times.get("psycopg_pool", (0, 0))[1]
    section.notes = [
        f"`import cira_db` {_ms(cira / 1e6)} cumulative against `import psycopg_pool` "
        f"(which imports psycopg) {_ms(pool / 1e6)}, one `-X importtime` run each.",
        f"`import cira_db.aio` {_ms(aio_times.get('cira_db.aio', (0, 0))[1] / 1e6)} "
        f"cumulative; asyncio face cold start {_ms(_median([s.cpu for s in aio]))} CPU "
        f"({fmt_ratio(_median([s.cpu for s in aio]) / _median([s.cpu for s in raw]))} the "
        "sync raw process, which does not import asyncio).",
        _loaded_note(
            times,
            "pydantic",
            "when `DatabaseSettings` is first named "
            "(`Database.settings`, `from cira_db import DatabaseSettings`) or a value "
            "needs its validation: plainly valid `CIRA_DB_*` values are settled without it",
        ),
        _loaded_note(
            aio_times,
            "pydantic",
            "when `AsyncDatabase.settings` is first named or a value needs its validation, "
            "as for `Database`",
            "import cira_db.aio",
        ),
        _loaded_note(times, "boto3", "only when a secret or an IAM token is needed"),
        _loaded_note(
            times,
            "opentelemetry",
            "on a call only once the application (or its instrumentation) has imported it",
        ),
    ]
    section.headlines = [
        f"Cold start (fresh process: import, settings, pool, first call): "
        f"{_ms(_median([s.cpu for s in library]))} CPU against "
        f"{_ms(_median([s.cpu for s in raw]))} for psycopg + psycopg_pool by hand "
        f"({fmt_ratio(cpu_ratio)}; wall {fmt_ratio(wall_ratio)}; target at most 1.15\u00d7)."
    ]
    section.targets = [
        Target(
            "Cold start, CPU time \u00f7 psycopg + psycopg_pool by hand (section 8)",
            1.15,
            cpu_ratio,
            at_least=False,
            why=(
                f"{_ms(_median([s.cpu for s in library]) - _median([s.cpu for s in raw]))} "
                f"more CPU per start; `import cira_db` took {_ms(cira / 1e6)} cumulative "
                f"against {_ms(pool / 1e6)} for `import psycopg_pool` (one `-X importtime` "
                "run each; the import breakdown above shows where it goes)."
            ),
        )
    ]
    return section
