"""What the benchmarks share: a fresh database, services started as subprocesses, CPU and
memory accounting of process trees, percentiles, and the tables they print.

The scripts import it as `harness` (they run from this folder's parent or put it on
sys.path); the load itself goes through `crmbench_clients`, as every caller does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import asyncpg
import httpx
import psutil
from sqlalchemy.engine import make_url

from crmbench_clients.serving import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so cleanups run (even if started ignoring)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


# ---------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds rounded to the microsecond; None stays None."""
    return None if seconds is None else round(seconds * 1000, 3)


def table(rows: Sequence[Sequence[Any]], *, right: Sequence[int] = (), indent: str = "  ") -> str:
    """A plain-text table: the first row is the header, underlined; columns joined by " | ".
    Columns whose index is in `right` are right-aligned (numbers)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return (indent + " | ".join(parts)).rstrip()

    lines = [line(cells[0]), indent + "-+-".join("-" * w for w in widths)]
    lines += [line(row) for row in cells[1:]]
    return "\n".join(lines)


def run_async(factory: Callable[[], Coroutine[Any, Any, T]], use_uvloop: bool = False) -> T:
    """Runs a coroutine on a fresh loop (uvloop's when asked and installed)."""
    loop_factory = None
    if use_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(factory())


# ---------------------------------------------------------------------------- database


@dataclass
class Database:
    url: str
    source: str
    """"DATABASE_URL", "--database-url" or "embedded"."""
    description: str


def asyncpg_dsn(url: str) -> str:
    """A libpq-style URL asyncpg accepts (drops a SQLAlchemy '+driver' suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin_execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=30)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _fresh_database(url: str, cleanup: contextlib.ExitStack) -> tuple[str, str]:
    """CREATE DATABASE crmbench_bench_<hex> on the server of `url` (dropped at the end).

    Falls back to `url` itself when the role may not create databases.
    """
    name = f"crmbench_bench_{secrets.token_hex(4)}"
    try:
        asyncio.run(_admin_execute(url, f'CREATE DATABASE "{name}"'))
    except asyncpg.PostgresError as exc:
        log(f"cannot create a database ({exc}); using the given database as is")
        return url, f"{make_url(url).database} (given database, not fresh)"

    def drop() -> None:
        try:
            asyncio.run(_admin_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            log(f"dropped database {name}")
        except (OSError, asyncpg.PostgresError) as exc:
            log(f"could not drop database {name}: {exc}")

    cleanup.callback(drop)
    fresh = make_url(url).set(database=name).render_as_string(hide_password=False)
    return fresh, f"{name} (fresh, dropped at the end)"


def setup_database(option_url: str | None, cleanup: contextlib.ExitStack) -> Database:
    """A fresh database on the server of DATABASE_URL (which wins) or `option_url`, else an
    embedded Postgres in a temporary folder; all removed when `cleanup` closes."""
    env_url = os.environ.get("DATABASE_URL")
    if env_url:
        if option_url and option_url != env_url:
            log("DATABASE_URL is set; it wins over --database-url")
        url, description = _fresh_database(env_url, cleanup)
        return Database(url, "DATABASE_URL", description)
    if option_url:
        url, description = _fresh_database(option_url, cleanup)
        return Database(url, "--database-url", description)

    from crmbench import postgres

    folder = Path(tempfile.mkdtemp(prefix="crmbench-bench-pg-"))
    cleanup.callback(shutil.rmtree, folder, True)

    def stop_embedded() -> None:
        # Only this process uses the temporary folder's server.
        if postgres.stop_embedded(folder).running:
            log("embedded Postgres stopped")

    cleanup.callback(stop_embedded)
    log(f"starting an embedded Postgres in {folder}")
    url = postgres.start_embedded(folder)
    return Database(url, "embedded", f"embedded Postgres in {folder}")


def migrate_database(url: str) -> None:
    """The CRM schema and the world (what `crmbench db migrate` does)."""
    from crm_api.migrate import migrate
    from crm_api.settings import CrmApiSettings

    started = time.perf_counter()
    _, version = migrate(url, CrmApiSettings().world_seed)
    log(f"migrated; world {version} ({time.perf_counter() - started:.1f} s)")


# ---------------------------------------------------------------------------- services


@dataclass
class Service:
    """A service started as `crmbench serve ...` in its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def crmbench_executable() -> str:
    beside = Path(sys.executable).with_name("crmbench")
    if beside.exists():
        return str(beside)
    found = shutil.which("crmbench")
    if found is None:
        raise RuntimeError("the crmbench command is not installed (pip install -e .)")
    return found


def start_service(
    name: str,
    args: Sequence[str],
    env: Mapping[str, str],
    cleanup: contextlib.ExitStack,
    *,
    log_dir: Path | None = None,
    health_timeout: float = 90,
) -> Service:
    """`crmbench serve <args> --host 127.0.0.1 --port <free>`, stopped when `cleanup` closes;
    returns once GET /health answers 200. Its output goes to `<log_dir>/<name>.log`."""
    port = free_port()
    if log_dir is None:
        log_dir = Path(tempfile.mkdtemp(prefix="crmbench-bench-log-"))
        cleanup.callback(shutil.rmtree, log_dir, True)
    log_path = log_dir / f"{name}.log"
    command = [crmbench_executable(), "serve", *args, "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as out:
        # Its own session, so that a service and its worker processes stop together.
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(name, process, f"http://{HOST}:{port}", log_path)
    cleanup.callback(stop_service, service)
    wait_healthy(service, health_timeout)
    log(f"{name} up at {service.base_url} (pid {process.pid})")
    return service


def stop_service(service: Service) -> None:
    if service.process.poll() is not None:
        return
    group = service.process.pid  # the process group start_new_session created
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    try:
        service.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        service.process.wait(timeout=5)
    log(f"{service.name} stopped")


def wait_healthy(service: Service, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with status {service.process.returncode}:\n"
                f"{service.log_tail()}"
            )
        try:
            response = httpx.get(f"{service.base_url}/health", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(
        f"{service.name}: GET /health did not answer 200 in {timeout:.0f} s ({last})"
    )


# ---------------------------------------------------------------------------- processes


def process_tree(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a process tree, including its exited children.

    A process's children_* times hold the CPU of the children it has reaped, so short-lived
    processes (e.g. Postgres backends of connections opened and closed during the run) are
    counted too, and the difference of two samples is the CPU used in between.
    """
    total = 0.0
    for process in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def tree_rss(pid: int | None) -> int:
    total = 0
    for process in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def machine_busy() -> float:
    """Busy CPU seconds over all cores since boot (guest time is already in user)."""
    times = psutil.cpu_times()
    busy = times.user + times.system
    for extra in ("nice", "irq", "softirq", "steal"):
        busy += getattr(times, extra, 0.0)
    return float(busy)


def postgres_pid(backend_pid: int) -> int | None:
    """The postmaster of a local server, from one of its backends' pids (None if remote)."""
    try:
        parent = psutil.Process(backend_pid).parent()
    except psutil.Error:
        return None
    if parent is not None and "postgres" in parent.name():
        return parent.pid
    return None


async def postmaster_of(database_url: str) -> int | None:
    """The pid of the local Postgres server holding `database_url` (None if remote)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=30)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
    finally:
        await conn.close()
    return postgres_pid(int(backend))


def cpu_seconds(pids: Mapping[str, int | None]) -> dict[str, float]:
    """CPU seconds used so far by each named process tree (None: this process)."""
    return {name: own_cpu() if pid is None else tree_cpu(pid) for name, pid in pids.items()}


class MemoryWatcher(threading.Thread):
    """Samples the RSS of a process tree; keeps the peak since the last reset."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-watcher")
        self.pid = pid
        self.interval = interval
        self._lock = threading.Lock()
        self._peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        rss = tree_rss(self.pid)
        with self._lock:
            self._peak = max(self._peak, rss)
        return rss

    def peak(self) -> int:
        with self._lock:
            return self._peak

    def stop(self) -> None:
        self._stop_event.set()
