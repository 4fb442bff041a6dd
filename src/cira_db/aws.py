"""AWS Lambda helpers: who is calling, and the one-off migration function.

Nothing here imports boto3; credentials come through `cira_db.Database`
settings (``CIRA_DB_SECRET_ARN``, ``CIRA_DB_IAM_AUTH``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from cira_db._database import Database
from cira_db._errors_map import wrap_errors
from cira_db._validation import check_client_id
from cira_db.errors import CiraDbError, MigrationError, ValidationError
from cira_db.migrations import Migrator

if TYPE_CHECKING:
    from cira_db._settings import DatabaseSettings
    from cira_db.migrations import Migration, MigrationStatus

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


_ACTIONS = ("apply", "status", "rollback")
_EVENT_KEYS = frozenset({"action", "to", "dry_run", "database"})
ALLOW_ROLLBACK_ENV = "CIRA_DB_ALLOW_ROLLBACK"
# Kept back from the remaining time: reporting, closing, and Lambda's own shutdown.
_SAFETY_MS = 3_000
# No migration starts with less than this left after the safety margin.
_MIN_STEP_MS = 2_000
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)?\s*")
_UNIT_MS = {None: 1, "ms": 1, "s": 1_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True)
class _MigrateEvent:
    action: str
    to: int | None
    dry_run: bool
    database: str | None

    @classmethod
    def parse(cls, event: object) -> _MigrateEvent:
        if event is None:
            event = {}
        if not isinstance(event, Mapping):
            raise ValidationError("event", 'must be a JSON object such as {"action": "apply"}')
        unknown = sorted(str(k) for k in event if k not in _EVENT_KEYS)
        if unknown:
            raise ValidationError(
                "event",
                f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_EVENT_KEYS))}",
            )
        action = event.get("action", "apply")
        if action not in _ACTIONS:
            raise ValidationError("action", f"must be one of {', '.join(_ACTIONS)}")
        to = event.get("to")
        if to is not None and (isinstance(to, bool) or not isinstance(to, int) or to < 0):
            raise ValidationError("to", "must be a migration version (an integer >= 0)")
        if action == "rollback" and to is None:
            raise ValidationError("to", "rollback needs the version to go back to")
        dry_run = event.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ValidationError("dry_run", "must be true or false")
        database = event.get("database")
        if database is not None and (not isinstance(database, str) or not database):
            raise ValidationError("database", "must be the database's name (a string)")
        return cls(action, to, dry_run, database)


class _Budget:
    """The Lambda context's remaining time, turned into migration timeouts."""

    def __init__(self, context: Any) -> None:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        self._remaining = remaining if callable(remaining) else None

    def overrides(self, settings: DatabaseSettings) -> dict[str, Any] | None:
        """Settings for the next step, or None when too little time is left to start it."""
        if self._remaining is None:
            return {}
        available = int(self._remaining()) - _SAFETY_MS
        if available < _MIN_STEP_MS:
            return None
        lock_wait_ms = min(int(settings.migration_lock_wait * 1000), available // 4)
        statement_ms = available - lock_wait_ms
        # A lock wait ends first, so a blocked migration reports the lock, not a timeout.
        lock_ms = min(
            _duration_ms(settings.migration_lock_timeout) or statement_ms, statement_ms // 2
        )
        return {
            "migration_lock_wait": max(lock_wait_ms, 1) / 1000,
            "migration_statement_timeout": f"{statement_ms}ms",
            "migration_lock_timeout": f"{lock_ms}ms",
        }


def _duration_ms(text: str) -> int | None:
    """A PostgreSQL duration setting (``"10s"``, ``"15min"``, ``"500"``) in ms; None if unknown."""
    match = _DURATION.fullmatch(text)
    if not match:
        return None
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def migrate_handler(event: Mapping[str, Any] | None, context: Any) -> dict[str, Any]:
    """Entry point of the one-off ``DbMigrateFunction``.

    Reads connection settings from ``CIRA_DB_*`` (use ``CIRA_DB_MIGRATION_URL``
    or ``CIRA_DB_HOST`` for the database instance, not the proxy). The event
    may hold ``{"action": "apply" | "status" | "rollback", "to": N,
    "dry_run": bool, "database": "<name>"}``; the default is to apply
    everything pending. A malformed event raises `ValidationError`.

    ``rollback`` runs only when the function's environment sets
    ``CIRA_DB_ALLOW_ROLLBACK=1`` and the event's ``database`` is the name
    of the database the function connects to (when given, ``database`` is
    checked for every action); otherwise it raises `ValidationError` and
    changes nothing.

    Migrations run one version at a time. Before each, the context's
    remaining time (``context.get_remaining_time_in_millis()``) less a
    safety margin sets ``lock_timeout``, ``statement_timeout`` and the wait
    for the migration lock, so a step ends before Lambda kills the function;
    when too little is left, no further step starts and `MigrationError`
    says what ran and what is still pending (run the function again to
    continue). Returns what was done and the resulting status; any failure
    raises, so the invocation (and a CDK trigger or custom resource) fails.
    """
    request = _MigrateEvent.parse(event)
    function = getattr(context, "function_name", None)
    applied_by = f"lambda:{function}" if isinstance(function, str) and function else None
    db = Database.from_env(pool=False)
    database = _connected_database(db)
    _check_guard(request, database)
    migrator = Migrator(db, applied_by=applied_by)
    done: list[str] = []
    if request.action == "apply":
        plan = migrator.apply(to=request.to, dry_run=True)
    elif request.action == "rollback":
        plan = migrator.rollback(to=cast(int, request.to), dry_run=True)
    else:
        plan = []
    if request.dry_run:
        done = [m.filename for m in plan]
    else:
        done = _run_steps(request, plan, _Budget(context), applied_by)
    _log.info(
        "migrate_handler %s on %s: %d migration(s)%s",
        request.action,
        database,
        len(done),
        " (dry run)" if request.dry_run else "",
    )
    return {
        "action": request.action,
        "dry_run": request.dry_run,
        "database": database,
        "migrations": done,
        "pending": [m.filename for m in migrator.pending()],
        "status": [_status_json(s) for s in migrator.status()],
    }


def _connected_database(db: Database) -> str:
    """The name of the database the migrations would act on (one direct connection)."""
    with wrap_errors("connect for migrations"):
        conn = db.connect_direct(for_migrations=True)
        try:
            return str(conn.info.dbname)
        finally:
            conn.close()


def _check_guard(request: _MigrateEvent, database: str) -> None:
    """Refuse a rollback the environment does not allow, or a database the event does not name."""
    if request.database is not None and request.database != database:
        raise ValidationError(
            "database",
            f"the event names database {request.database!r} but this function is connected "
            f"to {database!r}; nothing was changed",
        )
    if request.action != "rollback":
        return
    if os.environ.get(ALLOW_ROLLBACK_ENV) != "1":
        raise ValidationError(
            "action",
            f"rollback is disabled: set {ALLOW_ROLLBACK_ENV}=1 in the function's environment "
            "to allow it; nothing was changed",
        )
    if request.database is None:
        raise ValidationError(
            "database",
            f'rollback must name the database it acts on ("database": "{database}"); '
            "nothing was changed",
        )


def _run_steps(
    request: _MigrateEvent, plan: list[Migration], budget: _Budget, applied_by: str | None
) -> list[str]:
    """Run ``plan`` one migration at a time, each with timeouts from the remaining time."""
    done: list[str] = []
    for index, migration in enumerate(plan):
        base = Database.from_env(pool=False)
        overrides = budget.overrides(base.settings)
        pending = [m.filename for m in plan[index:]]
        if overrides is None:
            raise MigrationError(
                f"too little time left to start {migration.filename}: ran {done or 'none'}; "
                f"still pending {pending}; invoke the function again to continue"
            )
        step = Migrator(Database.from_env(pool=False, **overrides), applied_by=applied_by)
        try:
            if request.action == "apply":
                step.apply(to=migration.version)
            else:
                step.rollback(to=migration.version - 1)
        except CiraDbError as exc:
            raise MigrationError(f"{exc}; ran {done or 'none'}; still pending {pending}") from exc
        done.append(migration.filename)
    return done


def _status_json(status: MigrationStatus) -> dict[str, Any]:
    return {
        "version": status.version,
        "name": status.name,
        "applied_at": status.applied_at.isoformat() if status.applied_at else None,
        "checksum_matches": status.checksum_matches,
    }
