#!/usr/bin/env python
"""Benchmark of the agent runner: harness overhead per episode, and throughput vs concurrency.

The CRM API, the verifier and the simulated LLM run as subprocesses (`crmbench serve ...`)
on a fresh database, as in production; the runner plays episodes in this process through
the same code `crmbench run` uses (queue in Postgres, HTTP tool calls, verification, change
log, telemetry to Postgres and JSONL).

1. Harness overhead: the oracle (no model) on the whole eval split at concurrency 1 and 16.
   With no model time, an episode's wall time is all harness: open the episode, the tool
   calls, verification, the change log, closing, and committing the traces.
2. Throughput: the simulated LLM with a fixed added latency per model call, at several
   concurrency levels. Prints episodes/s, the speedup over concurrency 1 measured in the
   same run, and the share of wall time spent outside the agent (the target: well under 5%).

    python bench/agent_runner_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

Exit status is non-zero only when the benchmark could not run or episodes failed to
complete, never because a target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from agent_runner.agents.base import Agent  # noqa: E402
from agent_runner.agents.baselines import OracleAgent  # noqa: E402
from agent_runner.agents.factory import build_agent  # noqa: E402
from agent_runner.crm_client import CrmApiClient, VerifierClient  # noqa: E402
from agent_runner.run.config import RunConfig  # noqa: E402
from agent_runner.run.runner import create_run, select_cases, work_on_run  # noqa: E402
from agent_runner.run.store import RunStore  # noqa: E402
from crmbench_clients.serving import free_port  # noqa: E402
from crmbench_contracts.cases import Case  # noqa: E402
from crmbench_corpus.store import load_cases  # noqa: E402

HARNESS_SHARE_TARGET = 0.05
PIDS: dict[str, int] = {}
"""Service name -> pid of its subprocess, for CPU accounting."""
CRMBENCH = str(Path(sys.executable).parent / "crmbench")


def fresh_database(server_url: str) -> str:
    name = f"crmbench_bench_{secrets.token_hex(4)}"

    async def create() -> None:
        url = make_url(server_url).set(drivername="postgresql", database="postgres")
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    async def drop() -> None:
        server = make_url(url).set(drivername="postgresql", database="postgres")
        conn = await asyncpg.connect(server.render_as_string(hide_password=False))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the service exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become healthy in {timeout:.0f}s")


@contextlib.contextmanager
def services(database_url: str, latency_ms: float, log_dir: Path) -> Iterator[dict[str, str]]:
    """The CRM API, the verifier and the simulated LLM as subprocesses."""
    admin_key = secrets.token_urlsafe(16)
    crm_port, verifier_port, sim_port = free_port(), free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "CRMBENCH_ADMIN_KEY": admin_key}
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen([CRMBENCH, *args], env={**env, **extra}, stdout=log, stderr=log)
        processes.append(process)
        PIDS[name] = process.pid
        return process

    try:
        crm_url = f"http://127.0.0.1:{crm_port}"
        crm = start("crm_api", ["serve", "crm-api", "--port", str(crm_port), "--load-corpus"], {})
        wait_healthy(crm_url, crm)
        verifier_url = f"http://127.0.0.1:{verifier_port}"
        verifier = start(
            "verifier",
            ["serve", "verifier", "--port", str(verifier_port)],
            {"CRMBENCH_CRM_API_URL": crm_url},
        )
        wait_healthy(verifier_url, verifier)
        sim_url = f"http://127.0.0.1:{sim_port}"
        sim = start(
            "simulated_llm",
            ["serve", "simulated-llm", "--port", str(sim_port), "--latency-ms", str(latency_ms)],
            {},
        )
        wait_healthy(sim_url, sim)
        yield {
            "crm_api": crm_url,
            "admin_key": admin_key,
            "verifier": verifier_url,
            "simulated": f"{sim_url}/v1",
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU time used so far by each service process and by all Postgres processes."""
    used = {}
    for name, process in processes.items():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            used[name] = times.user + times.system
    total = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "postgres":
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    used["postgres"] = total
    return used


async def measure(
    database_url: str,
    urls: dict[str, str],
    cases: list[Case],
    make_agent: Callable[[], Agent],
    config: RunConfig,
    index: dict[str, Case],
) -> dict[str, Any]:
    agent = make_agent()
    store = await RunStore.connect(database_url, pool_size=min(config.concurrency + 2, 32))
    crm = CrmApiClient(urls["crm_api"], urls["admin_key"])
    verifier = VerifierClient(urls["verifier"])
    try:
        run = await create_run(store, config, cases, "bench", None)
        processes = {name: psutil.Process(int(pid)) for name, pid in PIDS.items()}
        processes["runner"] = psutil.Process()
        cpu_before = cpu_seconds(processes)
        with tempfile.TemporaryDirectory() as traces:
            started = time.perf_counter()
            stats = await work_on_run(
                store=store,
                run_id=run.run_id,
                config=config,
                cases=index,
                agent=agent,
                crm=crm,
                verifier=verifier,
                trace_dir=Path(traces),
            )
            elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(processes)
        records = await store.traces(run.run_id)
    finally:
        await agent.aclose()
        await crm.aclose()
        await verifier.aclose()
        await store.close()
    sessions = [session for session, _ in records]
    tool_ms = [sum(step.latency_ms for step in steps) for _, steps in records]
    wall = [s.wall_ms for s in sessions]
    agent_ms = [s.agent_ms for s in sessions]
    outside = sum(wall) - sum(agent_ms)
    return {
        "agent": agent.name,
        "concurrency": config.concurrency,
        "episodes": len(sessions),
        "completed": stats.completed,
        "passed": sum(s.passed for s in sessions),
        "harness_errors": sum(s.outcome == "harness_error" for s in sessions),
        "seconds": round(elapsed, 2),
        "episodes_per_s": round(len(sessions) / elapsed, 2),
        "episode_wall_ms_p50": round(statistics.median(wall), 1),
        "episode_wall_ms_mean": round(statistics.fmean(wall), 1),
        "tool_ms_mean": round(statistics.fmean(tool_ms), 1),
        "agent_ms_mean": round(statistics.fmean(agent_ms), 1),
        "harness_ms_mean": round(outside / len(sessions), 1),
        "outside_agent_share": round(outside / sum(wall), 4) if sum(wall) else None,
        "cpu_ms_per_episode": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / len(sessions), 1)
            for name in cpu_after
        },
    }


def row(result: dict[str, Any], speedup: float | None = None) -> str:
    share = result["outside_agent_share"]
    return (
        f"{result['agent']:>9} {result['concurrency']:>5} {result['episodes']:>8} "
        f"{result['episodes_per_s']:>8.2f} {speedup if speedup is not None else '-':>8} "
        f"{result['episode_wall_ms_p50']:>9.1f} {result['harness_ms_mean']:>10.1f} "
        f"{result['agent_ms_mean']:>9.1f} {share:>8.1%} {result['passed']:>6}"
    )


HEADER = (
    f"{'agent':>9} {'conc':>5} {'episodes':>8} {'ep/s':>8} {'speedup':>8} "
    f"{'wall p50':>9} {'harness ms':>10} {'agent ms':>9} {'outside':>8} {'passed':>6}"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--oracle-concurrency", default="1,16")
    parser.add_argument("--oracle-limit", type=int, default=None, help="Default: whole eval split.")
    parser.add_argument("--sim-concurrency", default="1,4,16")
    parser.add_argument("--sim-cases", type=int, default=16, help="Episodes at least, per level.")
    parser.add_argument(
        "--sim-cases-per-slot", type=int, default=4, help="Episodes per unit of concurrency."
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=1500.0,
        help="Added per model call; GPT-4.1 with 37 tools answers in 1-3 s.",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL") or fresh_database(args.database_url)
    created = "DATABASE_URL" not in os.environ
    subprocess.run(
        [CRMBENCH, "db", "migrate"], env={**os.environ, "DATABASE_URL": database_url}, check=True
    )
    corpus = load_cases()
    index = {case.case_id: case for case in corpus}
    results: list[dict[str, Any]] = []
    try:
        with (
            tempfile.TemporaryDirectory() as logs,
            services(database_url, args.latency_ms, Path(logs)) as urls,
        ):
            print(HEADER)
            for level in [int(c) for c in args.oracle_concurrency.split(",")]:
                config = RunConfig(agent="oracle", concurrency=level, limit=args.oracle_limit)
                cases = select_cases(config, corpus)
                result = asyncio.run(measure(database_url, urls, cases, OracleAgent, config, index))
                results.append(result)
                print(row(result), flush=True)
            base: float | None = None
            for level in [int(c) for c in args.sim_concurrency.split(",")]:
                config = RunConfig(
                    agent="simulated",
                    concurrency=level,
                    limit=max(args.sim_cases, args.sim_cases_per_slot * level),
                    simulated={"url": urls["simulated"]},
                )
                cases = select_cases(config, corpus)

                def simulated_agent(config: RunConfig = config) -> Agent:
                    return build_agent(config, simulated_url=urls["simulated"])

                result = asyncio.run(
                    measure(database_url, urls, cases, simulated_agent, config, index)
                )
                results.append(result)
                base = base or result["episodes_per_s"]
                print(row(result, round(result["episodes_per_s"] / base, 2)), flush=True)
    finally:
        if created:
            drop_database(database_url)

    print()
    print("CPU ms per episode (where the harness's time goes):")
    for result in results:
        split = "  ".join(f"{k} {v:.0f}" for k, v in result["cpu_ms_per_episode"].items())
        print(f"  {result['agent']:>9} c={result['concurrency']:<3} {split}")
    sim = [r for r in results if r["agent"] == "simulated"]
    print()
    print(f"simulated LLM latency per call: {args.latency_ms:.0f} ms")
    for result in sim:
        verdict = "PASS" if result["outside_agent_share"] < HARNESS_SHARE_TARGET else "MISS"
        print(
            f"  concurrency {result['concurrency']:>3}: {result['outside_agent_share']:.1%} of "
            f"episode wall time outside the agent (target < {HARNESS_SHARE_TARGET:.0%}) {verdict}"
        )
    print(json.dumps({"latency_ms": args.latency_ms, "results": results}))
    if args.json:
        args.json.write_text(
            json.dumps({"latency_ms": args.latency_ms, "results": results}, indent=2)
        )
    incomplete = [r for r in results if r["completed"] != r["episodes"] or r["harness_errors"]]
    return 1 if incomplete else 0


if __name__ == "__main__":
    raise SystemExit(main())
