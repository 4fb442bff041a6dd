"""Packaged migrations pass squawk; ignored rules are explained in .squawk.toml and the files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "src" / "cira_db" / "sql" / "migrations"


def squawk() -> str:
    found = shutil.which("squawk") or str(Path(sys.executable).parent / "squawk")
    if not Path(found).exists():
        pytest.fail("squawk is not installed; it comes with the dev extra (squawk-cli)")
    return found


def run_squawk(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [squawk(), "--config", str(ROOT / ".squawk.toml"), "--reporter", "gcc", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_packaged_migrations_pass_squawk() -> None:
    files = sorted(MIGRATIONS.glob("*.sql"))
    assert len(files) >= 4
    result = run_squawk(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_squawk_catches_an_unsafe_migration(tmp_path: Path) -> None:
    """The lint can fail: a blocking index build on a live table is flagged."""
    bad = tmp_path / "0099_bad.sql"
    bad.write_text("CREATE INDEX idx_bad ON jobs (pdf_url);\nALTER TABLE jobs DROP COLUMN x;\n")
    result = run_squawk(bad)
    assert result.returncode != 0
    assert "require-concurrent-index-creation" in result.stdout
    assert "ban-drop-column" in result.stdout


def test_every_ignored_rule_is_explained() -> None:
    for path in MIGRATIONS.glob("*.sql"):
        text = path.read_text()
        if "squawk-ignore-file" in text:
            assert "-- squawk" in text.split("squawk-ignore-file", 1)[1], path.name
