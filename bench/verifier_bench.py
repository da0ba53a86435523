"""Verifier throughput and corpus-validation time, against the real services.

Starts a CRM API and a verifier (on DATABASE_URL, --database-url, or the embedded
Postgres), loads the committed corpus, plays the reference actions of a sample of cases,
then measures POST /verify (HTTP, verifier reading state from the CRM API) at several
concurrencies, and in-process scoring (score_case) alone. With --full-validation it also
times `crmbench cases validate` over the whole corpus.

    python bench/verifier_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import log, percentile, setup_database, table

from crm_api.database import create_engine
from crm_api.world_store import load_golden_cases
from crmbench.local_services import running_crm_api, running_verifier
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import ServiceError
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Case
from crmbench_corpus.replay import replay
from crmbench_corpus.store import case_line, default_corpus_dir, load_cases
from verifier.scoring import score_case


async def _prepare(crm: CrmApiClient, cases: list[Case]) -> list[tuple[Case, str]]:
    """One finished episode per case: its reference actions played."""
    done = []
    for case in cases:
        opened = await crm.open_episode(case.case_id)
        await replay(crm, opened.token, case.expected.reference_actions)
        done.append((case, opened.episode_id))
    return done


async def _measure(
    verifier: VerifierClient, episodes: list[tuple[Case, str]], concurrency: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    errors = 0

    async def worker(offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop:
            case, episode_id = episodes[i % len(episodes)]
            started = time.perf_counter()
            try:
                record = await verifier.verify(
                    case.case_id, episode_id, case.expected.reference_reply
                )
                failed = record.score != 1.0
            except ServiceError:
                failed = True
            latencies.append(time.perf_counter() - started)
            errors += failed
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - began
    return {
        "concurrency": concurrency,
        "verifications": len(latencies),
        "per_second": len(latencies) / wall,
        "p50_ms": (percentile(latencies, 50) or 0.0) * 1000,
        "p95_ms": (percentile(latencies, 95) or 0.0) * 1000,
        "errors": errors,
    }


async def _offline(
    crm: CrmApiClient, episodes: list[tuple[Case, str]], seconds: float
) -> dict[str, float]:
    inputs = []
    for case, episode_id in episodes:
        state = await crm.episode_state(episode_id)
        changes = await crm.episode_changes(episode_id)
        inputs.append((case, state, changes))
    count = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        case, state, changes = inputs[count % len(inputs)]
        score_case(case, state, changes, case.expected.reference_reply)
        count += 1
    return {"scorings": count, "per_second": count / (time.perf_counter() - began)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a Postgres server that allows CREATE DATABASE")
    parser.add_argument("--cases", type=int, default=60, help="episodes to verify repeatedly")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument(
        "--full-validation",
        action="store_true",
        help="also time `crmbench cases validate` on the whole corpus",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as cleanup:
        database = setup_database(args.database_url, cleanup)
        log(f"database: {database.description}")
        figures = _run(database.url, args)
    print(json.dumps(figures))


def _run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    corpus = load_cases()
    step = max(1, len(corpus) // args.cases)
    sample = corpus[::step][: args.cases]
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "cases": len(sample)}
    with running_crm_api(url) as (crm_url, admin_key):

        async def load() -> None:
            engine = create_engine(url, pool_size=1, max_overflow=0)
            try:
                await load_golden_cases(
                    engine, [(c.case_id, json.loads(case_line(c))) for c in corpus], "bench"
                )
            finally:
                await engine.dispose()

        asyncio.run(load())
        with running_verifier(crm_url, admin_key, str(default_corpus_dir())) as verifier_url:

            async def measure() -> None:
                async with (
                    CrmApiClient(crm_url, admin_key, timeout=60) as crm,
                    VerifierClient(verifier_url, admin_key, timeout=60) as verifier,
                ):
                    episodes = await _prepare(crm, sample)
                    figures["http"] = [
                        await _measure(verifier, episodes, int(c), args.seconds)
                        for c in args.concurrency.split(",")
                    ]
                    figures["in_process"] = await _offline(crm, episodes, args.seconds)

            asyncio.run(measure())
    print(f"verifier throughput ({figures['cases']} finished episodes, {figures['cpus']} CPUs)")
    rows: list[tuple[str, ...]] = [("mode", "per second", "p50 ms", "p95 ms", "errors")]
    for row in figures["http"]:
        rows.append(
            (
                f"POST /verify x{row['concurrency']}",
                f"{row['per_second']:.1f}",
                f"{row['p50_ms']:.1f}",
                f"{row['p95_ms']:.1f}",
                str(row["errors"]),
            )
        )
    rows.append(
        ("score_case in process", f"{figures['in_process']['per_second']:.1f}", "-", "-", "-")
    )
    print(table(rows, right=(1, 2, 3, 4)))
    if args.full_validation:
        env = {**os.environ, "DATABASE_URL": url}
        began = time.perf_counter()
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "crmbench"),
                "cases",
                "validate",
                "--report",
                "/tmp/crmbench-validate.json",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        figures["validate_seconds"] = round(time.perf_counter() - began, 1)
        figures["validate_exit"] = done.returncode
        print(f"full corpus validation: {figures['validate_seconds']} s (exit {done.returncode})")
    return figures


if __name__ == "__main__":
    main()
