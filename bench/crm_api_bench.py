#!/usr/bin/env python
"""Load benchmark of the CRM API, end to end: a real server process on a real Postgres.

For each concurrency level C, C closed-loop clients each repeat: create an episode (admin
key), run a fixed mix of 20 tool calls (12 reads, 8 writes, all expected to succeed), drop
the episode. Every episode gets the tool-rule tests' seed (tests/crm_api/seed.py). Latencies
are client-side (time.perf_counter around each request, through crmbench_clients). The
server runs as a subprocess (`crmbench serve crm-api`), so the load generator and the
service do not share a CPU-bound event loop, as in production.

    python bench/crm_api_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

The exit status is non-zero only when requests failed (or the run could not start), never
because a target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (
    MemoryWatcher,
    Service,
    asyncpg_dsn,
    git_commit,
    log,
    machine_busy,
    migrate_database,
    ms,
    own_cpu,
    percentile,
    postgres_pid,
    run_async,
    setup_database,
    start_service,
    stop_on_signals,
    table,
    tree_cpu,
)

from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import ServiceError
from tests.crm_api.seed import payload

# Targets (2-core machine). Latency targets are judged at concurrency 1: with C closed-loop
# clients the median latency is about C / throughput (Little's law), so at 32 clients it
# measures queueing, not the service. The throughput target is judged at 32+ clients.
CREATE_P50_TARGET_MS = 25.0
TOOL_P50_TARGET_MS = 5.0
CALLS_PER_S_TARGET = 300.0
THROUGHPUT_TARGET_MIN_CLIENTS = 32

# Every episode gets the same seed with known ids, since episodes are isolated schemas.
EPISODE_REQUEST: dict[str, Any] = payload()


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

    def service_error(self, route: str, exc: ServiceError) -> None:
        answered = exc.status if exc.status is not None else type(exc).__name__
        self.fail(f"{route} -> {answered}", str(exc))


class Bench:
    """Drives the load against one running server."""

    def __init__(
        self,
        server: Service,
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
        self.admin_key = admin_key
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
        # None for a remote server: no CPU figures for Postgres.
        self.postmaster_pid = postgres_pid(int(backend))

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()

    async def pool_ready(self) -> int:
        assert self.db is not None
        count = await self.db.fetchval("SELECT count(*) FROM crm_meta.episode_pool")
        return int(count)

    async def wait_for_pool(self, crm: CrmApiClient) -> tuple[float, float]:
        """Waits until /health answers and the schema pool is full, then 2 s more.

        Returns the seconds waited and the CPU cores the machine used during the last 2 s,
        when the benchmark itself was idle (other load on the machine skews the figures).
        """
        timeout = 180.0
        started = time.perf_counter()
        deadline = started + timeout
        while True:
            try:
                await crm.health()
                healthy = True
            except ServiceError:
                healthy = False
            ready = await self.pool_ready()
            if healthy and ready >= self.pool_size:
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

    async def client_loop(
        self, run: LevelRun, crm: CrmApiClient, stop: asyncio.Event, counter: list[int]
    ) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                opened = await crm.open_episode(**EPISODE_REQUEST)
            except ServiceError as exc:
                run.samples.append(
                    Sample("create", "create_episode", start, time.perf_counter() - start, False)
                )
                run.service_error("POST /episodes", exc)
                await asyncio.sleep(0.05)  # no tight loop when creation fails
                continue
            create = Sample("create", "create_episode", start, time.perf_counter() - start, True)
            run.samples.append(create)
            calls = [c for _ in range(-(-self.calls_per_episode // 20)) for c in tool_mix()]
            for tool, write, args in calls[: self.calls_per_episode]:
                if stop.is_set():
                    break
                start = time.perf_counter()
                try:
                    outcome = await crm.call_tool(opened.token, tool, args)
                    ok = outcome.status == 200
                    if not ok:
                        run.fail(f"POST /tools/{tool} -> {outcome.status}", str(outcome.body))
                except ServiceError as exc:
                    ok = False
                    run.service_error(f"POST /tools/{tool}", exc)
                run.samples.append(
                    Sample("tool", tool, start, time.perf_counter() - start, ok, write)
                )
                counter[0] += 1
                if counter[0] >= self.max_calls:
                    stop.set()
            create.pooled = await self.created_from_pool(opened.episode_id)
            start = time.perf_counter()
            try:
                dropped = await crm.close_episode(opened.episode_id)
                if not dropped:
                    run.fail("DELETE /episodes -> 404", opened.episode_id)
            except ServiceError as exc:
                dropped = False
                run.service_error("DELETE /episodes", exc)
            run.samples.append(
                Sample("drop", "delete_episode", start, time.perf_counter() - start, dropped)
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

    def client(self, connections: int) -> CrmApiClient:
        return CrmApiClient(
            self.server.base_url, self.admin_key, timeout=60, max_connections=connections
        )

    async def run_level(self, crm: CrmApiClient, concurrency: int) -> dict[str, Any]:
        waited, idle_cores = await self.wait_for_pool(crm)
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
            crms = [
                crm if self.shared_client else await connections.enter_async_context(self.client(1))
                for _ in range(concurrency)
            ]
            clients = [
                asyncio.create_task(self.client_loop(run, client_crm, stop, counter))
                for client_crm in crms
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
        async with bench.client(connections) as crm:
            for concurrency in levels:
                result = await bench.run_level(crm, concurrency)
                log(
                    f"{concurrency} client(s): {result['tool_calls']} calls, "
                    f"{result['calls_per_s']} calls/s, {result['errors']} error(s)"
                )
                results.append(result)
    finally:
        await bench.close()
    return results


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
    lines = [
        "crm_api benchmark",
        f"  commit {header['commit'] or 'unknown'}, {header['cpu_count']} CPU(s), "
        f"database: {header['database']}",
        f"  server: {header['workers']} worker(s), episode pool {header['pool_size']}, "
        f"{header['seconds']:g} s per level after {header['warmup']:g} s warm-up; "
        f"httpx clients: {header['http_clients']}",
        "",
        table(rows, right=(0,)),
        "",
    ]
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
        help="one CrmApiClient (pool of C connections) for all clients, instead of one each",
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
    stop_on_signals()
    admin_key = secrets.token_urlsafe(24)
    try:
        with contextlib.ExitStack() as cleanup:
            database = setup_database(args.database_url, cleanup)
            log(f"database: {database.description}")
            migrate_database(database.url)
            server = start_service(
                "crm_api",
                ["crm-api", "--no-migrate", "--workers", str(args.workers)],
                {
                    "DATABASE_URL": database.url,
                    "CRMBENCH_ADMIN_KEY": admin_key,
                    "CRMBENCH_POOL_SIZE": str(args.pool_size),
                },
                cleanup,
            )
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
