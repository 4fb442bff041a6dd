"""Connection settings: from arguments or ``CIRA_DB_*`` environment variables.

Settings are values and their validation only. Where a connection goes, with
what TLS and credentials, is decided from them by the connection plan
(`cira_db._plan`).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from cira_db.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DatabaseSettings", "SslMode"]

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

_PROXY_HOST = re.compile(
    r"^[a-z0-9-]+\.(?:endpoint\.)?proxy-[a-z0-9]+\.[a-z0-9-]+\.rds\.amazonaws\.com(?:\.cn)?$"
)
_ENV_PREFIX = "CIRA_DB_"
# A PostgreSQL duration setting in milliseconds: a number and an optional unit.
_DURATION = re.compile(r"^(\d+)(ms|s|min|h)?$")
_UNIT_MS = {None: 1, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}
# PostgreSQL keeps these timeouts in an int of milliseconds.
_MAX_TIMEOUT_MS = 2_147_483_647


def is_proxy_host(host: str) -> bool:
    """True for an RDS Proxy endpoint name (default or custom endpoint)."""
    return bool(_PROXY_HOST.match(host.strip().rstrip(".").lower()))


def _check_duration(value: str | None) -> str | None:
    if value is None:
        return None
    match = _DURATION.match(value)
    if match is None:
        raise ValueError("use a whole number with an optional unit ms, s, min or h (e.g. '30s')")
    if int(match.group(1)) * _UNIT_MS[match.group(2)] > _MAX_TIMEOUT_MS:
        raise ValueError(
            f"above PostgreSQL's maximum of {_MAX_TIMEOUT_MS} ms (about 24 days); 0 disables it"
        )
    return value


class DatabaseSettings(BaseModel):
    """How to reach PostgreSQL, and how the pool and retries behave.

    Every field is an argument, and `load` also reads it from the environment
    variable ``CIRA_DB_<FIELD>`` (for example ``CIRA_DB_URL``,
    ``CIRA_DB_SSLMODE``); the constructor reads no environment. A bad value
    raises `ConfigurationError` naming the variable, never a pydantic error.
    Secrets are held as `pydantic.SecretStr`, so ``repr()`` never shows them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: SecretStr | None = Field(
        default=None, description="libpq URL or key=value string; may carry the password."
    )
    host: str | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str | None = None
    user: str | None = None
    password: SecretStr | None = None

    secret_arn: str | None = Field(
        default=None,
        description="Secrets Manager secret (RDS JSON: username, password, host, port, dbname).",
    )
    iam_auth: bool = Field(
        default=False, description="Authenticate with an RDS IAM token made per new connection."
    )
    aws_region: str | None = Field(
        default=None, description="Region for Secrets Manager and IAM tokens; default AWS_REGION."
    )

    migration_url: SecretStr | None = Field(
        default=None,
        description="Direct (not pooled) URL for the migrator, when `url` points at a pooler.",
    )

    sslmode: SslMode | None = Field(
        default=None,
        description="None: verify-full for remote hosts, libpq's default for local ones.",
    )
    sslrootcert: str | None = None
    allow_unverified_tls: bool = Field(
        default=False,
        description="Permit an sslmode weaker than verify-full for a non-local host.",
    )

    application_name: str = Field(default="cira_db", pattern=r"^[A-Za-z0-9_.:@/ -]{0,63}$")
    connect_timeout: int = Field(default=10, ge=1)
    tcp_user_timeout: int = Field(
        default=10_000,
        ge=0,
        le=2_147_483_647,
        description="Milliseconds sent data may stay unacknowledged before the connection is "
        "dropped (libpq tcp_user_timeout; 0: the kernel's default, minutes). With TCP "
        "keepalives (on by default) it ends calls on a cut network instead of letting them hang.",
    )
    statement_timeout: str | None = Field(
        default=None,
        description="statement_timeout for direct connections, e.g. '30s'. Behind a proxy, "
        "set it on the role instead (ALTER ROLE ... SET statement_timeout).",
    )

    retry_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries for harmless calls, the first included."
    )
    retry_backoff: float = Field(default=0.05, ge=0, description="First backoff, seconds.")
    retry_backoff_max: float = Field(default=2.0, ge=0, description="Backoff cap, seconds.")

    slow_call_ms: int = Field(
        default=1000,
        ge=0,
        description="A repository call slower than this many milliseconds is logged at "
        "WARNING (logger cira_db.calls); 0 turns the warning off.",
    )

    via_proxy: bool | None = Field(
        default=None,
        description="A transaction pooler (RDS Proxy, pgbouncer) sits in between; None: detect.",
    )
    prepare_statements: bool | None = Field(
        default=None,
        description="Server-side prepared statements; None: off behind a proxy or in Lambda.",
    )

    pool_min_size: int | None = Field(default=None, ge=0, description="None: 0 in Lambda, else 1.")
    pool_max_size: int | None = Field(default=None, ge=1, description="None: 1 in Lambda, else 4.")
    pool_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for a connection.")
    pool_max_lifetime: float = Field(
        default=900.0, gt=0, description="Seconds; below RDS Proxy's 1800 s idle client timeout."
    )
    pool_max_idle: float = Field(default=300.0, gt=0)
    pool_check_after: float = Field(
        default=5.0,
        ge=0,
        description="Check a pooled connection (one empty query) before use when it sat idle "
        "this many seconds; 0 checks on every checkout. Catches connections that died while a "
        "Lambda environment was frozen, without a round trip on every busy call.",
    )

    migration_lock_wait: float = Field(
        default=60.0, gt=0, description="Seconds to wait for another migration runner."
    )
    migration_lock_timeout: str = Field(
        default="10s", description="lock_timeout for migration statements."
    )
    migration_statement_timeout: str = Field(
        default="15min", description="statement_timeout for migration statements."
    )

    @field_validator("statement_timeout", "migration_lock_timeout", "migration_statement_timeout")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        return _check_duration(value)

    @model_validator(mode="after")
    def _check_sources(self) -> DatabaseSettings:
        if self.url is not None and self.host is not None:
            raise ValueError("both CIRA_DB_URL and CIRA_DB_HOST are set; set one of them, not both")
        if self.iam_auth and self.password is not None:
            raise ValueError(
                "CIRA_DB_IAM_AUTH and CIRA_DB_PASSWORD are both set; an IAM token replaces "
                "the password, so unset CIRA_DB_PASSWORD"
            )
        if (
            self.pool_min_size is not None
            and self.pool_max_size is not None
            and self.pool_min_size > self.pool_max_size
        ):
            raise ValueError("CIRA_DB_POOL_MIN_SIZE is larger than CIRA_DB_POOL_MAX_SIZE")
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _configuration_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Defined last, so it wraps every other validator. Any invalid value,
        # whichever way the settings are built, is a ConfigurationError naming
        # the variable; raised outside the except block so that no pydantic
        # error (and no input) rides along as its context.
        try:
            return handler(data)
        except PydanticValidationError as exc:
            message = _describe_pydantic_error(exc)
        raise ConfigurationError(message)

    def __setattr__(self, name: str, value: Any) -> None:
        # pydantic's own "frozen" error quotes the value, which may be a password.
        raise ConfigurationError(
            f"DatabaseSettings are frozen (setting {name!r}); "
            "build new ones with settings.model_copy(update={...}) or DatabaseSettings.load(...)"
        )

    def __delattr__(self, name: str) -> None:
        raise ConfigurationError(f"DatabaseSettings are frozen (deleting {name!r})")

    # -- construction -------------------------------------------------------

    @classmethod
    def load(cls, **overrides: Any) -> DatabaseSettings:
        """Build settings from ``CIRA_DB_*`` environment variables plus ``overrides``.

        Arguments win over variables; an empty variable counts as unset. An
        explicit ``url`` is the whole target: no ``CIRA_DB_HOST``, ``_DBNAME``,
        ``_USER``, ``_PASSWORD``, ``_MIGRATION_URL``, ``_SECRET_ARN`` or
        ``_IAM_AUTH`` variable may redirect it; an explicit ``host`` replaces
        ``CIRA_DB_URL``. Raises `ConfigurationError` naming the variable to fix.
        """
        values = _environment_values(cls.model_fields)
        explicit = {k: v for k, v in overrides.items() if v is not None}
        if "url" in explicit:
            for name in _TARGET_FIELDS:
                values.pop(name, None)
        elif "host" in explicit:
            values.pop("url", None)
        values.update(explicit)
        return cls(**values)

    # -- derived values -----------------------------------------------------

    def pool_sizes(self) -> tuple[int, int]:
        """(min_size, max_size) after applying the Lambda-aware defaults."""
        lam = running_in_lambda()
        max_size = self.pool_max_size if self.pool_max_size is not None else (1 if lam else 4)
        default_min = 0 if lam else 1
        min_size = self.pool_min_size if self.pool_min_size is not None else default_min
        return min(min_size, max_size), max_size

    def behind_proxy(self) -> bool:
        """True when a transaction pooler is configured or detected by host name."""
        if self.via_proxy is not None:
            return self.via_proxy
        host: Any = self.host
        if self.url is not None:
            try:
                host = conninfo_to_dict(self.url.get_secret_value()).get("host")
            except psycopg.ProgrammingError:  # an invalid URL is reported by the plan
                return False
        return isinstance(host, str) and any(is_proxy_host(h) for h in host.split(","))

    def prepare_threshold(self) -> int | None:
        """psycopg's ``prepare_threshold``: None disables server-side prepares."""
        if self.prepare_statements is None:
            return None if (self.behind_proxy() or running_in_lambda()) else 5
        return 5 if self.prepare_statements else None

    def conninfo_dict(
        self, *, for_migrations: bool = False, secret: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The libpq parameters of the connection plan (password included; never log them).

        Shorthand for ``plan_connection(self, ...).conninfo()``; see `cira_db._plan`.
        """
        from cira_db._plan import Purpose, plan_connection  # the plan builds on settings

        purpose: Purpose = "migrations" if for_migrations else "app"
        return plan_connection(self, purpose, secret=secret).conninfo()

    def describe(self, *, for_migrations: bool = False) -> str:
        """A one-line description of the target that holds no secret."""
        from cira_db._plan import Purpose, plan_connection  # the plan builds on settings

        purpose: Purpose = "migrations" if for_migrations else "app"
        return plan_connection(self, purpose).describe()


# Settings that name the target: an explicit URL ignores their variables.
_TARGET_FIELDS = (
    "host",
    "dbname",
    "user",
    "password",
    "migration_url",
    "secret_arn",
    "iam_auth",
)


def _environment_values(fields: Mapping[str, Any]) -> dict[str, str]:
    """``CIRA_DB_<FIELD>`` variables (any case) that name a field and are not empty."""
    prefix = _ENV_PREFIX.lower()
    values: dict[str, str] = {}
    for name, value in os.environ.items():
        key = name.lower()
        if value and key.startswith(prefix) and key[len(prefix) :] in fields:
            values[key[len(prefix) :]] = value
    return values


def _describe_pydantic_error(exc: PydanticValidationError) -> str:
    parts: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(item) for item in error.get("loc", ()) if item != "__root__"]
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        if loc:
            variable = _ENV_PREFIX + loc[0].upper()
            parts.append(f"{variable}: {message}")
        else:
            parts.append(message)
    return "invalid settings: " + "; ".join(parts)


@functools.cache
def default_ca_bundle() -> str:
    """Path of the packaged Amazon Trust Services roots (RDS Proxy's certificates chain to them).

    A direct RDS instance endpoint needs the RDS CA bundle instead: set
    ``CIRA_DB_SSLROOTCERT`` to it (docs/connections.md).
    """
    resource = resources.files("cira_db.certs").joinpath("amazon-trust-roots.pem")
    if isinstance(resource, Path) and resource.is_file():
        return str(resource)
    # Imported from a zip: libpq needs a real file, so extract it once.
    target = Path(tempfile.gettempdir()) / f"cira_db-{os.getpid()}-amazon-trust-roots.pem"
    target.write_bytes(resource.read_bytes())
    return str(target)


def url_for_database(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname`` (as a conninfo string)."""
    params: dict[str, Any] = dict(conninfo_to_dict(url))
    params["dbname"] = dbname
    return make_conninfo("", **params)


def running_in_lambda() -> bool:
    """True inside an AWS Lambda execution environment."""
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ
