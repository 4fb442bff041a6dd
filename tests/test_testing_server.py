"""cira_db.testing._server: the TestServer (its repr) and the order servers are found in."""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from cira_db.errors import ConfigurationError
from cira_db.testing import TestServer, _server
from cira_db.testing._server import redacted_url

pytest_plugins = ["pytester"]

# -- the repr never shows the password (issue 7) --------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://admin:s3cr%40tPW@db.example.com:5433/postgres?sslmode=require",
        "postgresql://postgres:s3cr%40tPW@/postgres?host=/tmp/x/pgdata",
        "postgresql://admin@db.example.com/postgres?password=s3cr%40tPW",
        "host=db.example.com port=5433 user=admin password=s3cr@tPW dbname=postgres",
        "postgresql://admin:s3cr%40tPW@[::1]:5433/postgres",
    ],
)
def test_repr_shows_the_url_without_its_password(url: str) -> None:
    server = TestServer(admin_url=url, kind="a kind")
    shown = repr(server)
    assert "s3cr" not in shown
    assert "tPW" not in shown
    assert "a kind" in shown
    # what is shown is the same target, minus the password
    expected = {k: v for k, v in conninfo_to_dict(url).items() if k != "password"}
    assert conninfo_to_dict(redacted_url(url)) == expected
    assert redacted_url(url) in shown
    assert str(server) == shown


def test_repr_of_a_url_libpq_cannot_read_shows_nothing_of_it() -> None:
    shown = repr(TestServer(admin_url="postgresql://admin:s3cr%zzPW@h/db", kind="k"))
    assert "s3cr" not in shown
    assert "unparseable" in shown


@given(st.text(min_size=1, max_size=30))
def test_no_password_reaches_the_repr(tail: str) -> None:
    password = "MARKER" + tail
    url = f"postgresql://admin:{quote(password, safe='')}@db.example.com:5432/postgres"
    shown = repr(TestServer(admin_url=url, kind="k"))
    assert "MARKER" not in shown
    assert quote(password, safe="") not in shown


def test_a_failing_test_does_not_print_the_password(
    pytester: pytest.Pytester, cira_db_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest prints a failing test's fixture values: the URL is there, its password not."""
    params = dict(conninfo_to_dict(cira_db_server.admin_url))
    params["password"] = "PW-MUST-NOT-SHOW"
    # the servers this suite runs on trust local connections, so any password connects
    with_password = "postgresql://?" + "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
    monkeypatch.setenv("CIRA_DB_TEST_URL", with_password)
    pytester.makeconftest('pytest_plugins = ["cira_db.testing"]')
    pytester.makepyfile(
        test_fails="def test_fails(cira_db_server):\n    assert cira_db_server.kind == 'nope'\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--showlocals")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "PW-MUST-NOT-SHOW" not in output
    assert "cira_db_server = TestServer(kind='CIRA_DB_TEST_URL'" in output


# -- the order servers are found in, and the Docker path's fallback (issue 14) --------------


class _Steps:
    """Records which way find_server went; stands in for the Docker and embedded starts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, docker: bool, container: str) -> None:
        self.calls: list[str] = []
        self.images: list[str] = []
        self.container = container  # "ok" or the reason it fails
        monkeypatch.setattr(_server, "_docker_answers", self._docker_answers)
        monkeypatch.setattr(_server, "_container", self._container)
        monkeypatch.setattr(_server, "start_embedded", self._embedded)
        self.docker = docker

    def _docker_answers(self) -> bool:
        self.calls.append("docker?")
        return self.docker

    def _container(self, image: str) -> TestServer:
        self.calls.append("container")
        self.images.append(image)
        if self.container != "ok":
            raise _server.DockerPathError(self.container)
        return TestServer(admin_url="postgresql://c@docker-host:32768/test", kind="a container")

    def _embedded(self, directory: object, *, version: int) -> SimpleNamespace:
        assert directory is None
        self.calls.append(f"embedded {version}")
        return SimpleNamespace(url="postgresql://postgres@/postgres?host=/tmp/x", stop=lambda: None)


@pytest.fixture
def no_server_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("CIRA_DB_TEST_URL", raising=False)
    monkeypatch.delenv("CIRA_DB_TEST_IMAGE", raising=False)
    monkeypatch.delenv("CIRA_DB_TEST_PG_VERSION", raising=False)
    return monkeypatch


def test_the_url_comes_first(no_server_settings: pytest.MonkeyPatch) -> None:
    steps = _Steps(no_server_settings, docker=True, container="ok")
    no_server_settings.setenv("CIRA_DB_TEST_URL", "postgresql://u@somewhere/db")
    no_server_settings.setenv("CIRA_DB_TEST_IMAGE", "cira-db/postgres:16")
    server = _server.find_server()
    assert (server.kind, server.admin_url) == ("CIRA_DB_TEST_URL", "postgresql://u@somewhere/db")
    assert steps.calls == []


@pytest.mark.parametrize(
    ("setting", "image"), [(None, "postgres:16"), ("cira-db/postgres:16", "cira-db/postgres:16")]
)
def test_a_container_where_docker_answers(
    no_server_settings: pytest.MonkeyPatch, setting: str | None, image: str
) -> None:
    steps = _Steps(no_server_settings, docker=True, container="ok")
    if setting:
        no_server_settings.setenv("CIRA_DB_TEST_IMAGE", setting)
    assert _server.find_server().kind == "a container"
    assert steps.calls == ["docker?", "container"]
    assert steps.images == [image]


def test_no_docker_means_the_embedded_server(no_server_settings: pytest.MonkeyPatch) -> None:
    steps = _Steps(no_server_settings, docker=False, container="ok")
    server = _server.find_server()
    assert steps.calls == ["docker?", "embedded 16"]
    assert server.kind == "embedded PostgreSQL 16 (no Docker engine answered)"


def test_a_container_that_cannot_start_falls_back_and_says_why(
    no_server_settings: pytest.MonkeyPatch,
) -> None:
    steps = _Steps(no_server_settings, docker=True, container="APIError: pull access denied")
    server = _server.find_server()
    assert steps.calls == ["docker?", "container", "embedded 16"]
    assert server.kind == (
        "embedded PostgreSQL 16 (Docker answered but postgres:16 did not start "
        "(APIError: pull access denied))"
    )


def test_asking_for_postgresql_18_goes_to_the_embedded_server_without_docker(
    no_server_settings: pytest.MonkeyPatch,
) -> None:
    steps = _Steps(no_server_settings, docker=True, container="ok")
    no_server_settings.setenv("CIRA_DB_TEST_PG_VERSION", "18")
    server = _server.find_server()
    assert steps.calls == ["embedded 18"]
    assert (
        server.kind
        == "embedded PostgreSQL 18 (CIRA_DB_TEST_PG_VERSION=18 asks for the embedded server)"
    )


@pytest.mark.parametrize(
    ("docker", "reason"),
    [
        (True, "Docker answered but my/pg:16 did not start (APIError: no such image)"),
        (False, "no Docker engine answered"),
    ],
)
def test_asking_for_an_image_fails_instead_of_falling_back(
    no_server_settings: pytest.MonkeyPatch, docker: bool, reason: str
) -> None:
    steps = _Steps(no_server_settings, docker=docker, container="APIError: no such image")
    no_server_settings.setenv("CIRA_DB_TEST_IMAGE", "my/pg:16")
    with pytest.raises(ConfigurationError) as caught:
        _server.find_server()
    assert str(caught.value) == f"CIRA_DB_TEST_IMAGE=my/pg:16 asks for Docker: {reason}"
    assert "embedded 16" not in steps.calls


class _FailingContainer:
    stopped = 0

    def __init__(self, image: str, *, driver: str | None) -> None:
        assert driver is None
        self.image = image

    def start(self) -> None:
        warnings.warn("testcontainers' own deprecation", DeprecationWarning, stacklevel=1)
        raise RuntimeError("container exited\nwith code 1")

    def stop(self) -> None:
        type(self).stopped += 1


def test_a_failed_container_start_is_one_line_and_cleaned_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_server, "_postgres_container_class", lambda: _FailingContainer)
    monkeypatch.setattr(_server, "_reaper_or_not", lambda: None)
    with pytest.raises(_server.DockerPathError) as caught:
        _server._container("cira-db/postgres:16")
    assert str(caught.value) == "RuntimeError: container exited with code 1"
    assert _FailingContainer.stopped == 1


def test_postgres_container_imports_without_a_deprecation_warning() -> None:
    """Under ``-W error`` (as the suite runs) the import must not warn (testcontainers 4.15)."""
    code = (
        "from cira_db.testing._server import _postgres_container_class as c\n"
        "print(c().__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("testcontainers.")


def test_the_summary_names_the_server_used(
    pytester: pytest.Pytester, cira_db_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRA_DB_TEST_URL", cira_db_server.admin_url)
    pytester.makeconftest('pytest_plugins = ["cira_db.testing"]')
    pytester.makepyfile(test_uses="def test_uses(cira_db_url):\n    assert cira_db_url\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["cira_db test server: CIRA_DB_TEST_URL"])
