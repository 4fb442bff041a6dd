"""Benchmark 10: what observing a repository call costs (logs, spans; cira_db._observe).

* the observation alone, no I/O: one `Observation` opened, fed one `Call`'s
  reply and finished, timed over many repetitions, per setup;
* ``jobs.get`` on the database, one call at a time, the setups interleaved
  in blocks, against a driver whose observation does nothing.

Setups: the default (DEBUG off; opentelemetry-api installed but no SDK, so
no span), DEBUG on with a handler that formats every record, and an
OpenTelemetry SDK configured (a batch processor whose exporter drops spans).
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from bench_common import Context, Samples, Section, Table, fmt_us
from bench_latency import measure
from cira_db import Database, JobRepository
from cira_db._observe import _Otel
from cira_db._repositories import _base
from cira_db._repositories._base import Call, job_row
from cira_db._sql import query

__all__ = ["run_observe"]

CLIENT = "observe-client"


class _Off:
    """An observation that does nothing: the driver loop as it was before."""

    __slots__ = ()

    def __init__(self, method: str, slow_ms: int) -> None:
        pass

    def begin(self, call: Call[Any], executor: Any, server: Any) -> Any:
        return server

    def got(self, kind: str, value: Any, changes: int | None = None) -> None:
        pass

    def finish(self, exc: BaseException | None) -> None:
        pass


@contextmanager
def _setup(name: str) -> Iterator[None]:
    """Logging and tracing as setup ``name`` wants them, restored afterwards."""
    calls = logging.getLogger("cira_db.calls")
    saved = (calls.level, calls.propagate, _Otel.tracer, getattr(_base, "Observation"))  # noqa: B009
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(cira_db)s"))
    provider: Any = None
    try:
        if name == "off":
            setattr(_base, "Observation", _Off)  # noqa: B010
        elif name == "debug":
            calls.setLevel(logging.DEBUG)
            calls.propagate = False
            calls.addHandler(handler)
        elif name == "sdk":
            provider = _sdk_provider()
            from opentelemetry import context, trace

            _Otel.trace, _Otel.context = trace, context
            _Otel.tracer = provider.get_tracer("cira_db")
        yield
    finally:
        calls.removeHandler(handler)
        calls.setLevel(saved[0])
        calls.propagate = saved[1]
        _Otel.tracer = saved[2]
        setattr(_base, "Observation", saved[3])  # noqa: B010
        if provider is not None:
            provider.shutdown()


def _sdk_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


def _sdk_available() -> bool:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


LABELS = {
    "off": "no observation (baseline)",
    "default": "default: DEBUG off, no OpenTelemetry SDK",
    "debug": "DEBUG on (`cira_db.calls`), one formatted record per call",
    "sdk": "OpenTelemetry SDK configured (batch processor), one span per call",
}


def _alone(setups: list[str], repeat: int) -> dict[str, float]:
    """Nanoseconds per observation (open, one reply, finish), no I/O."""
    call = Call.one(
        query("jobs.sql", "get_job"),
        {"id": uuid.uuid4(), "client_id": CLIENT},
        job_row,
        "read a job",
        idempotent=True,
    )
    server = ("localhost", 5432)
    out: dict[str, float] = {}
    for name in setups:
        with _setup(name):
            make: Callable[[str, int], Any] = getattr(_base, "Observation")  # noqa: B009
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter_ns()
                for _ in range(repeat):
                    observation = make("get", 1000)
                    observation.begin(call, None, server)
                    observation.got("one", None)
                    observation.finish(None)
                best = min(best, (time.perf_counter_ns() - start) / repeat)
            out[name] = best
    return out


def run_observe(ctx: Context) -> Section:
    section = Section("observe", "10. Observability overhead")
    setups = ["off", "default", "debug"] + (["sdk"] if _sdk_available() else [])
    if "sdk" not in setups:
        section.skipped.append("opentelemetry-sdk is not installed: no SDK setup")
    repeat = 2_000 if ctx.quick else 20_000
    ctx.log("observe: the observation alone")
    alone = _alone(setups, repeat)
    n = 200 if ctx.quick else 2000
    block = 50 if ctx.quick else 100
    ctx.log("observe: jobs.get with each setup")
    with Database(ctx.url) as db:
        jobs = JobRepository(db)
        job = jobs.create(client_id=CLIENT, pdf_url="https://example.com/observe.pdf")
        samples = _interleaved(setups, lambda: jobs.get(job.id, client_id=CLIENT), n, block)
    base = samples["off"].median_us
    table = Table(
        ["setup", "observation alone, µs", "`jobs.get` median µs", "p99 µs", "vs baseline µs"],
        title=f"Per call (observation alone: best of 5 x {repeat:,}; "
        f"`jobs.get`: n = {n:,}, interleaved in blocks of {block})",
    )
    for name in setups:
        s = samples[name]
        table.add(
            LABELS[name],
            fmt_us(alone[name] / 1000),
            fmt_us(s.median_us),
            fmt_us(s.p99_us),
            f"{s.median_us - base:+.1f}",
        )
    section.tables.append(table)
    section.intro.append(
        "Every repository call passes through one observation (cira_db._observe): "
        "two clock readings, a cached level check, and a span only when an OpenTelemetry "
        "SDK is configured. The baseline replaces it with one that does nothing."
    )
    section.headlines.append(
        f"observing a call costs {alone['default'] / 1000:.1f} µs with DEBUG off and no "
        f"SDK (a `jobs.get` takes {base:,.0f} µs)"
    )
    return section


def _interleaved(
    setups: list[str], call: Callable[[], object], n: int, block: int
) -> dict[str, Samples]:
    """Time ``n`` calls per setup, the setups taking turns in blocks of ``block``."""
    samples = {name: Samples() for name in setups}
    for name in setups:  # warm up each setup
        with _setup(name):
            measure({name: call}, 20, block=20, warmup=0)
    done = 0
    while done < n:
        size = min(block, n - done)
        for name in setups:
            with _setup(name):
                samples[name].ns.extend(measure({name: call}, size, block=size, warmup=0)[name].ns)
        done += size
    return samples
