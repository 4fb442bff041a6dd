"""``cira-db check``: is the database reachable, safely, and up to date?"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cira_db._database import Database
from cira_db.errors import CiraDbError
from cira_db.migrations import Migrator

__all__ = ["Finding", "backend_switches", "run_checks"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str


def run_checks(db: Database, *, samples: int = 5) -> list[Finding]:
    """Check reach, server, TLS, pooler, latency, pool settings and migrations.

    Stops after the first failure that makes the rest meaningless (no
    connection). Nothing here prints a password or token.
    """
    settings = db.settings
    findings = [Finding("target", True, settings.describe())]
    started = time.perf_counter()
    try:
        conn = db.connect_direct()
    except CiraDbError as exc:
        findings.append(Finding("reach", False, str(exc)))
        return findings
    try:
        connect_ms = (time.perf_counter() - started) * 1000
        findings.append(Finding("reach", True, f"connected in {connect_ms:.0f} ms"))
        findings.append(Finding("server", True, _server_version(conn)))
        plan = db.connection_plan()  # what libpq used: every host, hostaddr and service
        findings.append(_tls(conn, plan.sslmode, local=plan.is_local))
        findings.append(_pooler(conn, db))
        findings.append(_latency(conn, samples))
        findings.append(_pool(db))
        findings.append(_migrations(db, conn))
    finally:
        conn.close()
    return findings


def _server_version(conn: Any) -> str:
    row = conn.execute("SELECT current_setting('server_version'), current_user").fetchone()
    return f"PostgreSQL {row[0]} as {row[1]}"


def _tls(conn: Any, sslmode: str | None, *, local: bool) -> Finding:
    pgconn = conn.pgconn
    if not pgconn.ssl_in_use:
        detail = "not in use" + (" (local connection)" if local else "")
        return Finding("tls", local, detail)
    protocol, cipher = _ssl_attributes(conn)
    if sslmode == "verify-full":
        return Finding("tls", True, f"{protocol} {cipher}, certificate and host name verified")
    mode = sslmode or "prefer"
    if local:
        return Finding("tls", True, f"{protocol} {cipher}, not verified (local, sslmode={mode})")
    return Finding("tls", False, f"{protocol} {cipher}, NOT verified (sslmode={mode})")


def _ssl_attributes(conn: Any) -> tuple[str, str]:
    """TLS protocol and cipher of this client connection, as libpq reports them.

    psycopg exposes only ``ssl_in_use``, so libpq's ``PQsslAttribute`` is called
    through ctypes; where that is not possible the server's ``pg_stat_ssl`` is
    asked (which shows nothing when a pooler terminates TLS).
    """
    try:
        library = _libpq()
        function = library.PQsslAttribute
        function.restype = ctypes.c_char_p
        function.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        pointer = conn.pgconn.pgconn_ptr
        protocol = function(pointer, b"protocol")
        cipher = function(pointer, b"cipher")
        if protocol:
            return protocol.decode(), (cipher or b"?").decode()
    except (OSError, AttributeError, TypeError):
        pass
    row = conn.execute(
        "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl"
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else ("TLS (protocol not reported)", "?")


@functools.cache
def _libpq() -> ctypes.CDLL:
    import psycopg

    if psycopg.pq.__impl__ == "binary":
        import psycopg_binary

        libs = Path(psycopg_binary.__file__).parent.parent / "psycopg_binary.libs"
        for candidate in sorted(libs.glob("libpq-*.so*")):
            return ctypes.CDLL(str(candidate))
    name = ctypes.util.find_library("pq")
    if name is None:
        raise OSError("libpq not found")
    return ctypes.CDLL(name)


def _pooler(conn: Any, db: Database) -> Finding:
    try:
        other = db.connect_direct()
    except CiraDbError as exc:
        return Finding("pooler", False, f"a second connection for the pooler probe failed: {exc}")
    try:
        interleaved, held = backend_switches(conn, other)
    finally:
        other.close()
    observed = interleaved or held
    configured = db.settings.behind_proxy()
    prepared = "off" if db.settings.prepare_threshold() is None else "on"
    if observed and prepared == "on":
        return Finding(
            "pooler",
            False,
            "a transaction pooler answers (one client connection reaches several server "
            "sessions) but server-side prepared statements are on, so calls fail under load "
            "with 'prepared statement ... does not exist'; set CIRA_DB_VIA_PROXY=true "
            "(or CIRA_DB_PREPARE_STATEMENTS=false)",
        )
    seen = "observed" if observed else "not observed"
    detail = (
        f"configured={'yes' if configured else 'no'}, switching backends {seen}, "
        f"prepared statements {prepared}"
    )
    if observed and not configured:
        detail += "; declare it with CIRA_DB_VIA_PROXY=true"
    return Finding("pooler", True, detail)


def backend_switches(first: Any, second: Any, *, wait: float = 2.0) -> tuple[bool, bool]:
    """Whether two client connections show a transaction pooler, by two probes.

    Directly connected, each client connection keeps its own server session
    (``pg_backend_pid()``) for its lifetime, and two never share one. Through a
    transaction pooler, each transaction gets whichever server session is free.

    * interleaved: alternate queries on the two connections. A pooler hands
      the session just released to the next client (two clients see the same
      backend) or rotates sessions (one client sees several).
    * held: ``second`` holds a transaction open while ``first`` queries. The
      pooler must then serve ``first`` from a session other than the one
      ``second`` holds, or make it wait when it has only that one (a wait of
      more than ``wait`` seconds counts as seen); a direct connection answers
      at once from its own session.

    Returns (interleaved seen, held seen). Only transactions and
    ``pg_backend_pid()``: nothing that pins an RDS Proxy session.
    """

    def pid(conn: Any) -> int:
        return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])

    firsts: list[int] = []
    seconds: list[int] = []
    for _ in range(3):
        firsts.append(pid(first))
        seconds.append(pid(second))
    interleaved = len(set(firsts)) > 1 or len(set(seconds)) > 1 or bool(set(firsts) & set(seconds))
    with ThreadPoolExecutor(max_workers=1) as executor:
        with second.transaction():
            holding = pid(second)
            answer = executor.submit(pid, first)
            try:
                during = answer.result(timeout=wait)
            except FutureTimeout:
                during = None  # it waits for the session `second` holds: a pooler
        if during is None:
            answer.result(timeout=30)  # served once the transaction ended
    held = during is None or during != firsts[-1] or during == holding
    return interleaved, held


def _latency(conn: Any, samples: int) -> Finding:
    times: list[float] = []
    for _ in range(max(samples, 1)):
        started = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        times.append((time.perf_counter() - started) * 1000)
    return Finding(
        "latency",
        True,
        f"round trip median {statistics.median(times):.2f} ms, max {max(times):.2f} ms "
        f"({len(times)} samples)",
    )


def _pool(db: Database) -> Finding:
    s = db.settings
    low, high = s.pool_sizes()
    configured = (
        f"min {low}, max {high}, wait {s.pool_timeout:g} s, max_lifetime "
        f"{s.pool_max_lifetime:g} s, max_idle {s.pool_max_idle:g} s, "
        f"retries {s.retry_attempts - 1}"
    )
    if db.is_open:
        return Finding("pool", True, f"{configured}; now: {db.stats().describe()}")
    try:  # open a pool as the application would, check one connection out
        with Database(settings=s) as pooled:
            with pooled.connection():
                pass
            stats = pooled.stats()
    except CiraDbError as exc:
        return Finding("pool", False, f"{configured}; opening a pool failed: {exc}")
    return Finding("pool", True, f"{configured}; after one checkout: {stats.describe()}")


def _migrations(db: Database, conn: Any) -> Finding:
    # Reading the history is a plain query: it goes over the application's own
    # connection, so a service that only knows the proxy endpoint is checked too.
    try:
        statuses, problems = Migrator(db).report(conn)
    except CiraDbError as exc:
        return Finding("migrations", False, str(exc))
    if problems:
        return Finding("migrations", False, "; ".join(problems))
    pending = [f"{s.version:04d}_{s.name}" for s in statuses if not s.applied]
    if pending:
        return Finding("migrations", False, f"{len(pending)} pending: {', '.join(pending)}")
    return Finding("migrations", True, f"up to date ({len(statuses)} applied)")
