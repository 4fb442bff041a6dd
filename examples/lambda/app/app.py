"""An API Gateway (REST or HTTP API) Lambda handler on cira_db.

    POST /jobs            {"pdf_url": "...", "job_id": "<optional uuid, makes retries safe>"}
    GET  /jobs            ?status=queued&limit=20&cursor=...
    GET  /jobs/{job_id}   the job, with its result once there is one

The caller is whoever API Gateway authenticated: `client_id_from_event`
reads the authorizer's client id (or the API key's id), never a value from
the request body, so one client cannot read or create another's jobs.

The `Database` is built and opened once per execution environment, outside
the handler (during INIT). Inside Lambda its pool holds at most one
connection and opens it on first use; it is checked before reuse after the
environment was frozen, and it is never closed by the handler.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cira_db import Database, JobRepository, JobResultRepository
from cira_db.aws import client_id_from_event
from cira_db.errors import (
    CiraDbError,
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
    ValidationError,
)

DB = Database.from_env()
DB.open(wait=False)
_CURSOR_KEY = os.environ.get("CURSOR_KEY", "").encode() or None
JOBS = JobRepository(DB, cursor_key=_CURSOR_KEY)
RESULTS = JobResultRepository(DB)


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """Route one API Gateway request; every answer is a JSON response, errors included."""
    try:
        client_id = client_id_from_event(event)
        status, body = _route(event, client_id)
    except ValidationError as exc:
        status, body = 400, {"error": str(exc), "field": exc.field}
    except NotFoundError:
        status, body = 404, {"error": "not found"}
    except ConflictError as exc:
        status, body = 409, {"error": str(exc)}
    except DatabaseUnavailableError:
        status, body = 503, {"error": "the database is unavailable; retry later"}
    except CiraDbError:
        status, body = 500, {"error": "internal error"}
    return _response(status, body)


def _route(event: dict[str, Any], client_id: str) -> tuple[int, dict[str, Any]]:
    method = _method(event)
    job_id: str | None = (event.get("pathParameters") or {}).get("job_id")
    if method == "POST" and job_id is None:
        return 201, _create(event, client_id)
    if method == "GET" and job_id is None:
        return 200, _list(event, client_id)
    if method == "GET" and job_id is not None:
        return 200, _get(job_id, client_id)
    return 405, {"error": f"{method} is not supported here"}


def _create(event: dict[str, Any], client_id: str) -> dict[str, Any]:
    body = _json_body(event)
    if "pdf_url" not in body:
        raise ValidationError("pdf_url", "is required")
    job = JOBS.create(client_id=client_id, pdf_url=body["pdf_url"], job_id=body.get("job_id"))
    return job.to_json_dict()


def _list(event: dict[str, Any], client_id: str) -> dict[str, Any]:
    query = event.get("queryStringParameters") or {}
    limit = query.get("limit", "20")
    if not limit.isdigit():
        raise ValidationError("limit", "must be a whole number")
    page = JOBS.list(
        client_id=client_id,
        status=query.get("status"),
        limit=int(limit),
        cursor=query.get("cursor"),
    )
    return {"items": [job.to_json_dict() for job in page.items], "next_cursor": page.next_cursor}


def _get(job_id: str, client_id: str) -> dict[str, Any]:
    job = JOBS.get(job_id, client_id=client_id)
    result = RESULTS.find_for_job(job.id, client_id=client_id)
    return {"job": job.to_json_dict(), "result": result.to_json_dict() if result else None}


def _method(event: dict[str, Any]) -> str:
    if "httpMethod" in event:  # REST API (payload 1.0)
        return str(event["httpMethod"])
    return str(((event.get("requestContext") or {}).get("http") or {}).get("method", ""))


def _json_body(event: dict[str, Any]) -> dict[str, Any]:
    text = event.get("body") or "{}"
    if event.get("isBase64Encoded"):
        raise ValidationError("body", "send JSON, not a binary body")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise ValidationError("body", "is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValidationError("body", 'must be a JSON object such as {"pdf_url": "..."}')
    return body


def _response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }
