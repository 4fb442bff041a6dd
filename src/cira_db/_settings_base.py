"""Settings values and their checks, shared by the light and the pydantic settings.

`SettingsBase` is what the library reads of settings (the fields, and the values
derived from them, the connection plan's among them); `FIELDS` is every field's
kind, default and bounds. Both kinds of settings build on this module: the
pydantic `DatabaseSettings` (`cira_db._settings_model`) and the light `Settings`
that `load_settings` makes without pydantic (`cira_db._settings`, which says
why). It imports neither, so the settings modules import in one direction:
the connection plan (`cira_db._plan`), this module, the pydantic model, and
`cira_db._settings` on top.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cira_db._plan import SSL_MODES, is_proxy_host, plan_connection

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cira_db._plan import Purpose, SecretLike, SslMode


ENV_PREFIX: Final = "CIRA_DB_"
# A PostgreSQL duration setting in milliseconds: a number and an optional unit. This
# and the patterns below are compiled (and cached by `re`) on first use, not at import.
_DURATION = r"^(\d+)(ms|s|min|h)?$"
_UNIT_MS = {None: 1, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}
# PostgreSQL keeps these timeouts in an int of milliseconds.
_MAX_TIMEOUT_MS = 2_147_483_647


def check_duration(value: str | None) -> str | None:
    """A PostgreSQL duration in milliseconds (``30s``, ``15min``), within its int limit."""
    if value is None:
        return None
    match = re.match(_DURATION, value)
    if match is None:
        raise ValueError("use a whole number with an optional unit ms, s, min or h (e.g. '30s')")
    if int(match.group(1)) * _UNIT_MS[match.group(2)] > _MAX_TIMEOUT_MS:
        raise ValueError(
            f"above PostgreSQL's maximum of {_MAX_TIMEOUT_MS} ms (about 24 days); 0 disables it"
        )
    return value


class Secret:
    """A secret string that ``repr()`` and ``str()`` never show (as `pydantic.SecretStr`)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The secret itself; never log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


class SettingsBase:
    """What the library reads of settings, and the values derived from them.

    Shared by the pydantic `DatabaseSettings` and the light `Settings`, so the
    derived values have one implementation. The public model of either is
    `cira_db._settings.as_model` (it may build the pydantic model).
    """

    __slots__ = ()

    if TYPE_CHECKING:
        url: SecretLike | None
        host: str | None
        port: int
        dbname: str | None
        user: str | None
        password: SecretLike | None
        secret_arn: str | None
        iam_auth: bool
        aws_region: str | None
        migration_url: SecretLike | None
        sslmode: SslMode | None
        sslrootcert: str | None
        allow_unverified_tls: bool
        application_name: str
        connect_timeout: int
        tcp_user_timeout: int
        statement_timeout: str | None
        retry_attempts: int
        retry_backoff: float
        retry_backoff_max: float
        slow_call_ms: int
        via_proxy: bool | None
        prepare_statements: bool | None
        pool_min_size: int | None
        pool_max_size: int | None
        pool_timeout: float
        pool_max_lifetime: float
        pool_max_idle: float
        pool_check_after: float
        migration_lock_wait: float
        migration_lock_timeout: str
        migration_statement_timeout: str

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
        purpose: Purpose = "migrations" if for_migrations else "app"
        return plan_connection(self, purpose, secret=secret).conninfo()

    def describe(self, *, for_migrations: bool = False) -> str:
        """A one-line description of the target that holds no secret."""
        purpose: Purpose = "migrations" if for_migrations else "app"
        return plan_connection(self, purpose).describe()


# -- the light path -------------------------------------------------------------------------

# Every field of DatabaseSettings: (kind, default, lower bound, upper bound, lower bound open).
# The kinds say what `_light_value` accepts; tests/test_settings.py checks this table
# against the pydantic model (names, defaults, bounds), so the two cannot drift apart.
_S, _STR, _INT, _FLOAT, _BOOL = "secret", "str", "int", "float", "bool"
_OPT_INT, _OPT_BOOL, _SSL, _DUR, _MODEL = "int?", "bool?", "sslmode", "duration", "model"
_INT_MAX = 2_147_483_647
FIELDS: Final[dict[str, tuple[str, Any, float | None, float | None, bool]]] = {
    "url": (_S, None, None, None, False),
    "host": (_STR, None, None, None, False),
    "port": (_INT, 5432, 1, 65535, False),
    "dbname": (_STR, None, None, None, False),
    "user": (_STR, None, None, None, False),
    "password": (_S, None, None, None, False),
    "secret_arn": (_STR, None, None, None, False),
    "iam_auth": (_BOOL, False, None, None, False),
    "aws_region": (_STR, None, None, None, False),
    "migration_url": (_S, None, None, None, False),
    "sslmode": (_SSL, None, None, None, False),
    "sslrootcert": (_STR, None, None, None, False),
    "allow_unverified_tls": (_BOOL, False, None, None, False),
    "application_name": (_MODEL, "cira_db", None, None, False),  # a pattern: pydantic checks
    "connect_timeout": (_INT, 10, 1, None, False),
    "tcp_user_timeout": (_INT, 10_000, 0, _INT_MAX, False),
    "statement_timeout": (_DUR, None, None, None, False),
    "retry_attempts": (_INT, 3, 1, 10, False),
    "retry_backoff": (_FLOAT, 0.05, 0, None, False),
    "retry_backoff_max": (_FLOAT, 2.0, 0, None, False),
    "slow_call_ms": (_INT, 1000, 0, None, False),
    "via_proxy": (_OPT_BOOL, None, None, None, False),
    "prepare_statements": (_OPT_BOOL, None, None, None, False),
    "pool_min_size": (_OPT_INT, None, 0, None, False),
    "pool_max_size": (_OPT_INT, None, 1, None, False),
    "pool_timeout": (_FLOAT, 10.0, 0, None, True),
    "pool_max_lifetime": (_FLOAT, 900.0, 0, None, True),
    "pool_max_idle": (_FLOAT, 300.0, 0, None, True),
    "pool_check_after": (_FLOAT, 5.0, 0, None, False),
    "migration_lock_wait": (_FLOAT, 60.0, 0, None, True),
    "migration_lock_timeout": (_DUR, "10s", None, None, False),
    "migration_statement_timeout": (_DUR, "15min", None, None, False),
}

# Strings pydantic turns into a number or a bool in exactly one way; anything else
# (signs, spaces, underscores, exponents, other spellings) is left to pydantic.
_WHOLE = r"0|[1-9][0-9]{0,14}"
_DECIMAL = r"(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,15})?"
_BOOLS: Final = {"true": True, "false": False, "1": True, "0": False}


class _UnsureError(Exception):
    """A value the light path leaves to pydantic (it may be valid or not)."""


def _number(value: Any, kind: str) -> float:
    if type(value) is int or (kind == _FLOAT and type(value) is float and math.isfinite(value)):
        return value
    if type(value) is str and re.fullmatch(_WHOLE if kind == _INT else _DECIMAL, value):
        return int(value) if kind == _INT else float(value)
    raise _UnsureError


def _light_value(name: str, value: Any) -> Any:
    """``value`` as pydantic would store it in field ``name``; `_UnsureError` if not certain."""
    kind, _default, low, high, open_low = FIELDS[name]
    text = type(value) is str
    if kind == _S and text:
        return Secret(value)
    if kind == _STR and text:
        return value
    if kind == _SSL and text and value in SSL_MODES:
        return value
    if kind == _DUR and text:
        try:
            return check_duration(value)
        except ValueError:
            raise _UnsureError from None
    if kind in (_BOOL, _OPT_BOOL):
        if type(value) is bool:
            return value
        if text and value in _BOOLS:
            return _BOOLS[value]
        raise _UnsureError
    if kind in (_INT, _OPT_INT, _FLOAT):
        number = _number(value, _FLOAT if kind == _FLOAT else _INT)
        if kind == _FLOAT:
            number = float(number)
        too_low = low is not None and (number <= low if open_low else number < low)
        if too_low or (high is not None and number > high):
            raise _UnsureError
        return number
    raise _UnsureError


# Settings that name the target: an explicit URL ignores their variables.
TARGET_FIELDS: Final = (
    "host",
    "dbname",
    "user",
    "password",
    "migration_url",
    "secret_arn",
    "iam_auth",
)


def environment_values(fields: Mapping[str, Any] = FIELDS) -> dict[str, str]:
    """``CIRA_DB_<FIELD>`` variables (any case) that name a field and are not empty."""
    prefix = ENV_PREFIX.lower()
    values: dict[str, str] = {}
    for name, value in os.environ.items():
        key = name.lower()
        if value and key.startswith(prefix) and key[len(prefix) :] in fields:
            values[key[len(prefix) :]] = value
    return values


def gather(overrides: Mapping[str, Any], fields: Mapping[str, Any] = FIELDS) -> dict[str, Any]:
    """The values `DatabaseSettings.load` validates: variables, then ``overrides`` on top."""
    values: dict[str, Any] = environment_values(fields)
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if "url" in explicit:
        for name in TARGET_FIELDS:
            values.pop(name, None)
    elif "host" in explicit:
        values.pop("url", None)
    values.update(explicit)
    return values


def url_for_database(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname`` (as a conninfo string)."""
    params: dict[str, Any] = dict(conninfo_to_dict(url))
    params["dbname"] = dbname
    return make_conninfo("", **params)


def running_in_lambda() -> bool:
    """True inside an AWS Lambda execution environment."""
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ
