"""AWS Lambda helpers: who is calling, and the one-off migration function.

Nothing here imports boto3; credentials come through `cira_db.Database`
settings (``CIRA_DB_SECRET_ARN``, ``CIRA_DB_IAM_AUTH``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cira_db._database import Database
from cira_db._validation import check_client_id
from cira_db.errors import ValidationError
from cira_db.migrations import Migrator

__all__ = ["client_id_from_event", "migrate_handler"]

_log = logging.getLogger("cira_db.aws")


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _event_document(event: object) -> Mapping[str, Any]:
    """The event as a mapping: a dict, or a Powertools event object's ``raw_event``."""
    raw = getattr(event, "raw_event", None)
    if isinstance(raw, Mapping):
        return raw
    if isinstance(event, Mapping):
        return event
    raise ValidationError(
        "event", "an API Gateway event (a JSON object or a Powertools event) is required"
    )


def client_id_from_event(
    event: Mapping[str, Any] | object,
    *,
    authorizer_key: str = "client_id",
    claim_key: str | None = None,
) -> str:
    """The calling client's id from an API Gateway event (REST v1 or HTTP API v2).

    ``event`` is the event dict, or an AWS Lambda Powertools event object
    (anything with a ``raw_event`` mapping). The first of these that is
    present (not missing, not null) is the client id:

    1. HTTP API Lambda authorizer: ``requestContext.authorizer.lambda.<authorizer_key>``
    2. HTTP API JWT authorizer: ``requestContext.authorizer.jwt.claims.<claim_key>``
    3. REST Lambda authorizer: ``requestContext.authorizer.<authorizer_key>``
    4. REST Cognito user-pool authorizer: ``requestContext.authorizer.claims.<claim_key>``
    5. REST API key: ``requestContext.identity.apiKeyId`` (the key's id; the
       secret key value ``identity.apiKey`` is never read)

    ``claim_key`` defaults to ``authorizer_key``. The value must pass the one
    client-id rule of the library (`cira_db._validation.check_client_id`):
    nothing is trimmed or converted. Raises `ValidationError` when no source
    is present (field ``event``) or the value breaks the rule (field: the
    path it came from).
    """
    document = _event_document(event)
    claim = authorizer_key if claim_key is None else claim_key
    context = document.get("requestContext")
    authorizer = _get(context, "authorizer")
    sources = [
        (("lambda", authorizer_key), authorizer),
        (("jwt", "claims", claim), authorizer),
        ((authorizer_key,), authorizer),
        (("claims", claim), authorizer),
        (("identity", "apiKeyId"), context),
    ]
    for path, parent in sources:
        value = _get(parent, *path)
        if value is not None:
            where = "requestContext." + ("" if parent is context else "authorizer.")
            return check_client_id(value, where + ".".join(path))
    raise ValidationError(
        "event",
        f"no client id: expected requestContext.authorizer.lambda['{authorizer_key}'] or "
        f".jwt.claims['{claim}'] (HTTP API), requestContext.authorizer['{authorizer_key}'] or "
        f".claims['{claim}'] (REST), or requestContext.identity.apiKeyId (REST API key)",
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
