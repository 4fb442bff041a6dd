"""AWS Lambda helpers: who is calling, and the one-off migration function.

Nothing here imports boto3; credentials come through `cira_db.Database`
settings (``CIRA_DB_SECRET_ARN``, ``CIRA_DB_IAM_AUTH``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cira_db._database import Database
from cira_db.errors import ValidationError
from cira_db.migrations import Migrator

__all__ = ["client_id_from_event", "migrate_handler"]

_log = logging.getLogger("cira_db.aws")
_MAX_CLIENT_ID = 50


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def client_id_from_event(event: Mapping[str, Any], *, authorizer_key: str = "client_id") -> str:
    """The calling client's id from an API Gateway event (REST v1 or HTTP API v2).

    Looks, in order, at a Lambda authorizer's context value ``authorizer_key``
    (v1: ``requestContext.authorizer.<key>``; v2:
    ``requestContext.authorizer.lambda.<key>``), then at the REST API key's
    *id* ``requestContext.identity.apiKeyId``. The API key's secret value
    (``identity.apiKey``) is never used. Raises `ValidationError` (field
    ``event``) when neither is present or the value is not a usable client id.
    """
    if not isinstance(event, Mapping):
        raise ValidationError("event", "an API Gateway event (a JSON object) is required")
    context = event.get("requestContext")
    authorizer = _get(context, "authorizer")
    candidates = [
        _get(authorizer, "lambda", authorizer_key),  # HTTP API v2, Lambda authorizer
        _get(authorizer, authorizer_key),  # REST v1, Lambda authorizer (flattened context)
        _get(context, "identity", "apiKeyId"),  # REST v1, API key id (never the key itself)
    ]
    for value in candidates:
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValidationError("event", "the client id in the event is not a string")
        text = str(value).strip()
        if not text or len(text) > _MAX_CLIENT_ID:
            raise ValidationError(
                "event", f"the client id in the event must be 1..{_MAX_CLIENT_ID} characters"
            )
        return text
    raise ValidationError(
        "event",
        f"no client id: expected requestContext.authorizer['{authorizer_key}'] "
        "(Lambda authorizer) or requestContext.identity.apiKeyId (REST API key)",
    )


def migrate_handler(event: Mapping[str, Any] | None, context: Any) -> dict[str, Any]:
    """Entry point of the one-off ``DbMigrateFunction``.

    Reads connection settings from ``CIRA_DB_*`` (use ``CIRA_DB_MIGRATION_URL``
    or ``CIRA_DB_HOST`` for the database instance, not the proxy). The event
    may hold ``{"action": "apply" | "status" | "rollback", "to": N,
    "dry_run": bool}``; the default is to apply everything pending. Returns
    what was done and the resulting status; a failure raises, so the
    invocation (and a CDK trigger or custom resource) fails.
    """
    event = event or {}
    action = event.get("action", "apply")
    to = event.get("to")
    if to is not None and (isinstance(to, bool) or not isinstance(to, int) or to < 0):
        raise ValidationError("to", "must be a migration version (an integer >= 0)")
    dry_run = bool(event.get("dry_run", False))
    function = getattr(context, "function_name", None)
    migrator = Migrator(
        Database.from_env(pool=False),
        applied_by=f"lambda:{function}" if function else None,
    )
    if action == "apply":
        done = migrator.apply(to=to, dry_run=dry_run)
    elif action == "rollback":
        if to is None:
            raise ValidationError("to", "rollback needs the version to go back to")
        done = migrator.rollback(to=to, dry_run=dry_run)
    elif action == "status":
        done = []
    else:
        raise ValidationError("action", "must be one of apply, status, rollback")
    status = migrator.status()
    _log.info(
        "migrate_handler %s: %d migration(s)%s", action, len(done), " (dry run)" if dry_run else ""
    )
    return {
        "action": action,
        "dry_run": dry_run,
        "migrations": [m.filename for m in done],
        "status": [
            {
                "version": s.version,
                "name": s.name,
                "applied_at": s.applied_at.isoformat() if s.applied_at else None,
                "checksum_matches": s.checksum_matches,
            }
            for s in status
        ],
    }
