"""`DatabaseSettings`: the public pydantic model of the connection settings.

Imported on first use (`cira_db._settings` says why): the light path there
settles the common case without pydantic, and everything else is validated here.
"""

from __future__ import annotations

from typing import Any

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

from cira_db._plan import SslMode
from cira_db._settings_base import ENV_PREFIX, SettingsBase, check_duration, gather
from cira_db.errors import ConfigurationError

__all__ = ["DatabaseSettings"]


class DatabaseSettings(BaseModel, SettingsBase):
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
        return check_duration(value)

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
        return cls(**gather(overrides, cls.model_fields))

    def as_model(self) -> DatabaseSettings:
        """These settings (already the pydantic model)."""
        return self


def _describe_pydantic_error(exc: PydanticValidationError) -> str:
    parts: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(item) for item in error.get("loc", ()) if item != "__root__"]
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        if loc:
            variable = ENV_PREFIX + loc[0].upper()
            parts.append(f"{variable}: {message}")
        else:
            parts.append(message)
    return "invalid settings: " + "; ".join(parts)
