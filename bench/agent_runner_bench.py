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
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from harness import (
    cpu_seconds,
    log,
    migrate_database,
    postmaster_of,
    setup_database,
    start_service,
    table,
)

from agent_runner.agents.base import Agent
from agent_runner.agents.baselines import OracleAgent
from agent_runner.agents.factory import build_agent
from agent_runner.run.config import RunConfig
from agent_runner.run.hooks import EpisodeHooks
from agent_runner.run.runner import create_run, select_cases, work_on_run
from agent_runner.run.store import RunStore
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Case
from crmbench_corpus.store import load_cases

HARNESS_SHARE_TARGET = 0.05
PIDS: dict[str, int | None] = {"runner": None}
"""Party -> pid of its process tree, for CPU accounting (None: this process)."""

HooksFactory = Callable[[asyncpg.Pool, str], AbstractAsyncContextManager[EpisodeHooks | None]]
"""(the run store's pool, the run id) -> the run's episode hooks, entered before the clock
starts (as `crmbench run` builds them with `learning_hooks`)."""


@contextlib.contextmanager
def services(database_url: str, latency_ms: float, log_dir: Path) -> Iterator[dict[str, str]]:
    """The CRM API, the verifier and the simulated LLM as subprocesses."""
    admin_key = secrets.token_urlsafe(16)
    env = {"DATABASE_URL": database_url, "CRMBENCH_ADMIN_KEY": admin_key}
    with contextlib.ExitStack() as cleanup:
        crm = start_service("crm_api", ["crm-api", "--load-corpus"], env, cleanup, log_dir=log_dir)
        verifier = start_service(
            "verifier",
            ["verifier"],
            {**env, "CRMBENCH_CRM_API_URL": crm.base_url},
            cleanup,
            log_dir=log_dir,
        )
        sim = start_service(
            "simulated_llm",
            ["simulated-llm", "--latency-ms", str(latency_ms)],
            env,
            cleanup,
            log_dir=log_dir,
        )
        for service in (crm, verifier, sim):
            PIDS[service.name] = service.process.pid
        PIDS["postgres"] = asyncio.run(postmaster_of(database_url))
        yield {
            "crm_api": crm.base_url,
            "admin_key": admin_key,
            "verifier": verifier.base_url,
            "simulated": f"{sim.base_url}/v1",
        }


async def measure(
    database_url: str,
    urls: dict[str, str],
    cases: list[Case],
    make_agent: Callable[[], Agent],
    config: RunConfig,
    index: dict[str, Case],
    hooks: HooksFactory | None = None,
) -> dict[str, Any]:
    """Plays `cases` as one run and returns its figures (wall time is per episode, from
    the session traces; `hooks` None plays without hooks)."""
    agent = make_agent()
    store = await RunStore.connect(database_url, pool_size=min(config.concurrency + 2, 32))
    crm = CrmApiClient(urls["crm_api"], urls["admin_key"])
    verifier = VerifierClient(urls["verifier"], urls["admin_key"])
    try:
        run = await create_run(store, config, cases, "bench", None)
        async with contextlib.AsyncExitStack() as stack:
            episode_hooks = (
                await stack.enter_async_context(hooks(store.pool, run.run_id)) if hooks else None
            )
            cpu_before = cpu_seconds(PIDS)
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
                    hooks=episode_hooks,
                )
                elapsed = time.perf_counter() - started
            cpu_after = cpu_seconds(PIDS)
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
        "model_calls_mean": round(
            statistics.fmean(s.token_usage["student"].calls for s in sessions), 2
        ),
        "harness_ms_mean": round(outside / len(sessions), 1),
        "outside_agent_share": round(outside / sum(wall), 4) if sum(wall) else None,
        "cpu_ms_per_episode": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / len(sessions), 1)
            for name in cpu_after
        },
    }


HEADER = (
    "agent",
    "conc",
    "episodes",
    "ep/s",
    "speedup",
    "wall p50",
    "harness ms",
    "agent ms",
    "outside",
    "passed",
)


def row(result: dict[str, Any], speedup: float | None = None) -> tuple[str, ...]:
    return (
        result["agent"],
        str(result["concurrency"]),
        str(result["episodes"]),
        f"{result['episodes_per_s']:.2f}",
        "-" if speedup is None else f"{speedup}",
        f"{result['episode_wall_ms_p50']:.1f}",
        f"{result['harness_ms_mean']:.1f}",
        f"{result['agent_ms_mean']:.1f}",
        f"{result['outside_agent_share']:.1%}",
        str(result["passed"]),
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

    corpus = load_cases()
    index = {case.case_id: case for case in corpus}
    results: list[dict[str, Any]] = []
    rows: list[tuple[str, ...]] = [HEADER]
    with contextlib.ExitStack() as cleanup:
        database = setup_database(args.database_url, cleanup)
        log(f"database: {database.description}")
        database_url = database.url
        migrate_database(database_url)
        logs = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        urls = cleanup.enter_context(services(database_url, args.latency_ms, logs))
        for level in [int(c) for c in args.oracle_concurrency.split(",")]:
            config = RunConfig(agent="oracle", concurrency=level, limit=args.oracle_limit)
            cases = select_cases(config, corpus)
            result = asyncio.run(measure(database_url, urls, cases, OracleAgent, config, index))
            results.append(result)
            rows.append(row(result))
            log(" ".join(rows[-1]))
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

            result = asyncio.run(measure(database_url, urls, cases, simulated_agent, config, index))
            results.append(result)
            base = base or result["episodes_per_s"]
            rows.append(row(result, round(result["episodes_per_s"] / base, 2)))
            log(" ".join(rows[-1]))

    print("agent runner benchmark")
    print(table(rows, right=range(1, len(HEADER))))
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
