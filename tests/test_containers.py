"""Tests that need containers: the plugin's Docker path for real, and a server and a proxy
on their own network addresses (TLS by host name, restarts, a network partition).

They need a Docker engine and the images `make images` builds; without them they skip,
saying why. `.ci/containers.sh` sets ``CIRA_DB_CONTAINER_TESTS=required``, which turns
every such skip into a failure. Everything a test starts here is removed at the end, and
traffic only goes to containers this run started.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cira_db import Database, JobRepository
from cira_db.errors import CiraDbError, DatabaseUnavailableError
from cira_db.migrations import Migrator
from cira_db.testing import _server

pytest_plugins = ["pytester"]

PG_IMAGE = "cira-db/postgres:16"
PROXY_IMAGE = "cira-db/pgbouncer:1"
TLS_PG_IMAGE = "cira-db/postgres:15"  # Debian's build, with OpenSSL: the server serves TLS itself
REQUIRED = os.environ.get("CIRA_DB_CONTAINER_TESTS") == "required"
RUN = uuid.uuid4().hex[:8]
LABELS = {"cira.test-run": RUN}
PROXY_NAME = "proxy.cira.test"
DB_NAME = "db.cira.test"
TLS_DB_NAME = "tls-db.cira.test"


def _why_not() -> str | None:
    if not _server._docker_answers():
        return "no Docker engine answers (set DOCKER_HOST; .ci/containers.sh starts one)"
    import docker  # type: ignore[import-untyped]

    client = docker.from_env()
    try:
        for image in (PG_IMAGE, PROXY_IMAGE, TLS_PG_IMAGE):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                return f"the image {image} is missing: run make images"
    finally:
        client.close()
    return None


@pytest.fixture(scope="module", autouse=True)
def _engine_and_images() -> None:
    why = _why_not()
    if why is None:
        return
    if REQUIRED:
        pytest.fail(f"CIRA_DB_CONTAINER_TESTS=required but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=60)
    try:
        yield client
    finally:
        for container in client.containers.list(
            all=True, filters={"label": f"cira.test-run={RUN}"}
        ):
            container.remove(force=True)
        client.close()


# -- the plugin's Docker path, for real ----------------------------------------------------------


def test_the_plugin_starts_the_local_image(
    monkeypatch: pytest.MonkeyPatch, docker_client: Any
) -> None:
    def running() -> set[str]:
        return {c.id for c in docker_client.containers.list(filters={"ancestor": PG_IMAGE})}

    monkeypatch.delenv("CIRA_DB_TEST_URL", raising=False)
    monkeypatch.setenv("CIRA_DB_TEST_IMAGE", PG_IMAGE)
    before = running()
    server = _server.find_server()
    started = running() - before
    try:
        assert len(started) == 1
        assert server.kind == f"testcontainers {PG_IMAGE}"
        assert server.version().startswith("16.")
        params = psycopg.conninfo.conninfo_to_dict(server.admin_url)
        assert not str(params["host"]).startswith("/")  # TCP to the container, not a socket
        with server.database() as url:
            Migrator(url, applied_by="test_containers").apply()
            with Database(url) as db:
                job = JobRepository(db).create(client_id="c", pdf_url="https://example.com/a.pdf")
                assert JobRepository(db).get(job.id, client_id="c") == job
    finally:
        server.stop()
    assert not started & running()  # stopped and removed with the server


DOWNSTREAM = """
from cira_db import JobRepository


def test_downstream(cira_db) -> None:
    jobs = JobRepository(cira_db)
    job = jobs.create(client_id="client-a", pdf_url="https://example.com/a.pdf")
    assert jobs.get(job.id, client_id="client-a") == job
"""


def test_a_downstream_project_runs_on_the_image_with_warnings_as_errors(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path that errored at setup with testcontainers 4.15's deprecation (issue 14)."""
    monkeypatch.delenv("CIRA_DB_TEST_URL", raising=False)
    monkeypatch.setenv("CIRA_DB_TEST_IMAGE", PG_IMAGE)
    pytester.makeconftest('pytest_plugins = ["cira_db.testing"]')
    pytester.makepyfile(test_downstream=DOWNSTREAM)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"cira_db test server: testcontainers {PG_IMAGE}"])


# -- a server and a proxy on a network of their own ------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(directory: Path, name: str) -> Path:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt"


def _server_cert(directory: Path, ca: str, host: str, name: str = "server") -> None:
    (directory / "ext.cnf").write_text(
        f"subjectAltName=DNS:{host}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={host}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "ext.cnf",
        cwd=directory,
    )  # fmt: skip


@dataclass
class Site:
    """A network with a PostgreSQL 16 container and a pgbouncer container in front of it."""

    network: Any
    db: Any
    proxy: Any
    db_ip: str
    proxy_ip: str
    user: str
    password: str
    ca: Path
    other_ca: Path
    tls_db_ip: str

    def proxy_conninfo(self, dbname: str = "cira", **params: str) -> str:
        base = {
            "host": PROXY_NAME,
            "hostaddr": self.proxy_ip,
            "port": "6432",
            "user": self.user,
            "password": self.password,
            "dbname": dbname,
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca),
            "connect_timeout": "3",
        }
        base.update(params)
        return psycopg.conninfo.make_conninfo("", **base)

    def tls_db_conninfo(self, **params: str) -> str:
        """The PostgreSQL 15 container that serves TLS itself (certificate for its host name)."""
        base = {
            "host": TLS_DB_NAME,
            "hostaddr": self.tls_db_ip,
            "port": "5432",
            "user": self.user,
            "password": self.password,
            "dbname": "cira",
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca),
            "connect_timeout": "3",
        }
        base.update(params)
        return psycopg.conninfo.make_conninfo("", **base)

    def direct_conninfo(self, dbname: str = "cira") -> str:
        return psycopg.conninfo.make_conninfo(
            "", host=self.db_ip, port=5432, user=self.user, password=self.password, dbname=dbname
        )


def _wait_for(check: Callable[[], object], what: str, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while True:
        try:
            check()
            return time.monotonic() - started
        except Exception as exc:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what} not ready after {timeout} s: {exc}") from exc
            time.sleep(0.2)


def _until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def _select_1(conninfo: str) -> None:
    with psycopg.connect(conninfo, connect_timeout=2, autocommit=True) as conn:
        conn.execute("SELECT 1")


@pytest.fixture(scope="module")
def site(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    import docker

    certs = tmp_path_factory.mktemp("certs")
    ca = _ca(certs, "ca")
    other_ca = _ca(certs, "other-ca")
    _server_cert(certs, "ca", PROXY_NAME)
    _server_cert(certs, "ca", TLS_DB_NAME, "tls-db")
    certs.chmod(0o755)
    for name in ("server.key", "server.crt", "tls-db.key", "tls-db.crt"):
        (certs / name).chmod(0o644)  # read by the container's root entry point only
    subnet = f"10.213.{secrets.randbelow(250) + 1}"
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=f"{subnet}.0/24")])
    network = docker_client.networks.create(f"cira-test-{RUN}", ipam=ipam, labels=LABELS)
    user, password = "cira", secrets.token_urlsafe(16)

    def start(image: str, name: str, ip: str, env: dict[str, str], **kwargs: Any) -> Any:
        api = docker_client.api
        config = api.create_networking_config(
            {network.name: api.create_endpoint_config(ipv4_address=ip, aliases=[name])}
        )
        created = api.create_container(
            image,
            name=f"cira-test-{RUN}-{name.split('.')[0]}",
            environment=env,
            labels=LABELS,
            networking_config=config,
            host_config=api.create_host_config(**kwargs),
        )
        container = docker_client.containers.get(created["Id"])
        container.start()
        return container

    db_ip, proxy_ip, tls_db_ip = f"{subnet}.10", f"{subnet}.11", f"{subnet}.12"
    try:
        db = start(
            PG_IMAGE,
            DB_NAME,
            db_ip,
            {"POSTGRES_USER": user, "POSTGRES_PASSWORD": password, "POSTGRES_DB": "cira"},
        )
        proxy = start(
            PROXY_IMAGE,
            PROXY_NAME,
            proxy_ip,
            {
                "PGBOUNCER_UPSTREAM_HOST": DB_NAME,
                "PGBOUNCER_USER": user,
                "PGBOUNCER_PASSWORD": password,
                "PGBOUNCER_TLS_CERT": "/certs/server.crt",
                "PGBOUNCER_TLS_KEY": "/certs/server.key",
            },
            binds={str(certs): {"bind": "/certs", "mode": "ro"}},
        )
        start(
            TLS_PG_IMAGE,
            TLS_DB_NAME,
            tls_db_ip,
            {
                "POSTGRES_USER": user,
                "POSTGRES_PASSWORD": password,
                "POSTGRES_DB": "cira",
                "POSTGRES_TLS_CERT": "/certs/tls-db.crt",
                "POSTGRES_TLS_KEY": "/certs/tls-db.key",
            },
            binds={str(certs): {"bind": "/certs", "mode": "ro"}},
        )
        found = Site(network, db, proxy, db_ip, proxy_ip, user, password, ca, other_ca, tls_db_ip)
        _wait_for(lambda: _select_1(found.direct_conninfo()), "the server container")
        _wait_for(lambda: _select_1(found.proxy_conninfo()), "the proxy container")
        _wait_for(lambda: _select_1(found.tls_db_conninfo()), "the TLS server container")
        # this PostgreSQL 16 build has no TLS: the direct link is plain text, said so explicitly
        direct = Database(
            found.direct_conninfo(), pool=False, sslmode="disable", allow_unverified_tls=True
        )
        Migrator(direct, applied_by="test_containers").apply()
        yield found
    finally:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"cira.test-run={RUN}"}
        ):
            container.remove(force=True)
        network.remove()


# -- TLS verify-full against a real host name on a non-loopback address ----------------------------


def test_verify_full_by_host_name_through_the_proxy(site: Site) -> None:
    assert not ipaddress.ip_address(site.proxy_ip).is_loopback
    with psycopg.connect(site.proxy_conninfo(), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute("SELECT inet_server_addr()::text").fetchone()
    assert row is not None
    assert row[0].split("/")[0] == site.db_ip  # the proxy's backend is the server container


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"host": "other.cira.test"}, 'does not match host name "other.cira.test"'),
        ({"sslrootcert": "OTHER_CA"}, "certificate verify failed"),
        ({"sslmode": "disable"}, "SSL required"),
    ],
    ids=["wrong-name", "wrong-ca", "plain-text"],
)
def test_verify_full_refuses(site: Site, change: dict[str, str], refusal: str) -> None:
    params = {k: (str(site.other_ca) if v == "OTHER_CA" else v) for k, v in change.items()}
    with pytest.raises(psycopg.OperationalError, match=refusal):
        psycopg.connect(site.proxy_conninfo(**params))


def test_verify_full_by_host_name_to_the_server(site: Site) -> None:
    assert not ipaddress.ip_address(site.tls_db_ip).is_loopback
    with psycopg.connect(site.tls_db_conninfo(), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"host": "other.cira.test"}, 'does not match host name "other.cira.test"'),
        ({"sslrootcert": "OTHER_CA"}, "certificate verify failed"),
        ({"sslmode": "disable"}, "no encryption"),
    ],
    ids=["wrong-name", "wrong-ca", "plain-text"],
)
def test_the_server_refuses(site: Site, change: dict[str, str], refusal: str) -> None:
    params = {k: (str(site.other_ca) if v == "OTHER_CA" else v) for k, v in change.items()}
    with pytest.raises(psycopg.OperationalError, match=refusal):
        psycopg.connect(site.tls_db_conninfo(**params))


def test_the_library_verifies_the_server_by_default(site: Site) -> None:
    """A direct URL with no sslmode: verify-full for a non-local host name, and it passes."""
    conninfo = " ".join(p for p in site.tls_db_conninfo().split() if not p.startswith("sslmode="))
    with Database(conninfo, pool=False) as db, db.connection() as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.info.get_parameters()["sslmode"] == "verify-full"


@pytest.mark.parametrize(
    "how",
    [
        "PGHOSTADDR",
        # psycopg resolves the URL's host itself and sets hostaddr, so the service file's
        # hostaddr is not used (the call goes to localhost): holds today, guards a change
        "service file",
    ],
)
def test_a_remote_address_behind_a_local_name_is_never_plain_text(
    site: Site, how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """URL host ``localhost``, but libpq goes to the server container's (non-loopback) address."""
    if how == "PGHOSTADDR":
        monkeypatch.setenv("PGHOSTADDR", site.db_ip)
        url = f"postgresql://{site.user}:{site.password}@localhost/cira"
    else:
        services = tmp_path / "pg_service.conf"
        services.write_text(f"[cira]\nhostaddr={site.db_ip}\n")
        monkeypatch.setenv("PGSERVICEFILE", str(services))
        url = f"postgresql://{site.user}:{site.password}@localhost/cira?service=cira"
    try:
        with Database(url, pool=False) as db, db.connection() as conn:
            plain = not conn.pgconn.ssl_in_use
            address = conn.execute("SELECT inet_server_addr()::text").fetchone()
    except CiraDbError:
        return  # refused, or TLS demanded of a server without it: either keeps the link safe
    assert address is not None
    assert address[0].split("/")[0] == site.db_ip  # the remote address was reached...
    assert not plain  # ...so it must not have been in plain text


def test_the_library_verifies_the_proxy_by_default(site: Site) -> None:
    """No sslmode given: a non-local host gets verify-full, and the proxy passes it."""
    conninfo = site.proxy_conninfo()
    conninfo = " ".join(p for p in conninfo.split() if not p.startswith("sslmode="))
    with Database(conninfo, via_proxy=True, migration_url=site.direct_conninfo()) as db:
        jobs = JobRepository(db)
        job = jobs.create(client_id="tls", pdf_url="https://example.com/tls.pdf")
        assert jobs.get(job.id, client_id="tls") == job
        with db.connection() as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.info.get_parameters()["sslmode"] == "verify-full"


# -- a proxy restarting, a server restarting ---------------------------------------------


def _stored(site: Site, client_id: str) -> dict[str, tuple[int, str, int, int]]:
    """Per job id: (rows with that id, status, attempts, result rows), read directly."""
    with psycopg.connect(site.direct_conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT j.id::text, count(*) OVER (PARTITION BY j.id), j.status::text, j.attempts,"
            " (SELECT count(*) FROM job_results r WHERE r.job_id = j.id)"
            " FROM jobs j WHERE j.client_id = %s",
            (client_id,),
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


@dataclass
class Workload:
    """Creates, claims and completes in a thread, recording what callers were told."""

    db: Database
    client_id: str
    created: list[str]
    completed: list[tuple[str, float]]  # job id, when (monotonic)
    unavailable: list[BaseException]
    unexpected: list[BaseException]
    stop: threading.Event

    def run(self) -> None:
        jobs = JobRepository(self.db)
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                job = jobs.create(client_id=self.client_id, pdf_url=f"https://e.com/{i}.pdf")
                self.created.append(str(job.id))
                claimed = jobs.claim_next(lease=timedelta(minutes=10), client_id=self.client_id)
                if claimed is None:
                    continue
                jobs.complete(
                    claimed.id,
                    extracted_data={"n": i},
                    confidence_score=0.9,
                    tokens_used=1,
                    attempt=claimed.attempts,
                )
                self.completed.append((str(claimed.id), time.monotonic()))
            except DatabaseUnavailableError as exc:  # the documented error for what may pass
                self.unavailable.append(exc)
                time.sleep(0.1)
            except Exception as exc:
                self.unexpected.append(exc)
                time.sleep(0.1)


def _restart_drill(site: Site, restart: Callable[[], None], client_id: str) -> float:
    """A workload running while ``restart`` happens; returns seconds until it completes again.

    Every acknowledged create is stored exactly once, every acknowledged complete
    is a completed job with one result, no job was claimed twice, and callers only
    saw `DatabaseUnavailableError`.
    """
    with Database(site.proxy_conninfo(), via_proxy=True, pool_max_size=4, pool_timeout=5) as db:
        load = Workload(db, client_id, [], [], [], [], threading.Event())
        worker = threading.Thread(target=load.run, daemon=True)
        worker.start()
        try:
            _until(lambda: len(load.completed) >= 5, "five completes before the restart", 20)
            restart()
            ended = time.monotonic()
            _until(
                lambda: sum(when > ended for _, when in load.completed) >= 5,
                "five completes after the restart",
                30,
            )
        finally:
            load.stop.set()
            worker.join(30)
    assert not worker.is_alive()
    assert not load.unexpected, load.unexpected[:3]
    recovered = min(when for _, when in load.completed if when > ended) - ended
    stored = _stored(site, client_id)
    assert all(stored[job_id][0] == 1 for job_id in load.created)
    assert all(stored[job_id][1:] == ("completed", 1, 1) for job_id, _ in load.completed)
    assert max(attempts for _, _, attempts, _ in stored.values()) <= 1  # none claimed twice
    return recovered


def test_a_proxy_restart_loses_no_acknowledged_write(site: Site) -> None:
    def restart() -> None:
        site.proxy.restart(timeout=5)
        _wait_for(lambda: _select_1(site.proxy_conninfo()), "the proxy after its restart")

    recovered = _restart_drill(site, restart, "proxy-restart")
    assert recovered < 10  # bounded: within the pool timeout and a few retries


def test_a_server_restart_behind_the_proxy_loses_no_acknowledged_write(site: Site) -> None:
    def restart() -> None:
        site.db.restart(timeout=10)
        _wait_for(lambda: _select_1(site.direct_conninfo()), "the server after its restart")

    recovered = _restart_drill(site, restart, "server-restart")
    assert recovered < 15


# -- a network partition between client and proxy ---------------------------------------


def test_a_partition_fails_calls_within_their_timeouts_and_heals(site: Site) -> None:
    limit = 4 + 5 + 2  # tcp_user_timeout + pool_timeout + slack
    with Database(
        site.proxy_conninfo(),
        via_proxy=True,
        pool_max_size=2,
        pool_timeout=5,
        retry_attempts=1,
        tcp_user_timeout=4000,
    ) as db:
        jobs = JobRepository(db)
        job = jobs.create(client_id="partition", pdf_url="https://example.com/p.pdf")
        site.network.disconnect(site.proxy)
        outcome: list[object] = []
        try:

            def call() -> None:
                started = time.monotonic()
                try:
                    jobs.get(job.id, client_id="partition")
                    outcome.append("answered")
                except Exception as exc:
                    outcome.append(exc)
                outcome.append(time.monotonic() - started)

            worker = threading.Thread(target=call, daemon=True)
            worker.start()
            worker.join(limit + 10)
            hung = worker.is_alive()
        finally:
            site.network.connect(site.proxy, ipv4_address=site.proxy_ip, aliases=[PROXY_NAME])
        if hung:
            worker.join(30)
        assert not hung, f"a call hung past {limit + 10} s during the partition"
        assert isinstance(outcome[0], DatabaseUnavailableError), outcome
        assert isinstance(outcome[1], float)
        assert outcome[1] < limit
        _wait_for(lambda: _select_1(site.proxy_conninfo()), "the proxy after the partition")
        healed = _wait_for(lambda: jobs.get(job.id, client_id="partition"), "the library", 30)
        assert healed < 15
