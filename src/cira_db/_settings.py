"""Connection settings: from arguments or ``CIRA_DB_*`` environment variables."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, SecretStr, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cira_db.errors import ConfigurationError

__all__ = ["DatabaseSettings", "SslMode"]

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

_PROXY_HOST = re.compile(
    r"^[a-z0-9-]+\.(?:endpoint\.)?proxy-[a-z0-9]+\.[a-z0-9-]+\.rds\.amazonaws\.com(?:\.cn)?$"
)
_VERIFIED_MODES = frozenset({"verify-full"})
_ENV_PREFIX = "CIRA_DB_"


def is_local_host(host: str | None) -> bool:
    """True for a Unix socket, ``localhost`` or a loopback address.

    An empty or missing host means libpq's default Unix socket. A
    comma-separated list (libpq multi-host) is local only if every entry is.
    """
    if not host:
        return True
    for entry in host.split(","):
        item = entry.strip()
        if not item or item.startswith(("/", "@")):
            continue
        if item.rstrip(".").lower() == "localhost":
            continue
        try:
            if ipaddress.ip_address(item.strip("[]")).is_loopback:
                continue
        except ValueError:
            pass
        return False
    return True


class DatabaseSettings(BaseSettings):
    """How to reach PostgreSQL, and how the pool and retries behave.

    Every field can come from an argument or from the environment variable
    ``CIRA_DB_<FIELD>`` (for example ``CIRA_DB_URL``, ``CIRA_DB_SSLMODE``).
    Secrets are held as `pydantic.SecretStr`, so ``repr()`` never shows them.
    """

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        env_ignore_empty=True,
    )

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
    statement_timeout: str | None = Field(
        default=None,
        pattern=r"^\d+(ms|s|min|h)?$",
        description="statement_timeout for direct connections, e.g. '30s'. Behind a proxy, "
        "set it on the role instead (ALTER ROLE ... SET statement_timeout).",
    )

    retry_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries for harmless calls, the first included."
    )
    retry_backoff: float = Field(default=0.05, ge=0, description="First backoff, seconds.")
    retry_backoff_max: float = Field(default=2.0, ge=0, description="Backoff cap, seconds.")

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

    # -- construction -------------------------------------------------------

    @classmethod
    def load(cls, **overrides: Any) -> DatabaseSettings:
        """Build settings from the environment plus ``overrides``.

        Raises `ConfigurationError` naming the variable to fix, never a
        pydantic error (whose input echo could hold a password).
        """
        values = {k: v for k, v in overrides.items() if v is not None}
        # An explicit URL is the whole target: no CIRA_DB_* variable may redirect it to
        # another database, user or migration endpoint. (Explicit arguments still
        # override parts of it.) An explicit host replaces CIRA_DB_URL.
        if "url" in values:
            for name in ("host", "dbname", "user", "password", "migration_url", "secret_arn"):
                values.setdefault(name, None)
            values.setdefault("iam_auth", False)
        elif "host" in values:
            values.setdefault("url", None)
        try:
            return cls(**values)
        except PydanticValidationError as exc:
            raise ConfigurationError(_describe_pydantic_error(exc)) from None

    # -- derived values -----------------------------------------------------

    def conninfo_dict(
        self, *, for_migrations: bool = False, secret: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The keyword arguments for `psycopg.connect` (password included).

        ``secret`` is the Secrets Manager JSON when ``secret_arn`` is set (the
        `Database` fetches it; settings never call AWS). Never log the result:
        it holds the credentials.
        """
        use_migration_url = for_migrations and self.migration_url is not None
        source = self.migration_url if use_migration_url else self.url
        params: dict[str, Any] = {}
        if source is not None:
            try:
                params = dict(conninfo_to_dict(source.get_secret_value()))
            except psycopg.ProgrammingError:
                variable = "CIRA_DB_MIGRATION_URL" if use_migration_url else "CIRA_DB_URL"
                raise ConfigurationError(
                    f"{variable} is not a valid PostgreSQL URL or conninfo string"
                ) from None
        elif self.host is not None:
            params = {"host": self.host, "port": str(self.port)}
        elif self.secret_arn is None:
            raise ConfigurationError(
                "no database configured: set CIRA_DB_URL, or CIRA_DB_HOST "
                "(with CIRA_DB_DBNAME, CIRA_DB_USER, CIRA_DB_PASSWORD), or CIRA_DB_SECRET_ARN, "
                "or pass a URL"
            )
        port = params.get("port")
        if port is not None and not all(
            not p.strip() or (p.strip().isdigit() and 1 <= int(p) <= 65535)
            for p in str(port).split(",")
        ):
            variable = "CIRA_DB_MIGRATION_URL" if use_migration_url else "CIRA_DB_URL"
            raise ConfigurationError(f"{variable} has an invalid port: use 1..65535")
        if not use_migration_url:
            for key, value in (("dbname", self.dbname), ("user", self.user)):
                if value:
                    params[key] = value
            if self.password is not None:
                params["password"] = self.password.get_secret_value()
        if secret is not None and not use_migration_url:
            _merge_secret(params, secret, direct=for_migrations and self.behind_proxy())
        self._apply_tls(params)
        self._apply_options(params, for_migrations=for_migrations)
        params.setdefault("application_name", self.application_name)
        params.setdefault("connect_timeout", str(self.connect_timeout))
        return params

    def _apply_tls(self, params: dict[str, Any]) -> None:
        host = params.get("host")
        if host is None and self.secret_arn is not None:
            host = "(host from secret)"  # not known yet: treat as remote
        if host is None:
            host = os.environ.get("PGHOST")  # what libpq will use when no host is given
        hostaddr = params.get("hostaddr") or (
            None if params.get("host") else os.environ.get("PGHOSTADDR")
        )
        local = is_local_host(host if isinstance(host, str) else None) and is_local_host(
            hostaddr if isinstance(hostaddr, str) else None
        )
        explicit = self.sslmode or params.get("sslmode")
        if explicit is None:
            if not local:
                params["sslmode"] = "verify-full"
        else:
            params["sslmode"] = explicit
            if not local and explicit not in _VERIFIED_MODES and not self.allow_unverified_tls:
                raise ConfigurationError(
                    f"sslmode={explicit} does not verify the server of a remote host; "
                    "use verify-full, or set CIRA_DB_ALLOW_UNVERIFIED_TLS=true to accept it"
                )
        if self.sslrootcert:
            params["sslrootcert"] = self.sslrootcert
        elif params.get("sslmode") == "verify-full" and "sslrootcert" not in params:
            params["sslrootcert"] = default_ca_bundle()
        if self.iam_auth and params.get("sslmode") in (None, "disable", "allow", "prefer"):
            raise ConfigurationError(
                "IAM authentication needs TLS: set CIRA_DB_SSLMODE=verify-full (or require)"
            )

    def _apply_options(self, params: dict[str, Any], *, for_migrations: bool) -> None:
        direct = for_migrations and (self.migration_url is not None or self.secret_arn is not None)
        behind_proxy = self.behind_proxy() and not direct
        if behind_proxy and params.get("options"):
            raise ConfigurationError(
                "the URL passes options=..., which RDS Proxy refuses ('command-line options "
                "not supported'); set such parameters on the role (ALTER ROLE ... SET ...)"
            )
        if self.statement_timeout and not for_migrations:
            if behind_proxy:
                raise ConfigurationError(
                    "CIRA_DB_STATEMENT_TIMEOUT cannot be sent through a transaction pooler "
                    "(RDS Proxy refuses startup options and SET pins sessions); set it on the "
                    "role instead: ALTER ROLE <user> SET statement_timeout = '30s'"
                )
            params["options"] = f"-c statement_timeout={self.statement_timeout}"

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
            except psycopg.ProgrammingError:
                return False
        return isinstance(host, str) and any(
            _PROXY_HOST.match(h.strip().rstrip(".").lower()) for h in host.split(",")
        )

    def prepare_threshold(self) -> int | None:
        """psycopg's ``prepare_threshold``: None disables server-side prepares."""
        if self.prepare_statements is None:
            return None if (self.behind_proxy() or running_in_lambda()) else 5
        return 5 if self.prepare_statements else None

    def describe(self, *, for_migrations: bool = False) -> str:
        """A one-line description of the target that holds no secret."""
        params = self.conninfo_dict(for_migrations=for_migrations)
        from_secret = "(from secret)" if self.secret_arn else None
        host = params.get("host") or from_secret or "(default socket)"
        port = params.get("port") or "5432"
        user = params.get("user") or from_secret or "(default user)"
        dbname = params.get("dbname") or from_secret or user
        sslmode = params.get("sslmode", "prefer")
        return f"{user}@{host}:{port}/{dbname} sslmode={sslmode}"


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


def _merge_secret(params: dict[str, Any], secret: Mapping[str, Any], *, direct: bool) -> None:
    """Fill credentials (and, where not configured, the target) from an RDS secret.

    The secret's ``host`` is the database instance, not the proxy: it is used
    when no host is configured, or for the migrator's direct connection.
    """
    username, password = secret.get("username"), secret.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ConfigurationError(
            "the secret named by CIRA_DB_SECRET_ARN has no string 'username' and 'password'"
        )
    params["user"] = username
    params["password"] = password
    if direct and not secret.get("host"):
        raise ConfigurationError(
            "migrations need the database instance endpoint, but the secret named by "
            "CIRA_DB_SECRET_ARN has no 'host'; set CIRA_DB_MIGRATION_URL"
        )
    if secret.get("host") and ("host" not in params or direct):
        params["host"] = str(secret["host"])
        if secret.get("port"):
            params["port"] = str(int(secret["port"]))
    if "dbname" not in params:
        params["dbname"] = str(secret.get("dbname") or "postgres")


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
