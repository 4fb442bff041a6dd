"""Credentials from AWS: Secrets Manager secrets and RDS IAM tokens.

boto3 is imported only when one of these is used (``cira-db[aws]``); the core
import of cira_db never loads it. Nothing here logs a password or a token.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from cira_db.errors import ConfigurationError, DatabaseUnavailableError

__all__ = ["SecretProvider", "iam_token", "is_auth_failure"]

_log = logging.getLogger("cira_db.aws")
# Re-fetching a secret after an authentication failure happens at most this
# often, so a wrong password cannot turn into a Secrets Manager request storm.
_MIN_REFRESH_INTERVAL = 5.0
# The clock of that limit (a module attribute, so tests can advance it).
_monotonic = time.monotonic
_AUTH_FAILURES = (
    "password authentication failed",
    "pam authentication failed",  # RDS IAM token refused
    "iam authentication failed",  # RDS Proxy
    "authentication failed for user",
)


def is_auth_failure(exc: BaseException) -> bool:
    """True when the server refused the credentials (not the connection)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in ("28P01", "28000"):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _AUTH_FAILURES)


def _region(region: str | None) -> str | None:
    """``CIRA_DB_AWS_REGION``, else ``AWS_REGION`` (set in Lambda), else ``AWS_DEFAULT_REGION``."""
    return region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def _client(service: str, region: str | None) -> Any:
    try:
        import boto3  # optional dependency, loaded on first use
    except ImportError:
        missing = True
    else:
        missing = False
    if missing:
        setting = "CIRA_DB_IAM_AUTH" if service == "rds" else "CIRA_DB_SECRET_ARN"
        raise ConfigurationError(
            f"{setting} needs boto3 (for {service}), which is not installed: "
            "pip install 'cira-db[aws]' (the AWS Lambda Python runtimes include it)"
        )
    if service == "rds":
        return boto3.client("rds", region_name=_region(region))
    return boto3.client("secretsmanager", region_name=_region(region))


_NOT_JSON = object()


class SecretProvider:
    """Fetches an RDS-style JSON secret once, caches it, re-fetches after a rotation."""

    def __init__(self, secret_arn: str, *, region: str | None = None, client: Any = None) -> None:
        self._arn = secret_arn
        self._region = region
        self._client = client
        self._value: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SecretProvider {self._arn} cached={self._value is not None}>"

    def get(self) -> dict[str, Any]:
        """The secret's fields, fetched on first use."""
        with self._lock:
            if self._value is None:
                self._value = self._fetch()
            return self._value

    def refresh(self) -> bool:
        """Fetch again (after an authentication failure); False if fetched too recently."""
        with self._lock:
            if _monotonic() - self._fetched_at < _MIN_REFRESH_INTERVAL and self._value:
                return False
            _log.info("re-fetching the database secret after an authentication failure")
            self._value = self._fetch()
            return True

    def _fetch(self) -> dict[str, Any]:
        if self._client is None:
            self._client = _client("secretsmanager", self._region)
        try:
            response = self._client.get_secret_value(SecretId=self._arn)
        except Exception as exc:  # botocore errors: no network, access denied, not found
            raise DatabaseUnavailableError(
                f"could not read the database secret {self._arn} ({type(exc).__name__})"
            ) from exc
        self._fetched_at = _monotonic()
        value: Any = None
        try:
            value = json.loads(response["SecretString"])
        except (KeyError, TypeError, ValueError):
            # Raised below, outside this block: a JSONDecodeError keeps the whole
            # SecretString (its .doc), and would ride along as __context__.
            value = _NOT_JSON
        if value is _NOT_JSON:
            raise ConfigurationError(
                f"the secret {self._arn} is not a JSON object with username and password "
                "(its SecretString is not JSON)"
            )
        if not isinstance(value, dict):
            raise ConfigurationError(f"the secret {self._arn} is not a JSON object")
        return value


def iam_token(*, host: str, port: int, user: str, region: str | None, client: Any = None) -> str:
    """A 15-minute RDS IAM authentication token for one new connection.

    Made locally by signing (no network call); never log it.
    """
    if client is None:
        client = _client("rds", region)
    with _botocore_quiet():
        token = client.generate_db_auth_token(
            DBHostname=host, Port=port, DBUsername=user, Region=_region(region)
        )
    return str(token)


class _QuietThread(logging.Filter):
    """Drops botocore's records made by a thread while it is signing a token.

    At DEBUG, botocore.auth logs the canonical request (with the session
    token), the string to sign and the signature: together, a usable
    password. Other threads, and botocore's records outside the signing, are
    left alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "signing", False)


_QUIET = _QuietThread()


class _botocore_quiet:  # noqa: N801 - a context manager
    """While signing: every existing ``botocore`` logger drops this thread's records."""

    def __enter__(self) -> None:
        manager = logging.Logger.manager
        for name in list(manager.loggerDict):
            if name == "botocore" or name.startswith("botocore."):
                logger = logging.getLogger(name)
                if _QUIET not in logger.filters:
                    logger.addFilter(_QUIET)
        _QUIET.local.signing = True

    def __exit__(self, *_: object) -> None:
        _QUIET.local.signing = False
