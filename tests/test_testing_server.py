"""cira_db.testing._server: the TestServer (its repr) and the order servers are found in."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from cira_db.testing import TestServer
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
