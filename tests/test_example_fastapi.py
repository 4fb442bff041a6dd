"""examples/fastapi/app.py: its endpoints against a real database, through FastAPI's test client."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from cira_db.aio import AsyncDatabase

APP = Path(__file__).resolve().parents[1] / "examples" / "fastapi" / "app.py"
A = {"X-Client-Id": "client-a"}
B = {"X-Client-Id": "client-b"}


def _load_example(monkeypatch: pytest.MonkeyPatch, url: str) -> ModuleType:
    monkeypatch.setenv("CIRA_DB_URL", url)  # the module-level app reads it
    spec = importlib.util.spec_from_file_location("cira_db_fastapi_example", APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, cira_db_url: str) -> Iterator[TestClient]:
    example = _load_example(monkeypatch, cira_db_url)
    with TestClient(example.app) as test_client:  # runs the lifespan: the pool opens
        yield test_client


def test_create_get_and_list(client: TestClient) -> None:
    made = client.post("/jobs", json={"pdf_url": "https://example.com/a.pdf"}, headers=A)
    assert made.status_code == 201
    job = made.json()
    assert job["status"] == "queued"
    assert job["client_id"] == "client-a"

    got = client.get(f"/jobs/{job['id']}", headers=A)
    assert got.status_code == 200
    assert got.json() == job

    for n in range(3):
        client.post("/jobs", json={"pdf_url": f"https://example.com/{n}.pdf"}, headers=A)
    first = client.get("/jobs", params={"limit": 2}, headers=A).json()
    assert len(first["items"]) == 2
    rest = client.get("/jobs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=A)
    assert len(rest.json()["items"]) == 2
    assert rest.json()["next_cursor"] is None
    seen = {item["id"] for item in first["items"] + rest.json()["items"]}
    assert job["id"] in seen
    assert len(seen) == 4


def test_errors_map_to_http_answers(client: TestClient) -> None:
    job = client.post("/jobs", json={"pdf_url": "https://example.com/a.pdf"}, headers=A).json()
    assert client.get(f"/jobs/{job['id']}", headers=B).status_code == 404  # another client's
    assert client.get(f"/jobs/{uuid.uuid4()}", headers=A).status_code == 404
    bad = client.post("/jobs", json={"pdf_url": "ftp://example.com/a.pdf"}, headers=A)
    assert bad.status_code == 422
    assert bad.json()["field"] == "pdf_url"
    conflict = client.post(
        "/jobs", json={"pdf_url": "https://example.com/b.pdf", "job_id": job["id"]}, headers=A
    )
    assert conflict.status_code == 409
    again = client.post(
        "/jobs", json={"pdf_url": "https://example.com/a.pdf", "job_id": job["id"]}, headers=A
    )
    assert again.status_code == 201
    assert again.json() == job  # the same request again: the same job, one row
    tampered = client.get("/jobs", params={"cursor": "not-a-cursor"}, headers=A)
    assert tampered.status_code == 422


def test_the_pool_lives_for_the_lifespan(monkeypatch: pytest.MonkeyPatch, cira_db_url: str) -> None:
    example = _load_example(monkeypatch, cira_db_url)
    db = AsyncDatabase(cira_db_url)
    app = example.create_app(db)
    assert not db.is_open
    with TestClient(app) as test_client:
        assert db.is_open
        assert test_client.get("/jobs", headers=A).json() == {"items": [], "next_cursor": None}
    assert not db.is_open
