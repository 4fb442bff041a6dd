"""The connection plan: where a connection goes, with what TLS and credentials, and why.

`plan_connection` is the one place that turns `DatabaseSettings` (plus an
optional Secrets Manager secret) into the keyword arguments of
`psycopg.connect`, for one purpose: ``"app"`` (the pool and `Database`
connections, possibly through RDS Proxy) or ``"migrations"`` (the migrator's
direct connection). Every rule about the target lives here:

* the source: ``CIRA_DB_URL`` or ``CIRA_DB_HOST`` and parts, the migration URL
  or the secret's instance host for migrations, and the refusal to migrate
  through a transaction pooler;
* locality, decided from what libpq will actually use: every ``host`` and
  ``hostaddr``, from the URL, a ``service`` file entry, or ``PGHOST`` /
  ``PGHOSTADDR`` (libpq's order: connection string, then service, then
  environment). A connection is local only if every one of them is a Unix
  socket, ``localhost`` or a loopback address;
* TLS: ``verify-full`` with a CA bundle for anything not local, a weaker mode
  only when asked for;
* what may not pass a proxy (startup ``options``, ``statement_timeout``) and
  server-side prepares.

Nothing here connects, calls AWS or logs. The plan holds the password, so its
``repr`` and `ConnectionPlan.describe` show only safe facts.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cira_db.errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover - types for the type checker only
    from typing import Protocol

    class SecretLike(Protocol):  # pydantic.SecretStr or cira_db._settings_base.Secret
        def get_secret_value(self) -> str: ...

    # What the plan reads of settings (SettingsBase has it): a protocol, so that the
    # settings, whose conninfo_dict and describe are this plan, build on the plan.
    class PlannedSettings(Protocol):
        @property
        def url(self) -> SecretLike | None: ...
        @property
        def host(self) -> str | None: ...
        @property
        def port(self) -> int: ...
        @property
        def dbname(self) -> str | None: ...
        @property
        def user(self) -> str | None: ...
        @property
        def password(self) -> SecretLike | None: ...
        @property
        def secret_arn(self) -> str | None: ...
        @property
        def iam_auth(self) -> bool: ...
        @property
        def migration_url(self) -> SecretLike | None: ...
        @property
        def sslmode(self) -> str | None: ...
        @property
        def sslrootcert(self) -> str | None: ...
        @property
        def allow_unverified_tls(self) -> bool: ...
        @property
        def application_name(self) -> str: ...
        @property
        def connect_timeout(self) -> int: ...
        @property
        def tcp_user_timeout(self) -> int: ...
        @property
        def statement_timeout(self) -> str | None: ...
        def behind_proxy(self) -> bool: ...
        def prepare_threshold(self) -> int | None: ...


__all__ = [
    "SSL_MODES",
    "ConnectionPlan",
    "Purpose",
    "SslMode",
    "default_ca_bundle",
    "is_local_host",
    "is_proxy_host",
    "plan_connection",
]

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: Final = frozenset(("disable", "allow", "prefer", "require", "verify-ca", "verify-full"))

_PROXY_HOST = re.compile(
    r"^[a-z0-9-]+\.(?:endpoint\.)?proxy-[a-z0-9]+\.[a-z0-9-]+\.rds\.amazonaws\.com(?:\.cn)?$"
)


def is_proxy_host(host: str) -> bool:
    """True for an RDS Proxy endpoint name (default or custom endpoint)."""
    return bool(_PROXY_HOST.match(host.strip().rstrip(".").lower()))


# TCP keepalives for every connection (seconds): probe after 30 s idle, every 10 s, 3 times.
_TCP_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}

Purpose = Literal["app", "migrations"]

_DIGITS = re.compile(r"^[0-9]+$")
# libpq parameters that must be whole numbers; libpq would refuse them only
# when connecting, with a message the caller cannot map to a setting.
_INTEGER_PARAMS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
# What libpq reads from the environment for a parameter the connection string
# (and the service file) leave unset.
_ENVIRONMENT = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "sslrootcert": "PGSSLROOTCERT",
}
_FROM_SECRET = "(from secret)"  # noqa: S105 - a label, not a password


@dataclass(frozen=True, slots=True, repr=False)
class ConnectionPlan:
    """Where one kind of connection goes, with what TLS and credentials.

    The attributes are safe to show; the password is only in `conninfo` and
    `connect_kwargs`. ``hosts`` and ``hostaddrs`` are what libpq will use (an
    empty string is libpq's default Unix socket). ``secret_pending`` is true
    when a Secrets Manager secret is configured but was not given to the plan
    (it will supply the user, and ``host_pending`` says whether also the host).
    """

    purpose: Purpose
    hosts: tuple[str, ...]
    hostaddrs: tuple[str, ...]
    port: str
    user: str | None
    dbname: str | None
    service: str | None
    sslmode: str | None
    is_local: bool
    behind_proxy: bool
    prepare_threshold: int | None
    host_pending: bool
    secret_pending: bool
    _params: Mapping[str, Any] = field(compare=False)

    def conninfo(self) -> dict[str, Any]:
        """The libpq parameters (password included): never log them."""
        return dict(self._params)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `psycopg.connect` (autocommit, prepare setting included)."""
        return {
            **self._params,
            "autocommit": True,
            "prepare_threshold": self.prepare_threshold,
        }

    def describe(self) -> str:
        """One line naming the target and TLS mode; holds no secret."""
        pending = _FROM_SECRET if self.secret_pending else None
        if self.host_pending:
            host = _FROM_SECRET
        else:
            host = ",".join(h or "(default socket)" for h in self.hosts)
        user = self.user or pending or "(default user)"
        dbname = self.dbname or pending or user
        text = f"{user}@{host}:{self.port}/{dbname} sslmode={self.sslmode or 'prefer'}"
        if any(self.hostaddrs):
            text += f" hostaddr={','.join(self.hostaddrs)}"
        if self.service:
            text += f" service={self.service}"
        return text

    def __repr__(self) -> str:
        return f"<ConnectionPlan {self.purpose} {self.describe()}>"


def plan_connection(
    settings: PlannedSettings,
    purpose: Purpose = "app",
    *,
    secret: Mapping[str, Any] | None = None,
) -> ConnectionPlan:
    """Decide one connection's target, TLS and credentials from ``settings``.

    ``secret`` is the Secrets Manager JSON when ``settings.secret_arn`` is set
    (the `Database` fetches it); without it the plan still describes the
    target, with the host and user marked as coming from the secret. Raises
    `ConfigurationError` naming the setting to fix; no message holds a secret.
    """
    migration_url = purpose == "migrations" and settings.migration_url is not None
    if purpose == "migrations" and not migration_url:
        _refuse_migrations_through_a_pooler(settings)
    variable = "CIRA_DB_MIGRATION_URL" if migration_url else "CIRA_DB_URL"
    source = settings.migration_url if migration_url else settings.url

    params: dict[str, Any]
    if source is not None:
        params = _parse_url(source.get_secret_value(), variable)
    elif settings.host is not None:
        params = {"host": settings.host, "port": str(settings.port)}
    elif settings.secret_arn is None:
        raise ConfigurationError(
            "no database configured: set CIRA_DB_URL, or CIRA_DB_HOST "
            "(with CIRA_DB_DBNAME, CIRA_DB_USER, CIRA_DB_PASSWORD), or CIRA_DB_SECRET_ARN, "
            "or pass a URL"
        )
    else:
        params = {}
    if migration_url and any(is_proxy_host(h) for h in _split(params.get("host"))):
        raise ConfigurationError(
            "CIRA_DB_MIGRATION_URL points at an RDS Proxy endpoint; migrations need a direct "
            "connection: set it to the database instance or cluster endpoint"
        )

    # Through a pooler the migrator reaches the instance named by the secret.
    direct_from_secret = purpose == "migrations" and not migration_url and settings.behind_proxy()
    secret_pending = settings.secret_arn is not None and secret is None and not migration_url
    host_pending = False
    if not migration_url:
        for key, value in (("dbname", settings.dbname), ("user", settings.user)):
            if value:
                params[key] = value
        if settings.password is not None:
            params["password"] = settings.password.get_secret_value()
        if secret is not None:
            _merge_secret(params, secret, direct=direct_from_secret)
        elif secret_pending:
            host_pending = "host" not in params or direct_from_secret

    effective = _effective(params, host_pending=host_pending)
    hosts = () if host_pending else _split(effective.get("host"))
    hostaddrs = () if host_pending else _split(effective.get("hostaddr"))
    is_local = not host_pending and _all_local(hosts, hostaddrs)

    _apply_tls(settings, params, effective, is_local=is_local)
    behind_proxy = purpose == "app" and settings.behind_proxy()
    _apply_options(settings, params, purpose=purpose, behind_proxy=behind_proxy)
    params.setdefault("application_name", settings.application_name)
    params.setdefault("connect_timeout", str(settings.connect_timeout))
    # A cut network (failover, partition) must end a call, not hang it for the kernel's
    # minutes: keepalives find dead idle connections, tcp_user_timeout dead busy ones.
    # TCP options only; libpq ignores them on Unix sockets. A URL's own values win.
    for key, value in _TCP_DEFAULTS.items():
        params.setdefault(key, value)
    if settings.tcp_user_timeout:
        params.setdefault("tcp_user_timeout", str(settings.tcp_user_timeout))
    if settings.iam_auth and not host_pending and (len(hosts) != 1 or not hosts[0]):
        raise ConfigurationError(
            "IAM authentication needs one host name (the token is signed for it): "
            "set CIRA_DB_HOST or the host of CIRA_DB_URL"
        )
    if settings.iam_auth and not effective.get("user") and not secret_pending:
        raise ConfigurationError("IAM authentication needs a user: set CIRA_DB_USER")

    return ConnectionPlan(
        purpose=purpose,
        hosts=hosts,
        hostaddrs=hostaddrs,
        port=effective.get("port") or "5432",
        user=effective.get("user"),
        dbname=effective.get("dbname"),
        service=effective.get("service"),
        sslmode=params.get("sslmode"),
        is_local=is_local,
        behind_proxy=behind_proxy,
        prepare_threshold=settings.prepare_threshold() if purpose == "app" else None,
        host_pending=host_pending,
        secret_pending=secret_pending,
        _params=params,
    )


# -- the source -------------------------------------------------------------------


def _refuse_migrations_through_a_pooler(settings: PlannedSettings) -> None:
    if settings.secret_arn is None and settings.behind_proxy():
        variable = "CIRA_DB_URL" if settings.url is not None else "CIRA_DB_HOST"
        raise ConfigurationError(
            f"migrations need a direct connection, but {variable} points at a "
            "transaction pooler (RDS Proxy/pgbouncer); set CIRA_DB_MIGRATION_URL to the "
            "database endpoint itself"
        )


def _parse_url(text: str, variable: str) -> dict[str, Any]:
    """libpq parameters of a URL or conninfo string; errors never quote it.

    libpq's own parse errors quote the offending part, which may be the
    password: the error is raised outside the ``except`` block so that neither
    ``__cause__`` nor ``__context__`` keeps it.
    """
    if _ambiguous_at(text):
        raise ConfigurationError(
            f"{variable} has more than one '@' before its host: percent-encode '@' in the "
            "user name, password or database name as %40"
        )
    try:
        params: dict[str, Any] | None = dict(conninfo_to_dict(text))
    except psycopg.ProgrammingError:
        params = None
    if params is None:
        raise ConfigurationError(
            f"{variable} is not a valid PostgreSQL URL or conninfo string (check its "
            "percent-encoding, e.g. '%' as %25, and its option names)"
        )
    port = params.get("port")
    if port is not None and not all(
        not p.strip() or (_DIGITS.match(p.strip()) and 1 <= int(p) <= 65535)
        for p in str(port).split(",")
    ):
        raise ConfigurationError(f"{variable} has an invalid port: use 1..65535")
    for name in _INTEGER_PARAMS:
        value = params.get(name)
        if value is not None and not _DIGITS.match(str(value).strip()):
            raise ConfigurationError(
                f"{variable} has an invalid {name}: use a whole number"
                + (" of seconds" if name == "connect_timeout" else "")
            )
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSL_MODES:
        raise ConfigurationError(
            f"{variable} has an invalid sslmode: use one of {', '.join(sorted(SSL_MODES))}"
        )
    return params


def _ambiguous_at(text: str) -> bool:
    """True for a URL with an unescaped '@' after its user information.

    libpq ends the user information at the first '@', so in
    ``postgresql://u:p@ss@host/db`` the password is ``p`` and the host
    ``ss@host``: the rest of the password would show up as the target.
    """
    for scheme in ("postgresql://", "postgres://"):
        if text.startswith(scheme):
            before_query = text[len(scheme) :].split("?", 1)[0]
            return before_query.count("@") > 1
    return False


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
    host = secret.get("host")
    if direct and not host:
        raise ConfigurationError(
            "migrations need the database instance endpoint, but the secret named by "
            "CIRA_DB_SECRET_ARN has no 'host'; set CIRA_DB_MIGRATION_URL"
        )
    if host and ("host" not in params or direct):
        if not isinstance(host, str):
            raise ConfigurationError(
                "the secret named by CIRA_DB_SECRET_ARN has a 'host' that is not a string"
            )
        params["host"] = host
        port = secret.get("port")
        if port is not None and port != "":
            text = str(port).strip()
            if isinstance(port, bool) or not _DIGITS.match(text) or not 1 <= int(text) <= 65535:
                raise ConfigurationError(
                    "the secret named by CIRA_DB_SECRET_ARN has an invalid 'port': use 1..65535"
                )
            params["port"] = str(int(text))
    if "dbname" not in params:
        dbname = secret.get("dbname")
        params["dbname"] = dbname if isinstance(dbname, str) and dbname else "postgres"


# -- what libpq will use ------------------------------------------------------------


def _effective(params: Mapping[str, Any], *, host_pending: bool) -> dict[str, str]:
    """The parameters libpq will use: connection string, then service file, then environment."""
    effective = {key: str(value) for key, value in params.items() if value is not None}
    service = effective.get("service")
    from_url = service is not None
    if service is None:
        service = os.environ.get("PGSERVICE") or None
        if service is not None:
            effective["service"] = service
    if service is not None:
        for key, value in _service_options(service, from_url=from_url).items():
            effective.setdefault(key, value)
    for key, variable in _ENVIRONMENT.items():
        if host_pending and key in ("host", "hostaddr", "port"):
            continue  # the secret will give them
        from_environment = os.environ.get(variable)
        if from_environment is not None:
            effective.setdefault(key, from_environment)
    return effective


def _service_options(service: str, *, from_url: bool) -> dict[str, str]:
    """The options of ``service`` in the files libpq reads, in libpq's order.

    The user file (``PGSERVICEFILE``, else ``~/.pg_service.conf``) is read
    first; if the service is not there, ``$PGSYSCONFDIR/pg_service.conf``.
    libpq's built-in system directory cannot be known from here, so a service
    found in neither is refused rather than guessed at.
    """
    origin = "service= in the URL" if from_url else "PGSERVICE"
    user_file = Path(os.environ.get("PGSERVICEFILE") or Path("~/.pg_service.conf").expanduser())
    files = [user_file]
    sysconfdir = os.environ.get("PGSYSCONFDIR")
    if sysconfdir:
        files.append(Path(sysconfdir) / "pg_service.conf")
    for path in files:
        try:
            present = path.is_file()
        except OSError:  # libpq skips a file it cannot stat
            present = False
        if present:
            options = _read_service(path, service)
            if options is not None:
                return options
    searched = ", ".join(str(p) for p in files)
    hint = "" if sysconfdir else " (set PGSYSCONFDIR to the directory holding pg_service.conf)"
    raise ConfigurationError(
        f"the libpq service named by {origin} is not in {searched}{hint}; cira_db cannot tell "
        "where the connection would go, so it does not decide on TLS for it: name the service "
        "file with PGSERVICEFILE or PGSYSCONFDIR, or give the host in CIRA_DB_URL"
    )


def _read_service(path: Path, service: str) -> dict[str, str] | None:
    """The options of ``[service]`` in a libpq service file, None when it has none.

    Read the way libpq reads it: ``#`` comments, ``[name]`` groups,
    ``key=value`` lines; a line without ``=`` is an error. Errors name the
    line, never its text (a service file may hold a password).
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the libpq service file {path} ({exc.strerror})"
        ) from None
    options: dict[str, str] | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if options is not None:
                break  # the end of the wanted group
            if line[1:].split("]", 1)[0] == service:
                options = {}
            continue
        if options is None:
            continue
        key, sep, value = line.partition("=")
        if not sep or key == "service":
            raise ConfigurationError(f"libpq service file {path}, line {number}: syntax error")
        options.setdefault(key, value)
    return options


def _split(value: Any) -> tuple[str, ...]:
    """A libpq comma-separated list; a missing value is one default entry."""
    if value is None:
        return ("",)
    return tuple(item.strip() for item in str(value).split(","))


def is_local_host(host: str | None) -> bool:
    """True for a Unix socket, ``localhost`` or a loopback address.

    An empty or missing host means libpq's default Unix socket. A
    comma-separated list (libpq multi-host) is local only if every entry is.
    """
    return all(_is_local_entry(entry) for entry in _split(host))


def _is_local_entry(item: str) -> bool:
    if not item or item.startswith(("/", "@")):
        return True
    if item.rstrip(".").lower() == "localhost":
        return True
    return _is_loopback(item)


def _is_loopback(item: str) -> bool:
    try:
        return ipaddress.ip_address(item.strip("[]")).is_loopback
    except ValueError:
        return False


def _all_local(hosts: tuple[str, ...], hostaddrs: tuple[str, ...]) -> bool:
    """Every host and every hostaddr is local (an empty hostaddr defers to its host)."""
    return all(_is_local_entry(h) for h in hosts) and all(
        not a or _is_loopback(a) for a in hostaddrs
    )


# -- TLS and startup options -----------------------------------------------------------


def _apply_tls(
    settings: PlannedSettings,
    params: dict[str, Any],
    effective: Mapping[str, str],
    *,
    is_local: bool,
) -> None:
    explicit = settings.sslmode or params.get("sslmode")
    if explicit is None:
        if not is_local:
            params["sslmode"] = "verify-full"
    else:
        params["sslmode"] = explicit
        if not is_local and explicit != "verify-full" and not settings.allow_unverified_tls:
            raise ConfigurationError(
                f"sslmode={explicit} does not verify the server of a remote host; "
                "use verify-full, or set CIRA_DB_ALLOW_UNVERIFIED_TLS=true to accept it"
            )
    if settings.sslrootcert:
        params["sslrootcert"] = settings.sslrootcert
    elif params.get("sslmode") == "verify-full" and "sslrootcert" not in effective:
        params["sslrootcert"] = default_ca_bundle()
    if settings.iam_auth and params.get("sslmode") in (None, "disable", "allow", "prefer"):
        raise ConfigurationError(
            "IAM authentication needs TLS: set CIRA_DB_SSLMODE=verify-full (or require)"
        )


def _apply_options(
    settings: PlannedSettings, params: dict[str, Any], *, purpose: Purpose, behind_proxy: bool
) -> None:
    if behind_proxy and params.get("options"):
        raise ConfigurationError(
            "the URL passes options=..., which RDS Proxy refuses ('command-line options "
            "not supported'); set such parameters on the role (ALTER ROLE ... SET ...)"
        )
    if settings.statement_timeout and purpose == "app":
        if behind_proxy:
            raise ConfigurationError(
                "CIRA_DB_STATEMENT_TIMEOUT cannot be sent through a transaction pooler "
                "(RDS Proxy refuses startup options and SET pins sessions); set it on the "
                "role instead: ALTER ROLE <user> SET statement_timeout = '30s'"
            )
        option = f"-c statement_timeout={settings.statement_timeout}"
        existing = params.get("options")
        params["options"] = f"{existing} {option}" if existing else option


@functools.cache
def default_ca_bundle() -> str:
    """Path of the packaged Amazon Trust Services roots (RDS Proxy's certificates chain to them).

    A direct RDS instance endpoint needs the RDS CA bundle instead: set
    ``CIRA_DB_SSLROOTCERT`` to it (docs/connections.md).
    """
    import tempfile
    from importlib import resources

    resource = resources.files("cira_db.certs").joinpath("amazon-trust-roots.pem")
    if isinstance(resource, Path) and resource.is_file():
        return str(resource)
    # Imported from a zip: libpq needs a real file, so extract it once.
    target = Path(tempfile.gettempdir()) / f"cira_db-{os.getpid()}-amazon-trust-roots.pem"
    target.write_bytes(resource.read_bytes())
    return str(target)
