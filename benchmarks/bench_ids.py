"""Benchmark 5: time-ordered ids (UUIDv7) against random ids (UUIDv4).

Runs only if the library makes its own ids time-ordered (checked through the
public API: the version of the id of a job made by ``jobs.create``). Two
empty tables shaped exactly like ``jobs`` (``LIKE jobs INCLUDING ALL``: the
same primary key, indexes, checks and defaults) receive the same rows by
COPY in alternating batches, ids made in Python beforehand (UUIDv7 with the
library's layout, or ``uuid.uuid4()``); then the sizes of each primary key
and of all indexes are read.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from bench_common import (
    Context,
    Section,
    Table,
    connect_raw,
    fmt_int,
    fmt_ratio,
    uuid7_batch,
)
from cira_db import Database, JobRepository

__all__ = ["run_ids"]

KINDS = ("v7", "v4")
TABLES = {"v7": "bench_ids_v7", "v4": "bench_ids_v4"}
LABELS = {"v7": "UUIDv7 (time-ordered)", "v4": "UUIDv4 (random)"}


def _uuid4_batch(count: int) -> list[UUID]:
    return [uuid.uuid4() for _ in range(count)]


MAKERS: dict[str, Callable[[int], list[UUID]]] = {"v7": uuid7_batch, "v4": _uuid4_batch}


def _library_id_version(url: str) -> int:
    with Database(url) as db:
        job = JobRepository(db).create(
            client_id="ids-probe", pdf_url="https://files.example.com/probe.pdf"
        )
    return job.id.version or 0


def _copy(conn: psycopg.Connection[Any], table: str, ids: list[UUID], urls: list[str]) -> float:
    statement = sql.SQL("COPY {} (id, client_id, pdf_url) FROM STDIN").format(sql.Identifier(table))
    start = time.perf_counter()
    with conn.cursor() as cur, cur.copy(statement) as stream:
        for job_id, pdf_url in zip(ids, urls, strict=True):
            stream.write_row((job_id, "ids-client", pdf_url))
    return time.perf_counter() - start


def run_ids(ctx: Context) -> Section:
    section = Section("ids", "5. Time-ordered ids against random ids")
    version = _library_id_version(ctx.url)
    if version != 7:
        section.skipped.append(
            f"The library's `jobs.create` made a version-{version} id, not a time-ordered "
            "UUIDv7, so the comparison was not run."
        )
        return section
    total = 40_000 if ctx.quick else 200_000
    batch = 4_000 if ctx.quick else 10_000
    rounds = total // batch
    seconds: dict[str, list[float]] = {k: [] for k in KINDS}
    gen_seconds: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    sizes: dict[str, tuple[int, int, int]] = {}
    per_index: dict[str, dict[str, Any]] = {}
    with connect_raw(ctx.url, prepare_threshold=None) as conn:
        for kind in KINDS:
            name = sql.Identifier(TABLES[kind])
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE jobs INCLUDING ALL)").format(name))
        conn.execute("CHECKPOINT")
        ctx.log(f"ids: {fmt_int(total)} rows per table in batches of {fmt_int(batch)}")
        for r in range(rounds):
            urls = [f"https://files.example.com/ids/{r}/{i}.pdf" for i in range(batch)]
            order = KINDS if r % 2 == 0 else KINDS[::-1]
            for kind in order:
                start = time.perf_counter()
                ids = MAKERS[kind](batch)
                gen_seconds[kind] += time.perf_counter() - start
                seconds[kind].append(_copy(conn, TABLES[kind], ids, urls))
        for kind in KINDS:
            row = conn.execute(
                """
                SELECT pg_relation_size(i.indexrelid), pg_indexes_size(i.indrelid),
                       pg_table_size(i.indrelid)
                FROM pg_index AS i
                WHERE i.indrelid = %s::regclass AND i.indisprimary
                """,
                (TABLES[kind],),
            ).fetchone()
            assert row is not None
            sizes[kind] = (int(row[0]), int(row[1]), int(row[2]))
        for kind in KINDS:
            rows = conn.execute(
                """
                SELECT c.relname, pg_get_indexdef(i.indexrelid), pg_relation_size(i.indexrelid)
                FROM pg_index AS i
                JOIN pg_class AS c ON c.oid = i.indexrelid
                WHERE i.indrelid = %s::regclass
                ORDER BY c.relname
                """,
                (TABLES[kind],),
            ).fetchall()
            for name, definition, size in rows:
                key = str(name).removeprefix(TABLES[kind])
                label = str(definition).split(" USING ", 1)[-1].removeprefix("btree ")
                per_index.setdefault(key, {"label": label})[kind] = int(size)
        buffers_row = conn.execute(
            "SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'"
        ).fetchone()
        shared_buffers = int(buffers_row[0]) if buffers_row else 0
        for kind in KINDS:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(TABLES[kind])))
    half = rounds // 2
    rate = {k: total / sum(v) for k, v in seconds.items()}
    early = {k: half * batch / sum(v[:half]) for k, v in seconds.items()}
    late = {k: (rounds - half) * batch / sum(v[half:]) for k, v in seconds.items()}
    table = Table(
        [
            "ids",
            "COPY rows/s",
            "first half rows/s",
            "second half rows/s",
            "median batch ms",
            "primary key MiB",
            "all indexes MiB",
            "table MiB",
            "Python id generation, \u00b5s per 1,000",
        ],
        title=f"{fmt_int(total)} rows into each table, {rounds} alternating COPY batches "
        f"of {fmt_int(batch)}",
    )
    for kind in KINDS:
        pk, idx, tbl = sizes[kind]
        table.add(
            LABELS[kind],
            fmt_int(rate[kind]),
            fmt_int(early[kind]),
            fmt_int(late[kind]),
            f"{statistics.median(seconds[kind]) * 1000:,.1f}",
            f"{pk / 2**20:,.1f}",
            f"{idx / 2**20:,.1f}",
            f"{tbl / 2**20:,.1f}",
            f"{gen_seconds[kind] / total * 1e9:,.0f}",
        )
    ratio = Table(["v4 \u00f7 v7", "value"])
    ratio.add("insert time (COPY, total)", fmt_ratio(sum(seconds["v4"]) / sum(seconds["v7"])))
    ratio.add("primary key size", fmt_ratio(sizes["v4"][0] / sizes["v7"][0]))
    ratio.add("size of all indexes", fmt_ratio(sizes["v4"][1] / sizes["v7"][1]))
    indexes = Table(
        ["index (columns)", "UUIDv7 MiB", "UUIDv4 MiB", "v4 \u00f7 v7"],
        title="Size of every index after the load",
    )
    for entry in per_index.values():
        v7, v4 = int(entry.get("v7", 0)), int(entry.get("v4", 0))
        indexes.add(
            f"`{entry['label']}`",
            f"{v7 / 2**20:,.2f}",
            f"{v4 / 2**20:,.2f}",
            fmt_ratio(v4 / v7) if v7 else "n/a",
        )
    section.tables = [table, ratio, indexes]
    section.intro = [
        f"The library's `jobs.create` returned a version-{version} id, so ids are made in the "
        "client and time-ordered. Two empty tables made with `LIKE jobs INCLUDING ALL` (the "
        "same primary key, secondary indexes, checks and defaults as `jobs`) receive the same "
        f"{fmt_int(total)} rows (`id`, `client_id`, `pdf_url`) by COPY in {rounds} batches of "
        f"{fmt_int(batch)}, alternating which table goes first. Ids are made in Python before "
        "each batch (UUIDv7 in the library's layout, or `uuid.uuid4()`); the COPY time excludes "
        "making them, which is reported on its own. Sizes are `pg_relation_size` of the "
        "primary key, `pg_indexes_size` and `pg_table_size` after the load.",
    ]
    section.notes.append(
        "Every row of one COPY batch gets the same `created_at` (the column default, `now()` "
        "of its transaction), as the rows of one `create_many` call do, and all rows belong to "
        "one client. In the indexes ending in `created_at DESC, id DESC`, each new (larger) "
        "UUIDv7 then sorts before the earlier ids of its batch, so those indexes grow at an "
        "inner point rather than at their right edge, and their pages split in the middle; "
        "random ids spread over the run instead. Compare those rows with the primary key's."
    )
    both = sizes["v7"][1] + sizes["v4"][1] + sizes["v7"][2] + sizes["v4"][2]
    if shared_buffers and both < shared_buffers:
        section.notes.append(
            f"Both tables and all their indexes ({both / 2**20:,.0f} MiB) fit in the server's "
            f"`shared_buffers` ({shared_buffers / 2**20:,.0f} MiB), so here random ids cost page "
            "splits and a larger index rather than extra reads from disk; a primary key larger "
            "than memory would add reads for random ids (not measured here)."
        )
    section.headlines = [
        f"{fmt_int(total)} COPY inserts: UUIDv7 {fmt_int(rate['v7'])} rows/s, UUIDv4 "
        f"{fmt_int(rate['v4'])} rows/s; primary key {sizes['v7'][0] / 2**20:,.1f} MiB against "
        f"{sizes['v4'][0] / 2**20:,.1f} MiB (v4 \u00f7 v7 "
        f"{fmt_ratio(sizes['v4'][0] / sizes['v7'][0])}).",
    ]
    return section
