#!/usr/bin/env python
"""Load benchmark of the CRM API, end to end: a real server process on a real Postgres.

For each concurrency level C, C closed-loop clients each repeat: create an episode (admin
key), run a fixed mix of 20 tool calls (12 reads, 8 writes, all expected to succeed), drop
the episode. Latencies are client-side (time.perf_counter around each request). The server
runs as a subprocess (`crmbench serve crm-api`), so the load generator and the service do
not share a CPU-bound event loop, as in production.

    python bench/crm_api_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

The exit status is non-zero only when requests failed (or the run could not start), never
because a target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
import httpx
import psutil
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

# Targets (2-core machine). Latency targets are judged at concurrency 1: with C closed-loop
# clients the median latency is about C / throughput (Little's law), so at 32 clients it
# measures queueing, not the service. The throughput target is judged at 32+ clients.
CREATE_P50_TARGET_MS = 25.0
TOOL_P50_TARGET_MS = 5.0
CALLS_PER_S_TARGET = 300.0
THROUGHPUT_TARGET_MIN_CLIENTS = 32

# A small seed with known ids (as in tests/crm_api/seed.py); every episode gets the same
# one, since episodes are isolated schemas.
SEED: dict[str, Any] = {
    "client": [
        {
            "client_id": "c-acme",
            "name": "Acme Test Corp",
            "email": "ops@acme-test.com",
            "status": "Active",
        },
        {"client_id": "c-beta", "name": "Beta Test LLC", "email": "hi@beta-test.com"},
    ],
    "contact": [
        {
            "contact_id": "p-jane",
            "first_name": "Jane",
            "last_name": "Doe",
            "client_id": "c-acme",
            "email": "jane.doe@acme-test.com",
        },
    ],
    "opportunity": [
        {
            "opportunity_id": "o-open",
            "name": "Acme expansion",
            "client_id": "c-acme",
            "stage": "Qualification",
            "amount": 100000,
            "probability": 30,
            "close_date": "2026-03-31",
        },
        {
            "opportunity_id": "o-nego",
            "name": "Acme renewal",
            "client_id": "c-acme",
            "stage": "Negotiation",
            "amount": 50000,
            "probability": 60,
        },
        {
            "opportunity_id": "o-beta",
            "name": "Beta rollout",
            "client_id": "c-beta",
            "stage": "Proposal",
            "amount": 40000,
        },
    ],
    "quote": [
        {
            "quote_id": "q-deep",
            "opportunity_id": "o-nego",
            "version": "1",
            "amount": 35000,
            "status": "Sent",
        },
        {
            "quote_id": "q-fair",
            "opportunity_id": "o-nego",
            "version": "2",
            "amount": 45000,
            "status": "Sent",
        },
        {
            "quote_id": "q-draft",
            "opportunity_id": "o-open",
            "version": "1",
            "amount": 90000,
            "status": "Draft",
        },
    ],
}
EPISODE_REQUEST: dict[str, Any] = {
    "today": "2025-11-12",
    "actor": {"name": "Riley Rep", "role": "sales_rep"},
    "seed": SEED,
}


def _unique_email() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}@example.org"


def tool_mix() -> list[tuple[str, bool, dict[str, Any]]]:
    """One episode's calls in order: (tool, is_write, arguments); 12 reads and 8 writes."""
    return [
        ("client_search", False, {"criteria": {"name": "test"}}),
        ("opportunity_search", False, {"criteria": {"client_id": "c-acme"}, "limit": 10}),
        ("create_new_client", True, {"name": "Bench Client", "email": _unique_email()}),
        ("view_opportunity_details", False, {"opportunity_id": "o-open"}),
        ("quote_details", False, {"quote_id": "q-deep"}),
        (
            "create_new_opportunity",
            True,
            {"name": "Bench deal", "client_id": "c-acme", "amount": 5000, "stage": "Prospecting"},
        ),
        ("list_opportunities", False, {"limit": 20}),
        ("modify_opportunity", True, {"opportunity_id": "o-open", "probability": 40}),
        ("list_clients", False, {"limit": 10}),
        ("create_quote", True, {"opportunity_id": "o-beta", "amount": 39000}),
        ("quote_search", False, {"criteria": {"status": "Sent"}}),
        (
            "add_note",
            True,
            {"entity_type": "Opportunity", "entity_id": "o-open", "content": "Bench note."},
        ),
        ("opportunity_details", False, {"opportunity_id": "o-nego"}),
        ("list_quotes", False, {"limit": 20}),
        ("modify_client", True, {"client_id": "c-beta", "status": "Active"}),
        ("contact_search", False, {"criteria": {"last_name": "doe"}}),
        (
            "create_new_contact",
            True,
            {"first_name": "Al", "last_name": "Bo", "client_id": "c-beta"},
        ),
        ("compare_quotes", False, {"opportunity_id": "o-nego"}),
        ("modify_quote", True, {"quote_id": "q-draft", "amount": 91000}),
        ("list_notes", False, {"entity_type": "Opportunity", "entity_id": "o-open"}),
    ]


# ---------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
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


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def asyncpg_dsn(url: str) -> str:
    """A libpq-style URL asyncpg accepts (drops a SQLAlchemy '+driver' suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


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


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------- database


@dataclass
class Database:
    url: str
    source: str  # "DATABASE_URL", "--database-url" or "embedded"
    description: str


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
        server = postgres._embedded
        if server is not None:
            server.cleanup()  # stops it: cleanup_mode is "stop"
            postgres._embedded = None
            log("embedded Postgres stopped")

    cleanup.callback(stop_embedded)
    log(f"starting an embedded Postgres in {folder}")
    url = postgres.start_embedded(folder)
    return Database(url, "embedded", f"embedded Postgres in {folder}")


def migrate_database(url: str) -> None:
    from crm_api.migrate import migrate
    from crm_api.settings import CrmApiSettings

    started = time.perf_counter()
    _, version = migrate(url, CrmApiSettings().world_seed)
    log(f"migrated; world {version} ({time.perf_counter() - started:.1f} s)")


# ---------------------------------------------------------------------------- server


@dataclass
class Server:
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


def start_server(
    database_url: str,
    admin_key: str,
    pool_size: int,
    workers: int,
    cleanup: contextlib.ExitStack,
) -> Server:
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="crmbench-bench-log-"))
    cleanup.callback(shutil.rmtree, log_dir, True)
    log_path = log_dir / "server.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CRMBENCH_ADMIN_KEY": admin_key,
        "CRMBENCH_POOL_SIZE": str(pool_size),
    }
    command = [
        crmbench_executable(),
        "serve",
        "crm-api",
        "--no-migrate",
        "--port",
        str(port),
        "--host",
        HOST,
        "--workers",
        str(workers),
    ]
    with log_path.open("wb") as out:
        # Its own session, so that the server and its worker processes stop together.
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(process, f"http://{HOST}:{port}", log_path)
    cleanup.callback(stop_server, server)
    wait_healthy(server)
    return server


def stop_server(server: Server) -> None:
    if server.process.poll() is not None:
        return
    group = server.process.pid  # the process group we created with start_new_session
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        server.process.wait(timeout=5)
    log("server stopped")


def wait_healthy(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with status {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            response = httpx.get(f"{server.base_url}/health", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"GET /health did not answer 200 in {timeout:.0f} s ({last})")


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


class MemoryWatcher(threading.Thread):
    """Samples the RSS of the server's process tree; keeps the peak since the last reset."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-watcher")
        self.pid = pid
        self.interval = interval
        self._lock = threading.Lock()
        self._peak = 0
        self._overall = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        rss = tree_rss(self.pid)
        with self._lock:
            self._peak = max(self._peak, rss)
            self._overall = max(self._overall, rss)
        return rss

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = 0

    def peak(self) -> int:
        with self._lock:
            return self._peak

    def overall_peak(self) -> int:
        with self._lock:
            return self._overall

    def stop(self) -> None:
        self._stop_event.set()


# ---------------------------------------------------------------------------- the load


@dataclass
class Sample:
    kind: str  # "create", "tool" or "drop"
    name: str
    start: float
    latency: float
    ok: bool
    write: bool = False
    pooled: bool | None = None  # creates: served by a pre-built schema?


@dataclass
class LevelRun:
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    window_start: float = 0.0
    window_end: float = 0.0
    calls_in_window: int = 0

    def fail(self, what: str, detail: str) -> None:
        """Counts a failed request; keeps the first example of each kind (up to 5 kinds)."""
        if what not in self.errors and len(self.error_examples) < 5:
            self.error_examples.append(f"{what}: {detail[:300]}")
        self.errors[what] += 1


class Bench:
    """Drives the load against one running server."""

    def __init__(
        self,
        server: Server,
        database_url: str,
        admin_key: str,
        pool_size: int,
        seconds: float,
        warmup: float,
        max_calls: int,
        shared_client: bool,
        calls_per_episode: int = 20,
    ) -> None:
        self.server = server
        self.database_url = database_url
        self.admin = {"Authorization": f"Bearer {admin_key}"}
        self.pool_size = pool_size
        self.seconds = seconds
        self.warmup = warmup
        self.max_calls = max_calls
        self.shared_client = shared_client
        self.calls_per_episode = calls_per_episode
        self.postmaster_pid: int | None = None
        self.db: asyncpg.Pool | None = None

    async def open(self) -> None:
        self.db = await asyncpg.create_pool(asyncpg_dsn(self.database_url), min_size=1, max_size=4)
        async with self.db.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
        try:
            parent = psutil.Process(int(backend)).parent()
            if parent is not None and "postgres" in parent.name():
                self.postmaster_pid = parent.pid
        except psutil.Error:
            pass  # a remote server: no CPU figures for Postgres

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()

    async def pool_ready(self) -> int:
        assert self.db is not None
        count = await self.db.fetchval("SELECT count(*) FROM crm_meta.episode_pool")
        return int(count)

    async def wait_for_pool(self, http: httpx.AsyncClient) -> tuple[float, float]:
        """Waits until /health answers and the schema pool is full, then 2 s more.

        Returns the seconds waited and the CPU cores the machine used during the last 2 s,
        when the benchmark itself was idle (other load on the machine skews the figures).
        """
        timeout = 180.0
        started = time.perf_counter()
        deadline = started + timeout
        while True:
            health = await http.get("/health")
            ready = await self.pool_ready()
            if health.status_code == 200 and ready >= self.pool_size:
                break
            if time.perf_counter() > deadline:
                log(f"pool has {ready}/{self.pool_size} schemas after {timeout:.0f} s; going on")
                break
            await asyncio.sleep(0.25)
        busy, quiet_start = machine_busy(), time.perf_counter()
        await asyncio.sleep(2)  # let the refill's last commit and autovacuum settle
        quiet = time.perf_counter() - quiet_start
        return time.perf_counter() - started, (machine_busy() - busy) / quiet

    async def created_from_pool(self, episode_id: str) -> bool | None:
        """True if the episode's schema was a pre-built pool schema (renamed), False if cloned.

        A pooled schema's tables were created by an earlier transaction than the one that
        renamed the schema; a cloned one's in the same transaction.
        """
        assert self.db is not None
        row = await self.db.fetchrow(
            "SELECT n.xmin::text AS schema_x, c.xmin::text AS table_x FROM pg_namespace n"
            " JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'client'"
            " WHERE n.nspname = $1",
            episode_id,
        )
        if row is None:
            return None
        return bool(row["schema_x"] != row["table_x"])

    async def _request(
        self,
        run: LevelRun,
        http: httpx.AsyncClient,
        method: str,
        path: str,
        expected: int,
        headers: dict[str, str],
        body: dict[str, Any] | None = None,
    ) -> tuple[float, float, httpx.Response | None]:
        start = time.perf_counter()
        try:
            response = await http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            latency = time.perf_counter() - start
            run.fail(f"{method} {path.split('/')[1]}: {type(exc).__name__}", repr(exc))
            return start, latency, None
        latency = time.perf_counter() - start
        if response.status_code != expected:
            name = path if path.startswith("/tools/") else f"/{path.split('/')[1]}"
            run.fail(f"{method} {name} -> {response.status_code}", response.text)
            return start, latency, None
        return start, latency, response

    async def client_loop(
        self, run: LevelRun, http: httpx.AsyncClient, stop: asyncio.Event, counter: list[int]
    ) -> None:
        while not stop.is_set():
            start, latency, response = await self._request(
                run, http, "POST", "/episodes", 201, self.admin, EPISODE_REQUEST
            )
            create = Sample("create", "create_episode", start, latency, response is not None)
            run.samples.append(create)
            if response is None:
                await asyncio.sleep(0.05)  # no tight loop when creation fails
                continue
            created = response.json()
            episode_id: str = created["episode_id"]
            auth = {"Authorization": f"Bearer {created['token']}"}
            calls = [c for _ in range(-(-self.calls_per_episode // 20)) for c in tool_mix()]
            for tool, write, args in calls[: self.calls_per_episode]:
                if stop.is_set():
                    break
                start, latency, response = await self._request(
                    run, http, "POST", f"/tools/{tool}", 200, auth, args
                )
                run.samples.append(
                    Sample("tool", tool, start, latency, response is not None, write)
                )
                counter[0] += 1
                if counter[0] >= self.max_calls:
                    stop.set()
            create.pooled = await self.created_from_pool(episode_id)
            start, latency, response = await self._request(
                run, http, "DELETE", f"/episodes/{episode_id}", 200, self.admin
            )
            run.samples.append(
                Sample("drop", "delete_episode", start, latency, response is not None)
            )

    async def usage(self) -> dict[str, Any]:
        """Cumulative CPU seconds of each party, and Postgres sessions opened so far."""
        assert self.db is not None
        try:  # the sessions counter exists from PostgreSQL 14 on
            sessions = await self.db.fetchval(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            )
        except asyncpg.UndefinedColumnError:
            sessions = 0
        return {
            "server": tree_cpu(self.server.process.pid),
            "postgres": None if self.postmaster_pid is None else tree_cpu(self.postmaster_pid),
            "loadgen": own_cpu(),
            "machine": machine_busy(),
            "pg_sessions": int(sessions or 0),
        }

    def http_client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=self.server.base_url, limits=limits, timeout=60)

    async def run_level(self, http: httpx.AsyncClient, concurrency: int) -> dict[str, Any]:
        waited, idle_cores = await self.wait_for_pool(http)
        log(
            f"{concurrency} client(s): pool full ({self.pool_size}) after {waited:.1f} s; "
            f"{self.warmup:g} s warm-up + {self.seconds:g} s"
        )
        run = LevelRun(concurrency)
        stop = asyncio.Event()
        counter = [0]
        watcher = MemoryWatcher(self.server.process.pid)
        watcher.sample()
        rss_before = watcher.peak()
        watcher.start()
        async with contextlib.AsyncExitStack() as connections:
            # By default every simulated client has its own client and keep-alive connection,
            # as separate agent processes would; one shared pool of C connections costs the
            # load generator about three times more CPU per request (httpcore scans its pool).
            https = [
                http
                if self.shared_client
                else await connections.enter_async_context(self.http_client(1))
                for _ in range(concurrency)
            ]
            clients = [
                asyncio.create_task(self.client_loop(run, client_http, stop, counter))
                for client_http in https
            ]
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.warmup)
                run.window_start = time.perf_counter()
                before = await self.usage()
                counter[0] = 0  # the call bound counts measured calls only
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.seconds)
                run.window_end = time.perf_counter()
                after = await self.usage()
                stop.set()
                await asyncio.gather(*clients)
            finally:
                stop.set()
                for task in clients:
                    task.cancel()
                await asyncio.gather(*clients, return_exceptions=True)
                watcher.stop()
                watcher.join(timeout=2)
        elapsed = run.window_end - run.window_start
        cpu: dict[str, float | None] = {
            name: None if after[name] is None else (after[name] - before[name]) / elapsed
            for name in ("server", "postgres", "loadgen", "machine")
        }
        sessions = after["pg_sessions"] - before["pg_sessions"]
        cpu["other"] = (cpu["machine"] or 0.0) - sum(
            cpu[name] or 0.0 for name in ("server", "postgres", "loadgen")
        )
        cpu["machine_before_level"] = idle_cores
        return summarize(run, cpu, int(sessions), watcher.peak(), rss_before)


def summarize(
    run: LevelRun, cpu: dict[str, float | None], sessions: int, peak_rss: int, rss_before: int
) -> dict[str, Any]:
    start, end = run.window_start, run.window_end
    measured = [s for s in run.samples if start <= s.start < end and s.ok]
    creates = [s for s in measured if s.kind == "create"]
    tools = [s for s in measured if s.kind == "tool"]
    drops = [s for s in measured if s.kind == "drop"]
    create_lat = [s.latency for s in creates]
    tool_lat = [s.latency for s in tools]
    pooled = [s.latency for s in creates if s.pooled is True]
    cloned = [s.latency for s in creates if s.pooled is False]
    by_tool: dict[str, list[float]] = {}
    for s in tools:
        by_tool.setdefault(s.name, []).append(s.latency)
    elapsed = end - start
    requests = len(creates) + len(tools) + len(drops)
    return {
        "concurrency": run.concurrency,
        "seconds": round(elapsed, 3),
        "episodes": len(creates),
        "tool_calls": len(tools),
        "errors": sum(run.errors.values()),
        "error_counts": dict(run.errors),
        "error_examples": run.error_examples,
        "create_p50_ms": ms(percentile(create_lat, 50)),
        "create_p95_ms": ms(percentile(create_lat, 95)),
        "create_max_ms": ms(max(create_lat) if create_lat else None),
        "creates_from_pool": len(pooled),
        "creates_pool_empty": len(cloned),
        "create_pooled_p50_ms": ms(percentile(pooled, 50)),
        "create_cloned_p50_ms": ms(percentile(cloned, 50)),
        "tool_p50_ms": ms(percentile(tool_lat, 50)),
        "tool_p95_ms": ms(percentile(tool_lat, 95)),
        "tool_p99_ms": ms(percentile(tool_lat, 99)),
        "read_p50_ms": ms(percentile([s.latency for s in tools if not s.write], 50)),
        "write_p50_ms": ms(percentile([s.latency for s in tools if s.write], 50)),
        "tool_p50_by_tool_ms": {name: ms(percentile(v, 50)) for name, v in sorted(by_tool.items())},
        "drop_p50_ms": ms(percentile([s.latency for s in drops], 50)),
        "drop_p95_ms": ms(percentile([s.latency for s in drops], 95)),
        "calls_per_s": round(len(tools) / elapsed, 1) if elapsed > 0 else None,
        "requests_per_s": round(requests / elapsed, 1) if elapsed > 0 else None,
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "idle_rss_mb": round(rss_before / 2**20, 1),
        "cpu_cores": {k: None if v is None else round(v, 2) for k, v in cpu.items()},
        "server_cpu_ms_per_request": (
            round(1000 * cpu["server"] * elapsed / requests, 2)
            if requests and cpu["server"] is not None
            else None
        ),
        "postgres_cpu_ms_per_request": (
            round(1000 * cpu["postgres"] * elapsed / requests, 2)
            if requests and cpu["postgres"] is not None
            else None
        ),
        "pg_sessions_opened": sessions,
    }


async def run_all(bench: Bench, levels: list[int]) -> list[dict[str, Any]]:
    await bench.open()
    results = []
    try:
        connections = max(levels) + 4 if bench.shared_client else 2
        async with bench.http_client(connections) as http:
            for concurrency in levels:
                result = await bench.run_level(http, concurrency)
                log(
                    f"{concurrency} client(s): {result['tool_calls']} calls, "
                    f"{result['calls_per_s']} calls/s, {result['errors']} error(s)"
                )
                results.append(result)
    finally:
        await bench.close()
    return results


def run_async(
    factory: Callable[[], Coroutine[Any, Any, list[dict[str, Any]]]], use_uvloop: bool
) -> list[dict[str, Any]]:
    loop_factory = None
    if use_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(factory())


# ---------------------------------------------------------------------------- report


def verdicts(level: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """(metric, measured, target, result) rows of one level."""
    c = level["concurrency"]

    def fmt_ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} ms"

    def judge(value: float | None, ok: Callable[[float], bool]) -> str:
        if value is None:
            return "MISS (no data)"
        return "PASS" if ok(value) else "MISS  <<<"

    latency_judged = c == 1
    note = "info" if not latency_judged else ""
    create_p50 = level["create_p50_ms"]
    yield (
        "episode create p50",
        fmt_ms(create_p50),
        f"<= {CREATE_P50_TARGET_MS:g} ms" if latency_judged else "(C=1 only)",
        judge(create_p50, lambda v: v <= CREATE_P50_TARGET_MS) if latency_judged else note,
    )
    empty = level["creates_pool_empty"]
    yield (
        "episode create p95",
        fmt_ms(level["create_p95_ms"]),
        "-",
        f"info: {empty}/{level['episodes']} with pool empty",
    )
    tool_p50 = level["tool_p50_ms"]
    yield (
        "tool call p50",
        fmt_ms(tool_p50),
        f"<= {TOOL_P50_TARGET_MS:g} ms" if latency_judged else "(C=1 only)",
        judge(tool_p50, lambda v: v <= TOOL_P50_TARGET_MS) if latency_judged else note,
    )
    yield ("tool call p95", fmt_ms(level["tool_p95_ms"]), "-", "info")
    yield ("episode drop p50", fmt_ms(level["drop_p50_ms"]), "-", "info")
    rate = level["calls_per_s"]
    throughput_judged = c >= THROUGHPUT_TARGET_MIN_CLIENTS
    yield (
        "tool calls / s",
        "n/a" if rate is None else f"{rate:.1f}",
        f">= {CALLS_PER_S_TARGET:g}" if throughput_judged else "(C>=32 only)",
        judge(rate, lambda v: v >= CALLS_PER_S_TARGET) if throughput_judged else "info",
    )
    yield (
        "server peak RSS",
        f"{level['peak_rss_mb']:.1f} MB",
        "-",
        f"info: {level['idle_rss_mb']:.1f} MB before",
    )
    yield ("errors", str(level["errors"]), "0", "PASS" if level["errors"] == 0 else "FAIL")


def render(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    rows = [("clients", "metric", "measured", "target", "result")]
    for level in results:
        for metric, measured, target, result in verdicts(level):
            rows.append((str(level["concurrency"]), metric, measured, target, result))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "crm_api benchmark",
        f"  commit {header['commit'] or 'unknown'}, {header['cpu_count']} CPU(s), "
        f"database: {header['database']}",
        f"  server: {header['workers']} worker(s), episode pool {header['pool_size']}, "
        f"{header['seconds']:g} s per level after {header['warmup']:g} s warm-up; "
        f"httpx clients: {header['http_clients']}",
        "",
    ]
    for i, row in enumerate(rows):
        cells = [row[0].rjust(widths[0]), *(row[j].ljust(widths[j]) for j in (1, 2, 3))]
        lines.append("  " + " | ".join(cells) + " | " + row[4])
        if i == 0:
            lines.append("  " + "-+-".join("-" * w for w in widths) + "-+-" + "-" * 10)
    lines.append("")
    for level in results:
        cpu = level["cpu_cores"]
        pg = "n/a" if cpu["postgres"] is None else f"{cpu['postgres']:.2f}"
        lines.append(
            f"  C={level['concurrency']}: {level['episodes']} episodes, "
            f"{level['tool_calls']} tool calls in {level['seconds']:.1f} s; "
            f"read p50 {level['read_p50_ms']} ms, write p50 {level['write_p50_ms']} ms"
        )
        lines.append(
            f"        creates from the pool {level['creates_from_pool']} "
            f"(p50 {level['create_pooled_p50_ms']} ms), with the pool empty "
            f"{level['creates_pool_empty']} (p50 {level['create_cloned_p50_ms']} ms)"
        )
        lines.append(
            f"        CPU cores used: server {cpu['server']:.2f}, postgres {pg}, "
            f"load generator {cpu['loadgen']:.2f}, other {cpu['other']:.2f}; whole machine "
            f"{cpu['machine']:.2f} of {header['cpu_count']} "
            f"(before the level, bench idle: {cpu['machine_before_level']:.2f})"
        )
        if cpu["machine_before_level"] > 0.2 or cpu["other"] > 0.2:
            lines.append(
                "        WARNING: other processes used CPU during this level; "
                "the figures are pessimistic"
            )
        lines.append(
            f"        CPU per request: server {level['server_cpu_ms_per_request']} ms, "
            f"postgres {level['postgres_cpu_ms_per_request']} ms; "
            f"Postgres sessions opened: {level['pg_sessions_opened']}"
        )
        by_tool = level["tool_p50_by_tool_ms"]
        slowest = sorted(by_tool.items(), key=lambda kv: -(kv[1] or 0))[:4]
        lines.append(
            "        slowest tools (p50): "
            + ", ".join(f"{name} {value} ms" for name, value in slowest)
        )
        for kind, count in sorted(level["error_counts"].items()):
            lines.append(f"        FAILED: {count} x {kind}")
        for example in level["error_examples"]:
            lines.append(f"        first of its kind: {example}")
    lines.append(
        "  Latency targets are judged at 1 client (at C clients the p50 is about C / throughput);"
    )
    lines.append("  the throughput target at 32 or more. A MISS does not fail the run.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        help="Postgres URL (DATABASE_URL wins when set); default: an embedded Postgres",
    )
    parser.add_argument("--concurrency", default="1,32", help="levels, e.g. 1,32")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per level")
    parser.add_argument(
        "--max-calls", type=int, default=200_000, help="stop a level after this many tool calls"
    )
    parser.add_argument("--pool-size", type=int, default=8, help="CRMBENCH_POOL_SIZE")
    parser.add_argument(
        "--calls-per-episode",
        type=int,
        default=20,
        help="tool calls each client makes in an episode before dropping it (20 = the mix once;"
        " a long agent session is 100-200)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--json", type=Path, help="also write the JSON line to this file")
    parser.add_argument(
        "--shared-client",
        action="store_true",
        help="one httpx.AsyncClient (pool of C connections) for all clients, instead of one each",
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use the default asyncio loop for the load"
    )
    args = parser.parse_args(argv)
    try:
        args.levels = [int(part) for part in args.concurrency.split(",") if part.strip()]
    except ValueError:
        parser.error("--concurrency takes integers separated by commas, e.g. 1,32")
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency levels must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    admin_key = secrets.token_urlsafe(24)
    try:
        with contextlib.ExitStack() as cleanup:
            database = setup_database(args.database_url, cleanup)
            log(f"database: {database.description}")
            migrate_database(database.url)
            server = start_server(database.url, admin_key, args.pool_size, args.workers, cleanup)
            log(f"server up at {server.base_url} (pid {server.process.pid})")
            bench = Bench(
                server,
                database.url,
                admin_key,
                args.pool_size,
                args.seconds,
                args.warmup,
                args.max_calls,
                args.shared_client,
                args.calls_per_episode,
            )
            results = run_async(lambda: run_all(bench, args.levels), not args.no_uvloop)
            header = {
                "commit": git_commit(),
                "cpu_count": psutil.cpu_count(logical=True),
                "database": f"{database.source}: {database.description}",
                "workers": args.workers,
                "pool_size": args.pool_size,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "http_clients": "shared pool" if args.shared_client else "one per client",
            }
            errors = sum(level["errors"] for level in results)
            record = {
                "bench": "crm_api",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **header,
                "database": database.source,
                "concurrency": args.levels,
                "python": sys.version.split()[0],
                "targets": {
                    "create_p50_ms": CREATE_P50_TARGET_MS,
                    "tool_p50_ms": TOOL_P50_TARGET_MS,
                    "calls_per_s": CALLS_PER_S_TARGET,
                },
                "verdicts": {
                    str(level["concurrency"]): {
                        metric: result.split()[0]
                        for metric, _, _, result in verdicts(level)
                        if result.split()[0] in ("PASS", "MISS", "FAIL")
                    }
                    for level in results
                },
                "levels": results,
                "errors": errors,
            }
            print(render(results, header))
            line = json.dumps(record, sort_keys=True)
            print(line, flush=True)
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(line + "\n", encoding="utf-8")
                log(f"wrote {args.json}")
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
        log(f"error: {exc}")
        return 2
    if errors:
        log(f"{errors} request(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
