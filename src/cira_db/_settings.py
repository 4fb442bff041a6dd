"""Connection settings: from arguments or ``CIRA_DB_*`` environment variables.

Settings are values and their validation only. Where a connection goes, with
what TLS and credentials, is decided from them by the connection plan
(`cira_db._plan`).

The public model, `DatabaseSettings`, is a pydantic model (`cira_db._settings_model`),
and pydantic is the one that validates. It is built on first use, not at import:
importing pydantic costs more than the rest of a Lambda cold start together.
`load_settings` (what `Database` uses) settles the common case without it: when
every given value is one pydantic is known to accept unchanged (a string for a
string field, a plain number in range, ``true``/``false``...), it keeps them in
a light `Settings`; anything else goes to the pydantic model, which accepts it
or raises the `ConfigurationError`. A `Settings` becomes the equal
`DatabaseSettings` (validated from the same values) when someone asks for it
(`Database.settings`, `as_model`). tests/test_settings.py checks that both ways agree.

This module is the top of the settings modules: the values and their checks
(`cira_db._settings_base`, re-exported here) and the pydantic model
(`cira_db._settings_model`) sit below it and never import it; the model is
imported from here, on first need only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cira_db._settings_base import (
    FIELDS,
    SettingsBase,
    _light_value,
    _UnsureError,
    gather,
    running_in_lambda,
    url_for_database,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cira_db._settings_model import DatabaseSettings as DatabaseSettings

__all__ = [  # with names of _settings_base, for the modules that imported them from here
    "FIELDS",
    "DatabaseSettings",
    "Settings",
    "SettingsBase",
    "as_model",
    "load_settings",
    "running_in_lambda",
    "url_for_database",
]


class Settings(SettingsBase):
    """Settings checked without pydantic; `as_model` gives the equal `DatabaseSettings`.

    Made only by `load_settings`, from values pydantic is known to accept as
    they are. Frozen; its ``repr`` shows no value.
    """

    __slots__ = ("_given", "_model", *FIELDS)
    _given: dict[str, Any]
    _model: DatabaseSettings | None

    def __init__(self, given: dict[str, Any], values: dict[str, Any]) -> None:
        setter = object.__setattr__
        setter(self, "_given", given)
        setter(self, "_model", None)
        for name, spec in FIELDS.items():
            setter(self, name, values.get(name, spec[1]))

    def __setattr__(self, name: str, value: Any) -> None:
        from cira_db.errors import ConfigurationError

        raise ConfigurationError(f"settings are frozen (setting {name!r})")

    def __repr__(self) -> str:
        return "<cira_db settings (values not shown)>"

    def as_model(self) -> DatabaseSettings:
        """The pydantic `DatabaseSettings`, validated from the same values (built once)."""
        model: DatabaseSettings | None = self._model
        if model is None:
            from cira_db._settings_model import DatabaseSettings

            model = DatabaseSettings(**self._given)
            object.__setattr__(self, "_model", model)
        return model


def load_settings(**overrides: Any) -> SettingsBase:
    """`DatabaseSettings.load`, without loading pydantic when the values are plainly valid.

    Raises `ConfigurationError` (from the pydantic model) exactly as ``load`` does.
    """
    given = gather(overrides)
    try:
        values = {name: _light_value(name, value) for name, value in given.items()}
    except (_UnsureError, KeyError):
        values = None
    if values is not None and _consistent(values):
        return Settings(given, values)
    from cira_db._settings_model import DatabaseSettings

    return DatabaseSettings(**given)


def _consistent(values: Mapping[str, Any]) -> bool:
    """The model's checks across fields (the pydantic model words the refusal)."""
    if values.get("url") is not None and values.get("host") is not None:
        return False
    if values.get("iam_auth") and values.get("password") is not None:
        return False
    low, high = values.get("pool_min_size"), values.get("pool_max_size")
    return low is None or high is None or low <= high


def __getattr__(name: str) -> Any:
    # `from cira_db._settings import DatabaseSettings` works as before, building
    # the pydantic model on this first use.
    if name == "DatabaseSettings":
        from cira_db._settings_model import DatabaseSettings

        return DatabaseSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_model(settings: SettingsBase) -> DatabaseSettings:
    """``settings`` as the public pydantic `DatabaseSettings` (built once for light ones)."""
    if isinstance(settings, Settings):
        return settings.as_model()
    from cira_db._settings_model import DatabaseSettings

    if not isinstance(settings, DatabaseSettings):  # pragma: no cover - no third kind
        raise TypeError(f"not settings: {type(settings).__name__}")
    return settings
