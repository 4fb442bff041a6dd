"""A FastAPI service on cira_db.aio: create, list and get jobs.

The pool is opened once, in the application's lifespan, on the event loop
that serves the requests, and closed when the application stops. Each
request awaits one repository call; nothing blocks the loop.

Run it (with ``CIRA_DB_URL`` or the other ``CIRA_DB_*`` settings in the
environment)::

    uvicorn app:app --app-dir examples/fastapi

The caller's client id comes from the ``X-Client-Id`` header here to keep
the example short; a real service takes it from its authentication (an API
key's id, a token's claim), never from a value the caller may choose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cira_db.aio import AsyncDatabase, AsyncJobRepository
from cira_db.errors import (
    CiraDbError,
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
    ValidationError,
)

ClientId = Annotated[str, Header(alias="X-Client-Id")]


class NewJob(BaseModel):
    """The body of ``POST /jobs``."""

    pdf_url: str
    job_id: UUID | None = None  # send one to make a retried request safe


_STATUS = {ValidationError: 422, NotFoundError: 404, ConflictError: 409}


async def cira_db_error(request: Request, exc: Exception) -> JSONResponse:
    """cira_db errors as HTTP answers; their messages are safe to show."""
    status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)
    if isinstance(exc, DatabaseUnavailableError):
        status = 503
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, ValidationError):
        body["field"] = exc.field
    return JSONResponse(body, status_code=status)


def create_app(database: AsyncDatabase | None = None) -> FastAPI:
    """The application; ``database`` defaults to ``AsyncDatabase.from_env()``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = database if database is not None else AsyncDatabase.from_env()
        async with db:  # the pool opens here, on the serving loop, and closes at shutdown
            app.state.jobs = AsyncJobRepository(db)
            yield

    app = FastAPI(title="cira_db jobs", lifespan=lifespan)
    app.add_exception_handler(CiraDbError, cira_db_error)

    def repository(request: Request) -> AsyncJobRepository:
        jobs: AsyncJobRepository = request.app.state.jobs
        return jobs

    @app.post("/jobs", status_code=201)
    async def create_job(body: NewJob, client_id: ClientId, request: Request) -> dict[str, Any]:
        job = await repository(request).create(
            client_id=client_id, pdf_url=body.pdf_url, job_id=body.job_id
        )
        return job.to_json_dict()

    @app.get("/jobs")
    async def list_jobs(
        client_id: ClientId,
        request: Request,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        page = await repository(request).list(
            client_id=client_id, status=status, limit=limit, cursor=cursor
        )
        return {
            "items": [job.to_json_dict() for job in page.items],
            "next_cursor": page.next_cursor,
        }

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str, client_id: ClientId, request: Request) -> dict[str, Any]:
        job = await repository(request).get(job_id, client_id=client_id)
        return job.to_json_dict()

    return app


app = create_app()
